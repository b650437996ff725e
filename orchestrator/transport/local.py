"""``ansible_connection: local``: the device is this machine. Commands go through ``/bin/sh -c``
with the very same rendered command line the ssh transport sends, so quoting is shared."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from orchestrator.errors import TransportError
from orchestrator.transport.base import (
    ByteProgress,
    CommandResult,
    Connection,
    LineHandler,
    render_command,
)

_COPY_CHUNK = 1 << 20


def _expand(remote: str) -> str:
    return os.path.expanduser(remote)


class LocalConnection(Connection):
    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        on_line: LineHandler | None = None,
    ) -> CommandResult:
        command = render_command(argv, env)
        proc = subprocess.Popen(  # noqa: S603 - fixed argv; the command line is quoted tokens
            ["/bin/sh", "-c", command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stderr_chunks: list[bytes] = []

        def feed() -> None:
            assert proc.stdin is not None
            try:
                if stdin:
                    proc.stdin.write(stdin)
            except BrokenPipeError:
                pass
            finally:
                proc.stdin.close()

        def drain_stderr() -> None:
            assert proc.stderr is not None
            stderr_chunks.append(proc.stderr.read())

        threads = [threading.Thread(target=feed, daemon=True),
                   threading.Thread(target=drain_stderr, daemon=True)]
        for thread in threads:
            thread.start()
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        lines: list[str] = []
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace")
                lines.append(line)
                if on_line:
                    on_line(line)
                if timer:  # timeout bounds silence: restart the clock on every line
                    timer.cancel()
                    timer = threading.Timer(timeout, proc.kill)  # type: ignore[arg-type]
                    timer.start()
            code = proc.wait()
        finally:
            if timer:
                timer.cancel()
        for thread in threads:
            thread.join()
        if code == -9 and timeout:
            raise TransportError(f"{self.target.name}: no output for {timeout:g}s; command killed")
        stderr = b"".join(stderr_chunks).decode("utf-8", "replace")
        return CommandResult(code, "".join(lines), stderr)

    def put(self, local: Path, remote: str, on_bytes: ByteProgress | None = None) -> int:
        dest = _expand(remote)
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

    def remove(self, remote: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_expand(remote))

    def close(self) -> None:
        pass
