"""Waiting for a process to end without sleeping: a pidfd becomes readable when it exits."""

from __future__ import annotations

import os
import select


def process_gone(pid: int, timeout: float) -> bool:
    """Whether ``pid`` has exited (or never existed), waiting up to ``timeout`` seconds."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        # poll, not select: a long test session may hold more than 1024 descriptors
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)
