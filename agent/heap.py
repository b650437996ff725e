"""Fault in the smoke-test child's heap while the model is still on the wire.

Why: loading a single-file ONNX model copies its weights into fresh memory about twice
(protobuf's parse into a string that grows by doubling, then the session's tensors), and on 4 KiB
pages each fresh page is a page fault plus zeroing. For a 94 MB model that was most of the load:
0.11-0.13 s of ``InferenceSession`` here, 0.02 s once the memory was already faulted in
(bench/push.py prints the smoke test's time). The pre-warmed child (agent.smoke.prewarm) waits
idle for the whole transfer, so it touches that memory then, off the push's critical path.

How: glibc tunables (glibc >= 2.26) make malloc take every block from the heap instead of a
fresh ``mmap`` per large block (``mmap_max=0``) and keep freed memory instead of returning it to
the kernel (``trim_threshold``). The child then allocates, touches and frees one block of
``RESERVE_FACTOR`` x the model's size, and the load's allocations reuse those pages.

Why not transparent huge pages (``glibc.malloc.hugetlb=1``, which also removes the faults):
on a VM whose freed memory goes back to the host (free page reporting, as on the machines
this was measured on) a huge page costs milliseconds to fault in, and the load took 0.03-0.45 s.

Other C libraries ignore the tunables, and touching memory they hand back to the kernel on
free would only waste time: the reserve is made on glibc only.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

RESERVE_ENV = "EDGEFLEET_HEAP_RESERVE"
# A 94 MB model loaded in 0.077 s with 1.1x reserved, 0.030 s with 2.1x, 0.022 s with 2.6x.
RESERVE_FACTOR = 2.5
MIN_MODEL_BYTES = 16 << 20  # below this the faults cost a few ms: not worth holding memory
MAX_SHARE_OF_AVAILABLE = 0.5  # never take more than half of MemAvailable for a head start
KEEP_FREED = 1 << 62  # trim_threshold: freed heap memory stays in the process
TUNABLES = ("glibc.malloc.mmap_max=0", "glibc.malloc.trim_threshold=%d" % KEEP_FREED)


def glibc_version() -> Optional[tuple]:
    """(major, minor) of the C library if it is glibc, else None."""
    try:
        name, _, version = (os.confstr("CS_GNU_LIBC_VERSION") or "").partition(" ")
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (ValueError, OSError, AttributeError):
        return None


def reserve_env(env: Dict[str, str], model_bytes: int) -> Dict[str, str]:
    """``env`` plus what makes the child reserve heap for a ``model_bytes`` model (a copy).

    A GLIBC_TUNABLES value already set by the device's environment is kept and extended."""
    version = glibc_version()
    if model_bytes < MIN_MODEL_BYTES or version is None or version < (2, 26):
        return env
    env = dict(env)
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
    names = set(t.split("=", 1)[0] for t in tunables)
    tunables += [t for t in TUNABLES if t.split("=", 1)[0] not in names]
    env["GLIBC_TUNABLES"] = ":".join(tunables)
    env[RESERVE_ENV] = str(int(model_bytes * RESERVE_FACTOR))
    return env


def mem_available() -> Optional[int]:
    try:
        with open("/proc/meminfo", "rb") as handle:
            for line in handle:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def reserve_from_env() -> int:
    """In the child: fault in the heap the parent asked for; returns the bytes touched (0 if
    nothing was asked, too little memory is free, or the allocation failed)."""
    try:
        wanted = int(os.environ.pop(RESERVE_ENV, "0"))
    except ValueError:
        return 0
    available = mem_available()
    if available is not None:
        wanted = min(wanted, int(available * MAX_SHARE_OF_AVAILABLE))
    if wanted <= 0:
        return 0
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    try:
        block = bytearray(wanted)  # calloc of fresh heap: zero pages the kernel has not mapped
        block[::page] = b"\x01" * len(range(0, wanted, page))  # one write per page faults it in
    except MemoryError:
        return 0
    del block  # back to malloc, which (tunables) keeps it for the load
    return wanted
