"""The Connection interface and the one place remote command lines are built."""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

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
    if env:
        tokens.append("env")
        for key, value in env.items():
            if not key.replace("_", "a").isalnum() or key[0].isdigit():
                raise ValueError(f"environment variable name {key!r} is not valid")
            tokens.append(shlex.quote(f"{key}={value}"))
        if "=" in argv[0]:
            raise ValueError(f"program path {argv[0]!r} contains '=': env would misread it")
    tokens.extend(quote_token(t) for t in argv)
    return " ".join(tokens)


def sftp_path(path: str) -> str:
    """SFTP paths are relative to the login directory, which is where ``~`` points."""
    if path == "~":
        return "."
    if path.startswith("~/"):
        return path[2:]
    return path


class Connection(ABC):
    """A live connection to one device, reused for every step of one operation."""

    def __init__(self, target: Target) -> None:
        self.target = target

    @abstractmethod
    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        on_line: LineHandler | None = None,
    ) -> CommandResult:
        """Run argv on the device; ``timeout`` bounds silence (no output), not total time."""

    @abstractmethod
    def put(self, local: Path, remote: str, on_bytes: ByteProgress | None = None) -> int:
        """Copy a local file to ``remote`` (absolute or ~-relative); returns bytes sent."""

    @abstractmethod
    def remove(self, remote: str) -> None:
        """Delete a remote file if it exists (used to clean up partial uploads)."""

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
