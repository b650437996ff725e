"""``ansible_connection: local``: the device is this machine. Commands go through ``/bin/sh -c``
with the very same rendered command line the ssh transport sends, so quoting is shared."""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.core.errors import TransportError
from orchestrator.transport.base import (
    ByteProgress,
    Channel,
    Connection,
    LineBuffer,
    OutputLimitError,
    OutputLimits,
    OutputMeter,
    StderrTail,
)

_COPY_CHUNK = 1 << 20
_READ_CHUNK = 1 << 16
_RELEASE_POLL_MS = 1000  # how soon a released channel's stderr reader ends
_MAX_POLL_MS = 60_000 * 60 * 24  # a day: poll's int timeout overflows past ~24.8 days


def write_wait_ms(timeout: float | None) -> int | None:
    """How long a write waits for the command to take some input, in poll's milliseconds;
    None (for ever) when there is no timeout (None, 0 or infinity)."""
    if not timeout or not math.isfinite(timeout):
        return None
    return min(_MAX_POLL_MS, max(1, int(timeout * 1000)))


class LocalChannel(Channel):
    """``/bin/sh -c command`` in its own process group. Stdout is read in chunks into a
    LineBuffer (``readline(limit)`` of a buffered reader peaked at twice the limit: chunks and
    their join), stderr drained by a thread into a bounded tail; passing a limit kills the
    group.

    The silence timeout of ``readline`` is a ``poll`` on stdout, not a timer thread: a line
    already buffered costs nothing, a read waits at most what is left of the timeout. (A
    ``threading.Timer`` per line started and cancelled a thread for each of a telemetry
    poll's ~90 lines: the control plane's own CPU per SSH poll went from 15.9 to 8.1 ms
    without them, one device polled 30 times in a row.)"""

    def __init__(self, name: str, command: str, timeout: float | None,
                 limits: OutputLimits | None = None, argv: Sequence[str] | None = None) -> None:
        """``argv``: run that program instead of ``/bin/sh -c command`` (the OpenSSH
        transport runs ``ssh ... -- command`` through this very channel)."""
        self.name = name
        self.timeout = timeout
        self.timed_out = False
        self.limits = limits or OutputLimits()
        self.meter = OutputMeter(name, self.limits)
        self._lines = LineBuffer(self.meter)
        self._eof = False
        self._failure: OutputLimitError | None = None  # the first limit passed, either stream
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv; the command line is quoted tokens
            list(argv) if argv is not None else ["/bin/sh", "-c", command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Its own process group, so the silence timeout kills what the shell started too:
            # killing only /bin/sh left e.g. `sleep` holding stdout open until it finished.
            start_new_session=True,
        )
        assert self.proc.stdin is not None
        self._stdin = self.proc.stdin.fileno()
        os.set_blocking(self._stdin, False)  # write() waits in poll, bounded by the timeout
        self._readable = select.poll()  # poll, not select: a fan-out's fds pass 1024
        self._readable.register(self.proc.stdout.fileno(),  # type: ignore[union-attr]
                                select.POLLIN | select.POLLHUP | select.POLLERR)
        self._stderr = StderrTail(self.limits.stderr_keep)
        self._released = threading.Event()
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()

    def _drain_stderr(self) -> None:
        """Stderr into its bounded tail until its end, or until ``release``: over a shared
        SSH connection the master holds this pipe's other end for the session's remote
        command, which a killed ``ssh`` does not stop, so the end may never come."""
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        ready = select.poll()
        ready.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while not self._released.is_set():
            if not ready.poll(_RELEASE_POLL_MS):
                continue
            chunk = os.read(fd, _READ_CHUNK)
            if not chunk:
                return
            self._stderr.add(chunk)
            try:
                self.meter.add(len(chunk))
            except OutputLimitError as exc:
                self._fail(exc)
                return  # the group is killed; the stdout reader raises the error
        with contextlib.suppress(OSError):
            self.proc.stderr.close()  # whoever still writes there gets EPIPE, not a buffer

    def release(self) -> None:
        """Stop reading stderr (within ``_RELEASE_POLL_MS``) and close it: for a channel
        given up on (aborted), whose stderr may otherwise stay open for ever."""
        self._released.set()

    def _fail(self, error: OutputLimitError) -> None:
        """Remember the first limit passed and stop the command (its whole process group)."""
        if self._failure is None:
            self._failure = error
        self.abort()

    def _next_line(self, deadline: float | None = None) -> str | None:
        """The next stdout line ("" at EOF) within the limits; past one the command is killed
        and OutputLimitError raised (also when the stderr thread saw the total passed). None
        when ``deadline`` (a ``time.monotonic()``) passed with no line."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        try:
            while (line := self._lines.next_line(self._eof)) is None:
                if deadline is not None and not self._wait_readable(deadline):
                    return None
                data = os.read(fd, _READ_CHUNK)
                if data:
                    self.heard_now()
                    self._lines.feed(data)
                else:
                    self._eof = True
        except OutputLimitError as exc:
            self._fail(exc)
        if self._failure is not None:
            raise OutputLimitError(str(self._failure))
        return line

    def _wait_readable(self, deadline: float) -> bool:
        """Whether stdout has something to read (or its end) before ``deadline``."""
        while (left := deadline - time.monotonic()) > 0:
            # At most a minute per wait (poll's int timeout overflows past ~24.8 days).
            if self._readable.poll(min(60_000, max(1, int(left * 1000) + 1))):
                return True
        return False

    def _kill(self) -> None:
        self.timed_out = True
        self.abort()

    def write(self, data: bytes) -> None:
        """Write all of ``data`` straight to the command's stdin (no buffered writer, no timer
        thread per call); a command that takes none of it for ``timeout`` seconds is killed (as
        ``readline`` does when it prints nothing), instead of blocking us forever."""
        view = memoryview(data)
        poller = select.poll()
        poller.register(self._stdin, select.POLLOUT)
        try:
            while view:
                try:
                    written = os.write(self._stdin, view)
                except BlockingIOError:
                    if not poller.poll(self.write_wait_ms()):
                        self._kill()
                        raise TransportError(f"{self.name}: the command read none of its input "
                                             f"for {self._allowed():g}s; command killed"
                                             ) from None
                    continue
                view = view[written:]
        except (BrokenPipeError, ValueError, OSError) as exc:
            self._input_refused()
            raise TransportError(f"{self.name}: the command stopped reading its input "
                                 f"({exc})") from None

    def _allowed(self) -> float:
        return self.silence_allowed(self.timeout) if self.timeout else 0.0

    def write_wait_ms(self) -> int | None:
        """How long a write may wait now (the login's allowance until the first output: ssh
        takes none of its stdin before the session is open)."""
        return write_wait_ms(self._allowed())

    def _input_refused(self) -> None:
        """The command's stdin is closed: a transport with its own failures to tell (ssh's)
        raises them here."""

    def readline(self) -> str:
        bounded = self.timeout and math.isfinite(self.timeout)  # inf: no silence timeout
        allowed = self._allowed()
        line = self._next_line(time.monotonic() + allowed if bounded else None)
        if line is None:
            self._kill()
        if self.timed_out:
            assert self.timeout is not None
            raise TransportError(f"{self.name}: {self.silence_message(self.timeout)}; "
                                 "command killed")
        assert line is not None
        return line

    def close_input(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.proc.stdin.close()

    def finish(self) -> tuple[int, str]:
        self.started()
        self.close_input()
        while self._next_line():  # what is left, under the same limits (no silence timeout)
            pass
        code = self.proc.wait()
        self._stderr_thread.join()
        if self._failure is not None:
            raise OutputLimitError(str(self._failure))
        return code, self._stderr.text()

    def abort(self) -> None:
        self.started()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


class LocalConnection(Connection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channels: list[LocalChannel] = []  # for abort(); finished ones are harmless

    def launch(self, command: str, timeout: float | None) -> Channel:
        channel = LocalChannel(self.target.name, command, timeout, self.limits)
        self._channels.append(channel)
        return channel

    def abort(self) -> None:
        """Kill every command started here (each is its own process group, so with what it
        started: an agent's measurement children die with it)."""
        for channel in list(self._channels):
            if channel.proc.poll() is None:
                channel.abort()

    def put(self, local: Path, remote: str, on_bytes: ByteProgress | None = None) -> int:
        dest = os.path.expanduser(remote)
        sent = 0
        try:
            with open(local, "rb") as src, open(dest, "wb") as out:
                while chunk := src.read(_COPY_CHUNK):
                    out.write(chunk)
                    sent += len(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
        except OSError as exc:
            raise TransportError(f"{self.target.name}: writing {remote} failed: {exc}") from exc
        return sent

    def close(self) -> None:
        pass
