"""A full disk and a version dir on another filesystem, on real (namespaced tmpfs) mounts.

Skipped where unprivileged user+mount namespaces are unavailable (``unshare -rm``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import Bundle, make_bundle

DRIVER = Path(__file__).with_name("ns_driver.py")


@cache
def namespaces_available() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = subprocess.run([unshare, "-rm", "true"], capture_output=True, check=False)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not namespaces_available(), reason="needs `unshare -rm`")


def job(scenario: str, pyz: Path, workdir: Path, bundles: list[Bundle]) -> dict[str, Any]:
    payload = {
        "scenario": scenario,
        "pyz": str(pyz),
        "workdir": str(workdir),
        "bundles": [
            {"request": b.request, "contents": {sha: d.hex() for sha, d in b.contents.items()}}
            for b in bundles
        ],
    }
    proc = subprocess.run(
        ["unshare", "-rm", sys.executable, str(DRIVER)],
        input=json.dumps(payload).encode(), capture_output=True, check=False, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def test_full_disk_is_no_space_naming_the_file_and_keeps_current(
    pyz: Path, tmp_path: Path
) -> None:
    v1 = make_bundle("m", "1", {"model.onnx": b"1" * 1000})
    v2 = make_bundle("m", "2", {"model.onnx": b"2" * 1000, "extra.bin": b"e" * 100})
    report = job("no_space", pyz, tmp_path, [v1, v2])
    assert report["first"][-1]["ok"] is True
    result = report["failed"][-1]
    assert result["ok"] is False and result["error"]["code"] == "no_space"
    assert result["error"]["path"] in result["error"]["message"]
    assert "/versions/.staging-" in result["error"]["path"]
    assert report["after"] == report["before"]  # current, state.json and versions/ untouched


def test_copy_fallback_when_hardlinks_cross_filesystems(pyz: Path, tmp_path: Path) -> None:
    bundle = make_bundle("m", "1", {"model.onnx": b"w" * 5000, "labels.txt": b"a\nb\n"})
    report = job("copy_fallback", pyz, tmp_path, [bundle])
    result = report["run"][-1]
    assert result["ok"] is True, result
    assert report["files"] == {
        "model.onnx": {"same_inode": False, "mode": 0o444},
        "labels.txt": {"same_inode": False, "mode": 0o444},
    }
    hashed = [e["path"] for e in report["run"] if e.get("event") == "verifying" and e["done"] == 0]
    # blobs hashed once as uploads, copies hashed again: a copy is a new inode
    assert sorted(hashed) == sorted(["model.onnx", "labels.txt"] * 2)
    assert report["plan"][-1]["data"]["already_active"] is True
