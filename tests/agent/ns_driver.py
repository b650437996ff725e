"""Run agent scenarios inside a private mount namespace (``unshare -rm``) with small tmpfs mounts.

Why a separate script: a mount made in a namespace vanishes with it, so the setup, the agent runs
and the observations all happen in this one process, which prints a JSON report that the test
(test_filesystems.py) asserts on. Usage: ``unshare -rm python ns_driver.py`` with a JSON job on
stdin: {"scenario", "pyz", "workdir", "bundles": [{"request", "contents": {sha: hex}}]}.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from typing import Any


def mount_tmpfs(path: str, size: str) -> None:
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", path], check=True)


def agent(pyz: str, root: str, command: str, request: Any = None) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, pyz, "--root", root, command],
        input=json.dumps(request).encode() if request is not None else b"",
        capture_output=True, check=False,
    )
    return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]


def upload(root: str, bundle: dict[str, Any]) -> None:
    os.makedirs(os.path.join(root, "incoming"), exist_ok=True)
    for sha, hexdata in bundle["contents"].items():
        with open(os.path.join(root, "incoming", sha + ".part"), "wb") as handle:
            handle.write(bytes.fromhex(hexdata))


def fill(path: str) -> None:
    """Write until the filesystem is full."""
    fd = os.open(os.path.join(path, "filler"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)


def snapshot(root: str) -> dict[str, Any]:
    state = os.path.join(root, "state.json")
    with open(state, "rb") as handle:
        state_bytes = handle.read().decode()
    return {
        "current": os.readlink(os.path.join(root, "current")),
        "state": state_bytes,
        "versions": sorted(os.listdir(os.path.join(root, "versions"))),
    }


def no_space(job: dict[str, Any]) -> dict[str, Any]:
    mount = os.path.join(job["workdir"], "small")
    mount_tmpfs(mount, "512k")
    root = os.path.join(mount, "root")
    v1, v2 = job["bundles"]
    upload(root, v1)
    first = agent(job["pyz"], root, "activate", v1["request"])
    before = snapshot(root)
    upload(root, v2)
    fill(mount)
    failed = agent(job["pyz"], root, "activate", v2["request"])
    return {"first": first, "failed": failed, "before": before, "after": snapshot(root)}


def copy_fallback(job: dict[str, Any]) -> dict[str, Any]:
    root = os.path.join(job["workdir"], "root")
    mount_tmpfs(os.path.join(root, "versions"), "4m")  # blobs/ and versions/ on different FSs
    (bundle,) = job["bundles"]
    upload(root, bundle)
    run = agent(job["pyz"], root, "activate", bundle["request"])
    files = {}
    for entry in bundle["request"]["manifest"]["files"]:
        staged = os.stat(os.path.join(root, "current", entry["path"]))
        blob = os.stat(os.path.join(root, "blobs", entry["sha256"]))
        files[entry["path"]] = {"same_inode": staged.st_ino == blob.st_ino,
                                "mode": staged.st_mode & 0o777}
    again = agent(job["pyz"], root, "plan", bundle["request"])
    return {"run": run, "files": files, "plan": again}


if __name__ == "__main__":
    job = json.load(sys.stdin)
    report = {"no_space": no_space, "copy_fallback": copy_fallback}[job["scenario"]](job)
    json.dump(report, sys.stdout)
