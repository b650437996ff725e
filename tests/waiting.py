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
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)
