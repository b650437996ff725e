"""The name of this process's host in worker and lease-holder ids (``HOST:PID[:TOKEN]``).

Why not the hostname alone: those ids let a process tell by pid that a holder on *its own* host
is dead, and take over at once. Machines cloned from one image ("raspberrypi", "ubuntu") or two
containers given one hostname share a hostname but not a pid space: a process on one took the
other's live pid for dead, stole its lease (two operations on one Pi) or marked its running job
interrupted. So the hostname is followed by a short digest of the kernel's boot id and this
process's pid namespace, which differ wherever two pids cannot be compared: ``lab-1~3f9a1c2b``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
from pathlib import Path

SEPARATOR = "~"  # not ":", which separates the id's fields


@functools.cache
def this_host() -> str:
    """``HOSTNAME~DIGEST`` (the hostname alone where /proc says nothing: not Linux)."""
    name = socket.gethostname()
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        pid_ns = ""
    if not boot and not pid_ns:
        return name
    digest = hashlib.sha256(f"{boot}|{pid_ns}".encode()).hexdigest()[:8]
    return f"{name}{SEPARATOR}{digest}"
