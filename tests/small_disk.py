"""A real, tiny tmpfs for full-disk tests (mounting needs root: CI and these machines run the
suite as root, and a test that needs it fails rather than skips when it is not)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def mounted_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """``mount`` (created) as a tmpfs of ``size`` (``"12m"``) for the block."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root: run the suite as root (CI does)")
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                   check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
