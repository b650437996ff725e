"""The sshd processes behind tests.fleet.sshd's hosts: start one, wait (without sleeping) for
its "Server listening" line, and stop it with every session process it forked.

Why the care in ``stop``: sshd's session processes are not in the listener's process group and
outlive a plain SIGTERM to it, so a test that stopped only the listener leaked sessions (and
their agents) into the next test.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

STOP_TIMEOUT = 5.0
_LISTENING = re.compile(r"Server listening on [0-9.]+ port (\d+)")
_BIND_FAILED = ("Address already in use", "Cannot bind any address")


class PortTaken(RuntimeError):
    """sshd could not bind its port (someone else took it between choosing and binding)."""


def _descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (by scanning /proc), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            found.append(child)
            todo.append(child)
    return found


def _terminate_pids(pids: Iterable[int], timeout: float) -> None:
    """SIGTERM processes we did not start (no waitpid), wait on pidfds, SIGKILL stragglers."""
    fds: list[int] = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            continue
        fds.append(fd)
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGTERM)
    try:
        deadline = time.monotonic() + timeout
        pending = list(fds)
        while pending and (left := deadline - time.monotonic()) > 0:
            ready = {fd for fd, _ in _poll(pending, left)}
            pending = [fd for fd in pending if fd not in ready]
        for fd in pending:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        if pending:
            _poll(pending, timeout)
    finally:
        for fd in fds:
            os.close(fd)


def _poll(fds: list[int], timeout: float) -> list[tuple[int, int]]:
    """select.poll over ``fds`` (select refuses descriptors >= 1024)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return poller.poll(timeout * 1000)


class SshdProcess:
    """One sshd process plus the thread that drains (and logs) its stderr."""

    def __init__(self, argv: Sequence[str], log_path: Path) -> None:
        self.lines: list[str] = []
        self.eof = False
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stderr is not None
        self._thread = threading.Thread(
            target=self._pump,
            args=(self.proc.stderr, log_path),
            daemon=True,
            name=f"sshd-stderr-{self.proc.pid}",
        )
        self._thread.start()

    def _pump(self, stream: IO[bytes], log_path: Path) -> None:
        with log_path.open("a", encoding="utf-8") as log:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                log.write(line + "\n")
                log.flush()
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    def wait_listening(self, timeout: float) -> int:
        """Block until sshd logs that it listens; return the port. Raise if it exits first."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if m := _LISTENING.search(line):
                        return int(m.group(1))
                seen = len(self.lines)
                if self.eof:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"sshd not listening after {timeout}s:\n{self.log}")
                self._cond.wait(left)
        self.proc.wait(STOP_TIMEOUT)
        if any(marker in line for line in self.lines for marker in _BIND_FAILED):
            raise PortTaken(self.log)
        raise RuntimeError(f"sshd exited with {self.proc.returncode}:\n{self.log}")

    @property
    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def stop(self) -> None:
        """Stop the listener and every session it forked; reap; close the pipe."""
        proc = self.proc
        if proc.poll() is None:
            # Freeze the listener so it forks no new session while we collect its descendants
            # (they survive the listener: sshd's session processes are not in its group).
            proc.send_signal(signal.SIGSTOP)
            _, status = os.waitpid(proc.pid, os.WUNTRACED)
            if os.WIFSTOPPED(status):
                sessions = _descendants(proc.pid)
                proc.terminate()
                proc.send_signal(signal.SIGCONT)
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            else:  # it exited just now, and waitpid reaped it
                proc.returncode = os.waitstatus_to_exitcode(status)
                sessions = []
            _terminate_pids(sessions, STOP_TIMEOUT)
        self._thread.join(STOP_TIMEOUT)
        if proc.stderr is not None and not self._thread.is_alive():
            proc.stderr.close()
