"""``ansible_connection: local``: the device is this machine. Commands go through ``/bin/sh -c``
with the very same rendered command line the ssh transport sends, so quoting is shared."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from orchestrator.errors import TransportError
from orchestrator.transport.base import ByteProgress, Channel, Connection, render_command

_COPY_CHUNK = 1 << 20


class LocalChannel(Channel):
    def __init__(self, name: str, command: str, timeout: float | None) -> None:
        self.name = name
        self.timeout = timeout
        self.timed_out = False
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv; the command line is quoted tokens
            ["/bin/sh", "-c", command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Its own process group, so the silence timeout kills what the shell started too:
            # killing only /bin/sh left e.g. `sleep` holding stdout open until it finished.
            start_new_session=True,
        )
        self._stderr: list[bytes] = []
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        self._stderr.append(self.proc.stderr.read())

    def _kill(self) -> None:
        self.timed_out = True
        self.abort()

    def write(self, data: bytes) -> None:
        """Write all of ``data``; a command that reads none of it for ``timeout`` seconds is
        killed (as ``readline`` does when it prints nothing), instead of blocking us forever."""
        assert self.proc.stdin is not None
        timer = threading.Timer(self.timeout, self._kill) if self.timeout else None
        if timer:
            timer.start()
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            if self.timed_out:
                raise TransportError(f"{self.name}: the command read none of its input for "
                                     f"{self.timeout:g}s; command killed") from None
            raise TransportError(f"{self.name}: the command stopped reading its input "
                                 f"({exc})") from None
        finally:
            if timer:
                timer.cancel()

    def readline(self) -> str:
        assert self.proc.stdout is not None
        timer = threading.Timer(self.timeout, self._kill) if self.timeout else None
        if timer:
            timer.start()
        try:
            line = self.proc.stdout.readline()
        finally:
            if timer:
                timer.cancel()
        if self.timed_out:
            raise TransportError(f"{self.name}: no output for {self.timeout:g}s; command killed")
        return line.decode("utf-8", "replace")

    def close_input(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.proc.stdin.close()

    def finish(self) -> tuple[int, str]:
        self.close_input()
        assert self.proc.stdout is not None
        self.proc.stdout.read()
        code = self.proc.wait()
        self._stderr_thread.join()
        return code, b"".join(self._stderr).decode("utf-8", "replace")

    def abort(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


class LocalConnection(Connection):
    def start(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              timeout: float | None = None) -> Channel:
        return LocalChannel(self.target.name, render_command(argv, env), timeout)

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
