"""The Connection interface and the one place remote command lines are built."""

from __future__ import annotations

import shlex
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from orchestrator.core.errors import TransportError
from orchestrator.transport.startgate import Slot, the_gate

LineHandler = Callable[[str], None]
ByteProgress = Callable[[int], None]

MiB = 1 << 20
# What one device may send us per command. A device is not trusted with our memory: readline
# would buffer a newline-less flood without end (issue 11: 2.8 GB in 10 s), and the server's
# telemetry poll reads every device. The largest legitimate agent lines, measured with the real
# agent: a bench result repeats every thread count's latencies at ~8 bytes per timed run, and
# the agent caps a thread count at 1,000,000 runs: 7.95 MB per ``measured`` event, 24 MB for
# the result of the default threads 1,2,4 (at 10,000 runs: 81 KB and 242 KB). An eval entry
# holds ~150 bytes per sample with 2 classes, ~12 KB with 527 (AudioSet): a 1,000-window
# AudioSet eval at threads 1,2 has a 24 MB result line. Per command (one exec or one agent
# session), stdout and stderr together: that bench at its cap sends 48 MB in all.
MAX_LINE_BYTES = 64 * MiB
MAX_OUTPUT_BYTES = 256 * MiB
STDERR_KEEP_BYTES = 64 * 1024  # the tail is what errors show (a traceback ends there)
LINE_ENV, OUTPUT_ENV = "EDGEFLEET_MAX_LINE_MB", "EDGEFLEET_MAX_OUTPUT_MB"
_JOIN_LINES = 4096  # Connection.run joins the stdout it keeps every this many lines


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

    @classmethod
    def of_device(cls, device: Any) -> Target:
        """The Target of a device row: an ORM ``Device`` or a row read with the standard
        library (``core.listings``, for a push that starts before the ORM is imported)."""
        return cls(name=device.name, address=device.address, port=device.port,
                   user=device.user, key_file=device.key_file, connection=device.connection,
                   root=device.root, python=device.agent_python or device.python,
                   env=dict(device.env or {}))

    @property
    def agent_path(self) -> RemotePath:
        from agent.protocol import AGENT_FILENAME

        return RemotePath(self.root).join("agent", AGENT_FILENAME)


def format_size(size: int) -> str:
    """``64 MiB``, ``64 KiB`` or ``100 bytes``: how limits are named in errors."""
    for unit, scale in (("MiB", MiB), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} bytes"


@dataclass(frozen=True)
class OutputLimits:
    """How much one command may send: the longest line (newline included), stdout and stderr
    together, and how much of stderr is kept (the rest is counted, then dropped)."""

    max_line: int = MAX_LINE_BYTES
    max_output: int = MAX_OUTPUT_BYTES
    stderr_keep: int = STDERR_KEEP_BYTES

    @classmethod
    def from_mb(cls, line_mb: float | None, output_mb: float | None) -> OutputLimits:
        """Settings' overrides (``EDGEFLEET_MAX_LINE_MB`` / ``_OUTPUT_MB``); None keeps ours."""
        return cls(
            max_line=MAX_LINE_BYTES if line_mb is None else max(1, int(line_mb * MiB)),
            max_output=MAX_OUTPUT_BYTES if output_mb is None else max(1, int(output_mb * MiB)),
        )

    def line_too_long(self, name: str) -> OutputLimitError:
        return OutputLimitError(
            f"{name}: the device sent a line longer than {format_size(self.max_line)} without "
            "a newline; command abandoned (a broken or hostile agent? a trusted device's "
            f"limit is raised with {LINE_ENV})")

    def too_much_output(self, name: str) -> OutputLimitError:
        return OutputLimitError(
            f"{name}: the device sent more than {format_size(self.max_output)} of output "
            "(stdout and stderr) for one command; command abandoned (a broken or hostile "
            f"agent? a trusted device's limit is raised with {OUTPUT_ENV})")


class OutputLimitError(TransportError):
    """A command passed its OutputLimits; the channel stops it before passing this on."""


class OutputMeter:
    """Counts one command's output against ``limits.max_output``; thread-safe, because the
    local transport drains stderr in a thread of its own while stdout is read."""

    def __init__(self, name: str, limits: OutputLimits) -> None:
        self.name = name
        self.limits = limits
        self.total = 0
        self._lock = threading.Lock()

    def add(self, size: int) -> None:
        """Count ``size`` more bytes; OutputLimitError once the total passes the limit."""
        with self._lock:
            self.total += size
            over = self.total > self.limits.max_output
        if over:
            raise self.limits.too_much_output(self.name)


class LineBuffer:
    """Stdout bytes as they arrive, cut into lines of at most ``limits.max_line`` bytes.

    Both transports read through one: it never holds more than the line limit plus the last
    chunk fed, each byte is searched for a newline once (a long line is not rescanned per
    chunk), and a line costs one copy on the way out."""

    def __init__(self, meter: OutputMeter) -> None:
        self.meter = meter
        self._buf = bytearray()
        self._scanned = 0  # _buf[:_scanned] holds no newline

    def feed(self, data: bytes) -> None:
        self.meter.add(len(data))
        self._buf += data

    def next_line(self, eof: bool) -> str | None:
        """The next line; at ``eof`` the rest ("" when none is left); None: feed more first.
        OutputLimitError when the line is longer than the limit."""
        max_line = self.meter.limits.max_line
        end = self._buf.find(b"\n", self._scanned)
        if 0 <= end < max_line:
            return self._take(end + 1)
        self._scanned = len(self._buf)
        if end >= 0 or len(self._buf) > max_line:
            self._buf.clear()
            raise self.meter.limits.line_too_long(self.meter.name)
        return self._take(len(self._buf)) if eof else None

    def _take(self, size: int) -> str:
        with memoryview(self._buf) as view:
            line = str(view[:size], "utf-8", "replace")
        del self._buf[:size]
        self._scanned = 0
        return line


class StderrTail:
    """The last ``keep`` bytes of stderr and how many came before them: a device writing
    megabytes of diagnostics costs us ``keep`` bytes, and the text says what was dropped."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.dropped = 0
        self._tail = bytearray()

    def add(self, data: bytes) -> None:
        self._tail += data
        extra = len(self._tail) - self.keep
        if extra > 0:
            del self._tail[:extra]
            self.dropped += extra

    def text(self) -> str:
        tail = self._tail.decode("utf-8", "replace")
        if not self.dropped:
            return tail
        return (f"[stderr truncated: the first {self.dropped} bytes were dropped, the last "
                f"{format_size(self.keep)} follow]\n{tail}")


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


def render_command(argv: Sequence[str]) -> str:
    """``argv`` as one command line, every token quoted."""
    # shlex.quote leaves "A=B" bare, which the shell would take for a variable assignment
    # and run the next token instead.
    if argv and "=" in argv[0]:
        raise ValueError(f"program path {argv[0]!r} contains '=': it would be read as a "
                         "variable assignment")
    return " ".join(quote_token(t) for t in argv)


# Reads the environment from stdin's first line, then becomes argv. ``read`` takes a pipe one
# byte at a time, so the rest of stdin is the command's, untouched. One line with no newline:
# a csh-family login shell cannot parse a newline inside quotes.
ENV_READER = ("IFS= read -r edgefleet_env || "
              "{ echo 'edgefleet: no environment line on stdin' >&2; exit 125; }; "
              'eval "$edgefleet_env"; unset edgefleet_env; exec "$@"')
# How a value's newlines travel on the one line: ``"$nl"``, set first when a value needs it
# (a command substitution strips trailing newlines, hence the dot). ``nl`` is not exported.
_NEWLINE = "nl=$(printf '\\n.'); nl=${nl%.}; "
# Names the device's ``sh`` keeps for itself: set through ``eval`` they fail (bash's read-only
# UID...; dash's OPTIND takes only numbers) or are silently replaced or dropped (RANDOM, _).
SHELL_RESERVED = frozenset({
    "edgefleet_env", "OPTIND", "OPTARG", "_", "UID", "EUID", "PPID", "SHELLOPTS", "BASHOPTS",
    "BASH_VERSINFO", "BASHPID", "RANDOM", "SRANDOM", "SECONDS", "LINENO", "SHLVL", "HISTCMD",
    "EPOCHSECONDS", "EPOCHREALTIME", "GROUPS", "FUNCNAME", "BASH_ARGV0", "BASH_SUBSHELL",
    "BASH_COMMAND", "BASH_LINENO", "BASH_SOURCE", "BASH_ARGC", "BASH_ARGV", "PIPESTATUS",
    "DIRSTACK", "COMP_WORDBREAKS"})


def env_name_problem(key: str) -> str | None:
    """Why ``key`` cannot be a device environment variable, or None."""
    if not (key.isascii() and key.replace("_", "a").isalnum()) or key[0].isdigit():
        return "is not valid (letters, digits and _, not starting with a digit)"
    if key in SHELL_RESERVED:
        return ("is one the device's shell keeps for itself (it would be refused or replaced "
                "there): rename it")
    return None


@dataclass(frozen=True)
class Launch:
    """What starts a command: its line, and the bytes that must go to its stdin first (the
    environment's values: kept out of the repr)."""

    command: str
    stdin_first: bytes = field(default=b"", repr=False)


def render_launch(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Launch:
    """The command line and, with ``env``, its environment as the first line of stdin.

    Not in the command line: that is readable by every local user (``ps``, /proc/PID/cmdline)
    on the controller, where it is ssh's argv, and on the device; and ``edgefleet_env`` may
    carry tokens. Not SSH's own environment passing: sshd drops variables not in AcceptEnv."""
    plain = render_command(argv)
    if not env:
        return Launch(plain)
    assignments = []
    for key, value in env.items():
        problem = env_name_problem(key) if key else "is empty"
        if problem:
            raise ValueError(f"environment variable name {key!r} {problem}")
        if "\0" in value:
            raise ValueError(f"environment variable {key} contains a NUL byte")
        quoted = '"$nl"'.join(shlex.quote(part) for part in value.split("\n"))
        assignments.append(f"{key}={quoted}")
    newline = _NEWLINE if any("\n" in value for value in env.values()) else ""
    line = newline + "export " + " ".join(assignments) + "\n"
    command = render_command(["sh", "-c", ENV_READER, "sh", *argv])
    return Launch(command, line.encode())


def sftp_path(path: str) -> str:
    """SFTP paths are relative to the login directory, which is where ``~`` points."""
    if path == "~":
        return "."
    if path.startswith("~/"):
        return path[2:]
    return path


# How long a command with no silence timeout may hold its start slot without output.
UNTIMED_START_S = 300.0


class Channel(ABC):
    """A running remote command we talk to: bytes in on stdin, lines out of stdout.

    ``start_s``: how much longer than its silence timeout the command may stay silent before
    its first stdout byte: an SSH login, the device's shell start (a ``pyenv init`` in its
    ``.bashrc``) and the agent's imports come before it. 200 logins at once on a 2-core
    controller took more than the 30 s silence timeout, which then failed devices that were
    only waiting their turn (README, "1,000 devices"). 0 for local commands."""

    start_s: float = 0.0
    heard: bool = False  # a stdout byte came: from here on, only the silence timeout counts
    timeout: float | None = None
    _slot: Slot | None = None  # its place at the start gate until it is started

    def hold(self, slot: Slot) -> None:
        """Keep ``slot`` (``startgate``) until this command is started; it expires on its own
        once the allowance has passed (the command is killed then anyway)."""
        self._slot = slot
        slot.expire_after(self.silence_allowed(self.timeout) if self.timeout is not None
                          else UNTIMED_START_S)

    def heard_now(self) -> None:
        """Its first output came: from here on, only the silence timeout counts."""
        self.heard = True
        self.started()

    def started(self) -> None:
        """Past its start (output, its end, an abort): the start slot goes back."""
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()

    def silence_allowed(self, timeout: float) -> float:
        """The silence allowed now: ``timeout``, plus ``start_s`` until the first output."""
        return timeout if self.heard else timeout + self.start_s

    def silence_message(self, timeout: float) -> str:
        """"no output for 1s" / "no output for 61s (1s + 60s to log in and start)"."""
        allowed = self.silence_allowed(timeout)
        if self.heard or not self.start_s:
            return f"no output for {allowed:g}s"
        return (f"no output for {allowed:g}s ({timeout:g}s + {self.start_s:g}s to log in and "
                "start; raise EDGEFLEET_TIMEOUT_S or EDGEFLEET_SSH_LOGIN_TIMEOUT_S for a "
                "device that is only slow)")

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Send bytes to stdin; raises TransportError if the command went away."""

    def write_file(self, path: Path, offset: int, on_bytes: ByteProgress | None = None,
                   chunk: int = 256 * 1024) -> None:
        """Send the file at ``path`` from ``offset`` to its end to stdin. This default reads
        and writes ``chunk``s; a transport writing to a pipe of its own (OpenSSH) lets the
        kernel copy instead."""
        with open(path, "rb") as src:
            src.seek(offset)
            while data := src.read(chunk):
                self.write(data)
                if on_bytes:
                    on_bytes(len(data))

    @abstractmethod
    def readline(self) -> str:
        """The next stdout line ("" at EOF); TransportError after ``timeout`` s of silence, or
        once the line or the command's output passes its OutputLimits (the command is then
        stopped: memory stays bounded while reading, not checked afterwards)."""

    @abstractmethod
    def close_input(self) -> None:
        """Send EOF on stdin."""

    @abstractmethod
    def finish(self) -> tuple[int, str]:
        """Close stdin, read stdout to its end, wait for exit; returns (exit code, stderr's
        kept tail). Raises TransportError if the output limits were passed."""

    @abstractmethod
    def abort(self) -> None:
        """Stop the command now (after an error on our side)."""


class Connection(ABC):
    """A live connection to one device, reused for every step of one operation."""

    def __init__(self, target: Target, limits: OutputLimits | None = None) -> None:
        self.target = target
        self.limits = limits or OutputLimits()
        # The device lease it works under (``factory.under_lease``); None: lease-free.
        self.lease_holder: str | None = None
        # Set when the operation is aborted: a start still waiting at the gate gives up.
        self.start_cancelled = threading.Event()
        self._slots: list[Slot] = []  # every start slot taken here, given back at the latest
        # when the connection is left (a channel given up unread would hold its slot until
        # its allowance passed)

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        on_line: LineHandler | None = None,
        keep_stdout: bool = True,
    ) -> CommandResult:
        """Run argv to completion; ``timeout`` bounds silence (no output), not total time.
        ``keep_stdout=False``: lines only go to ``on_line`` (result.stdout is empty)."""
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

        # No input: no thread (a telemetry poll is a run per device, every minute).
        feeder = threading.Thread(target=feed, daemon=True) if stdin else None
        if feeder is not None:
            feeder.start()
        kept: list[str] = []
        try:
            if feeder is None:
                channel.close_input()
            lines: list[str] = []
            while line := channel.readline():
                if keep_stdout:
                    lines.append(line)
                    if len(lines) >= _JOIN_LINES:
                        # Joined as they come: a flood of one-byte lines would otherwise cost
                        # ~60 bytes of str object each, 60x past the byte limit.
                        kept.append("".join(lines))
                        lines.clear()
                if on_line:
                    on_line(line)
            kept.append("".join(lines))
            code, stderr = channel.finish()
        except BaseException:
            channel.abort()
            raise
        finally:
            if feeder is not None:
                feeder.join()
        return CommandResult(code, "".join(kept), stderr)

    def start(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              timeout: float | None = None) -> Channel:
        """Start argv and keep talking to it (an agent session); ``env`` goes first on its
        stdin (``render_launch``)."""
        launch = render_launch(argv, env)
        # Wait for a start slot before launching, so the login allowance counts from here.
        slot = the_gate().take(self.start_cancelled.is_set)
        if slot is None:
            raise TransportError(f"{self.target.name}: not started: the operation was "
                                 "cancelled")
        try:
            channel = self.launch(launch.command, timeout)
        except BaseException:
            slot.release()
            raise
        channel.hold(slot)
        self._slots.append(slot)
        if launch.stdin_first:
            try:
                channel.write(launch.stdin_first)
            except BaseException:
                channel.abort()
                raise
        return channel

    @abstractmethod
    def launch(self, command: str, timeout: float | None) -> Channel:
        """Start one quoted command line (``render_launch``'s)."""

    @abstractmethod
    def put(self, local: Path, remote: str, on_bytes: ByteProgress | None = None) -> int:
        """Copy a local file to ``remote`` (absolute or ~-relative); returns bytes sent."""

    @abstractmethod
    def close(self) -> None: ...

    def abort(self) -> None:
        """Stop everything in flight on this connection now, from any thread (a Ctrl-C of
        the command using it): blocked reads and writes end with a TransportError."""
        self.close()

    def cancel(self) -> None:
        """``abort``, and a start still waiting at the start gate gives up instead of
        launching."""
        self.start_cancelled.set()
        self.abort()
        self.release_starts()

    def release_starts(self) -> None:
        """Give back every start slot this connection's commands still hold."""
        while self._slots:  # pop: atomic against a start appending from another thread
            self._slots.pop().release()

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        finally:
            self.release_starts()
