"""The Connection interface and the one place remote command lines are built."""

from __future__ import annotations

import shlex
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from orchestrator.errors import TransportError

LineHandler = Callable[[str], None]
ByteProgress = Callable[[int], None]


class RemotePath(str):
    """A path on the device. Only these get ``~/`` expanded (to ``"$HOME"/...``); every other
    token is passed through literally, whatever it contains."""

    def join(self, *parts: str) -> RemotePath:  # type: ignore[override]
        return RemotePath("/".join([self.rstrip("/"), *parts]))


@dataclass(frozen=True)
class Target:
    """Everything needed to reach one device (no secrets beyond a key *path*)."""

    name: str
    address: str
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    connection: str = "ssh"
    root: str = "~/.edgefleet"
    python: str = "python3"
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def agent_path(self) -> RemotePath:
        from agent.protocol import AGENT_FILENAME

        return RemotePath(self.root).join("agent", AGENT_FILENAME)


@dataclass
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str


def quote_token(token: str) -> str:
    if isinstance(token, RemotePath):
        if token == "~":
            return '"$HOME"'
        if token.startswith("~/"):
            return '"$HOME"/' + shlex.quote(token[2:])
    return shlex.quote(token)


def render_command(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """``env K=V ... argv`` with every token quoted; env goes inline because sshd drops
    variables not listed in AcceptEnv."""
    tokens: list[str] = []
    # Checked with or without env: shlex.quote leaves "A=B" bare, which the shell (or env)
    # would take for a variable assignment and run the next token instead.
    if argv and "=" in argv[0]:
        raise ValueError(f"program path {argv[0]!r} contains '=': it would be read as a "
                         "variable assignment")
    if env:
        tokens.append("env")
        for key, value in env.items():
            if not (key.isascii() and key.replace("_", "a").isalnum()) or key[0].isdigit():
                raise ValueError(f"environment variable name {key!r} is not valid")
            tokens.append(shlex.quote(f"{key}={value}"))
    tokens.extend(quote_token(t) for t in argv)
    return " ".join(tokens)


def sftp_path(path: str) -> str:
    """SFTP paths are relative to the login directory, which is where ``~`` points."""
    if path == "~":
        return "."
    if path.startswith("~/"):
        return path[2:]
    return path


class Channel(ABC):
    """A running remote command we talk to: bytes in on stdin, lines out of stdout."""

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Send bytes to stdin; raises TransportError if the command went away."""

    @abstractmethod
    def readline(self) -> str:
        """The next stdout line ("" at EOF); TransportError after ``timeout`` s of silence."""

    @abstractmethod
    def close_input(self) -> None:
        """Send EOF on stdin."""

    @abstractmethod
    def finish(self) -> tuple[int, str]:
        """Close stdin, read stdout to its end, wait for exit; returns (exit code, stderr)."""

    @abstractmethod
    def abort(self) -> None:
        """Stop the command now (after an error on our side)."""


class Connection(ABC):
    """A live connection to one device, reused for every step of one operation."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        on_line: LineHandler | None = None,
    ) -> CommandResult:
        """Run argv to completion; ``timeout`` bounds silence (no output), not total time."""
        channel = self.start(argv, env=env, timeout=timeout)
        def feed() -> None:
            # In a thread: a command that writes while it reads (a filter) would otherwise
            # fill its stdout pipe while we are still blocked writing its stdin.
            try:
                if stdin:
                    channel.write(stdin)
            except TransportError:
                pass  # it stopped reading: its exit status and stderr say why
            finally:
                channel.close_input()

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            lines = []
            while line := channel.readline():
                lines.append(line)
                if on_line:
                    on_line(line)
            code, stderr = channel.finish()
        except BaseException:
            channel.abort()
            raise
        finally:
            feeder.join()
        return CommandResult(code, "".join(lines), stderr)

    @abstractmethod
    def start(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              timeout: float | None = None) -> Channel:
        """Start argv and keep talking to it (an agent session)."""

    @abstractmethod
    def put(self, local: Path, remote: str, on_bytes: ByteProgress | None = None) -> int:
        """Copy a local file to ``remote`` (absolute or ~-relative); returns bytes sent."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
