"""Uploads nobody finished are cleaned up at prune once a day old (agent.parts.sweep), never
one a live session owns, never a fresh one (it may still be resumed)."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from agent_helpers import make_bundle, push

DAY = 24 * 3600
SHA = "ab" * 32


def left(incoming: Path, name: str, age_s: float) -> Path:
    """A file an earlier transfer left, last written ``age_s`` ago."""
    path = incoming / name
    path.write_bytes(b"half a blob")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_parts_a_day_old_are_pruned_fresh_and_owned_ones_stay(pyz: Path, root: Path) -> None:
    push(pyz, root, make_bundle("m", "1", {"model.onnx": b"one"}), plan=False)
    incoming = root / "incoming"
    dead_owner = left(incoming, f"{SHA}.{'0' * 16}.part", DAY + 60)
    older_agent = left(incoming, f"{SHA}.part", 3 * DAY)  # an older control plane's SFTP upload
    crashed_create = left(incoming, f".{SHA}.{'1' * 16}.new", DAY + 60)
    fresh = left(incoming, f"{SHA}.{'2' * 16}.part", DAY - 60)  # may still be resumed
    owned = left(incoming, f"{SHA}.{'3' * 16}.part", 2 * DAY)  # its session is still alive

    with owned.open("rb") as live:
        fcntl.flock(live, fcntl.LOCK_EX)  # what the owning session holds while it lives
        run = push(pyz, root, make_bundle("m", "2", {"model.onnx": b"two"}), plan=False)

    swept = sorted(p for p in run.data["pruned"] if p.startswith("incoming/"))
    assert swept == sorted("incoming/" + p.name for p in (dead_owner, older_agent,
                                                          crashed_create))
    assert sorted(incoming.iterdir()) == sorted([fresh, owned])
    assert fresh.read_bytes() == owned.read_bytes() == b"half a blob"
    assert os.readlink(root / "current").startswith("versions/")  # the push itself went on
