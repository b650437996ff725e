"""Two control planes (two ``EDGEFLEET_HOME``s, so their device leases do not exclude each
other) push the same 48 MB model to one device at the same time, over real sshd.

Before: both agents streamed into the same ``incoming/<sha>.part``; one truncated the other's
bytes and the loser died on a raw FileNotFoundError when the file it was about to rename had
already been moved into the blob store. Now each session writes a part of its own; whichever
lands second finds the blob there, verified, and drops its identical copy. Both pushes succeed.

The overlap is forced, not hoped for: the first push is stopped (SIGSTOP) while its blob is
half sent, the second one starts streaming its own copy, then the first resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from orchestrator.demo.model import make_large_model
from tests.conftest import Cli
from tests.fleet.sshd import SshdHost

from .procs import CLI_ARGV, REPO, part_files, setup_fleet, wait_until

MIB = 1 << 20


def start_push(home: Path, out: Path) -> subprocess.Popen[bytes]:
    """``edgefleet push big pis --json`` of control plane ``home``: JSON to ``out``, the rest
    to ``out.err``."""
    environ = dict(os.environ, EDGEFLEET_HOME=str(home))
    environ.pop("DATABASE_URL", None)
    with out.open("wb") as stdout, out.with_suffix(".err").open("wb") as stderr:
        return subprocess.Popen([*CLI_ARGV, "push", "big", "pis", "--json"],
                                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                env=environ, cwd=REPO)


def streamed(host: SshdHost, sha: str, at_least: int) -> list[Path]:
    """The parts of ``sha`` on the device holding ``at_least`` bytes."""
    found = []
    for part in part_files(host):
        try:
            if part.name.startswith(sha + ".") and part.stat().st_size >= at_least:
                found.append(part)
        except FileNotFoundError:  # landed while we looked
            continue
    return found


def finished(proc: subprocess.Popen[bytes], out: Path) -> dict[str, Any]:
    proc.wait(120)
    text = out.read_text() + out.with_suffix(".err").read_text()
    for raw in ("Traceback", "FileNotFoundError", "Errno"):
        assert raw not in text, text
    assert proc.returncode == 0, text
    (outcome,) = json.loads(out.read_text())
    return outcome


def test_two_control_planes_push_the_same_blob_at_once(cli: Cli, home: Path, sshd_factory,
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (host,) = sshd_factory(1)
    setup_fleet(cli, tmp_path, [host])
    folder = tmp_path / "big"
    folder.mkdir()
    make_large_model(folder / "model.onnx", 48)
    build = ("bundle", "build", folder, "--name", "big", "--shape",
             f"x=1x{48 * MIB // (64 * 4)}", "--json")
    model = next(f for f in cli(*build).json["files"] if f["path"] == "model.onnx")
    other = tmp_path / "second-control-plane"
    monkeypatch.setenv("EDGEFLEET_HOME", str(other))  # the same fleet, known to another DB
    cli("inventory", "sync", tmp_path / "inventory.yml", "--json")
    cli("devices", "trust", "pis", "--json")
    assert next(f for f in cli(*build).json["files"] if f["path"] == "model.onnx") == model
    monkeypatch.setenv("EDGEFLEET_HOME", str(home))

    sha = model["sha256"]
    first = start_push(home, tmp_path / "first.json")
    wait_until(lambda: streamed(host, sha, MIB), "the first push's blob to be on its way",
               proc=first, log=tmp_path / "first.err")
    first.send_signal(signal.SIGSTOP)  # half sent: its agent waits, holding its part
    try:
        second = start_push(other, tmp_path / "second.json")
        wait_until(lambda: len(streamed(host, sha, 1)) == 2,
                   "the second push to stream its own copy", proc=second,
                   log=tmp_path / "second.err")
    finally:
        first.send_signal(signal.SIGCONT)
    outcomes = [finished(first, tmp_path / "first.json"),
                finished(second, tmp_path / "second.json")]

    assert all(o["state"] in ("active", "unchanged") for o in outcomes), outcomes
    assert "active" in [o["state"] for o in outcomes]
    assert all(o["resumed_bytes"] == 0 for o in outcomes)  # a live session's part is its own
    blob = host.root / "blobs" / sha
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha
    assert (host.root / "current" / "model.onnx").stat().st_ino == blob.stat().st_ino
    assert part_files(host) == []
