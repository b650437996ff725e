"""A push whose link drops in the middle of a 48 MB blob (``kill -9`` of ``edgefleet push``,
over real sshd) is resumed by the next push: only the rest of the blob travels.

Before: the agent deleted its ``.part`` when the stream ended early, and the next push sent
the whole blob again. Now the part stays; the next ``plan`` offers the bytes it holds with
their sha256, the control plane compares them with its own copy's first bytes and sends the
rest. A kept prefix damaged on the device hashes differently: it is sent again in full, in the
same push, and a wrong blob is never installed.
"""

from __future__ import annotations

import hashlib
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.demo.model import make_large_model
from tests.conftest import Cli
from tests.fleet.sshd import SshdHost

from .procs import part_files, processes_under, setup_fleet, spawn_cli, wait_until

MIB = 1 << 20
ARRIVED = 4 * MIB  # what must be on the device before the link is cut


def big_bundle(cli: Cli, tmp_path: Path) -> dict[str, Any]:
    folder = tmp_path / "big"
    folder.mkdir()
    make_large_model(folder / "model.onnx", 48)
    rows = 48 * MIB // (64 * 4)
    return cli("bundle", "build", folder, "--name", "big", "--shape", f"x=1x{rows}",
               "--json").json


def model_of(bundle: dict[str, Any]) -> dict[str, Any]:
    return next(f for f in bundle["files"] if f["path"] == "model.onnx")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def still_missing(host: SshdHost, bundle: dict[str, Any]) -> int:
    """Bytes of the bundle's distinct blobs the device does not hold yet."""
    sizes = {f["sha256"]: f["size"] for f in bundle["files"]}
    return sum(size for sha, size in sizes.items()
               if not (host.root / "blobs" / sha).is_file())


def drop_link_mid_blob(home: Path, host: SshdHost, model: dict[str, Any],
                       tmp_path: Path) -> Path:
    """Start ``edgefleet push``, kill it once ARRIVED bytes of the model are on the device,
    wait for the device's agent to see the link gone; returns the part it kept."""
    def model_part_size() -> int:
        sizes = []
        for part in part_files(host):
            if part.name.startswith(model["sha256"] + "."):
                try:
                    sizes.append(part.stat().st_size)
                except FileNotFoundError:  # renamed while we looked
                    continue
        return max(sizes, default=0)

    log = tmp_path / "push.log"
    push = spawn_cli(home, "push", "big", "pis", "--json", log=log)
    wait_until(lambda: model_part_size() >= ARRIVED, "4 MiB of the model on the device",
               proc=push, log=log)
    push.send_signal(signal.SIGKILL)  # the link drops: no clean-up runs on our side
    push.wait(30)
    wait_until(lambda: not processes_under(host.root), "the device's agent to end")
    (part,) = part_files(host)
    assert part.name.startswith(model["sha256"] + ".") and part.name.endswith(".part")
    assert ARRIVED <= part.stat().st_size < model["size"]
    return part


@dataclass
class Dropped:
    """A fleet of one whose push of ``bundle`` lost its link mid-``model``, ``part`` kept."""

    host: SshdHost
    bundle: dict[str, Any]
    model: dict[str, Any]
    part: Path


@pytest.fixture
def dropped(cli: Cli, home: Path, sshd_factory, tmp_path: Path) -> Dropped:  # type: ignore[no-untyped-def]
    (host,) = sshd_factory(1)
    setup_fleet(cli, tmp_path, [host])
    bundle = big_bundle(cli, tmp_path)
    model = model_of(bundle)
    return Dropped(host, bundle, model, drop_link_mid_blob(home, host, model, tmp_path))


def test_the_next_push_sends_only_the_rest_of_the_blob(cli: Cli, home: Path,
                                                      dropped: Dropped) -> None:
    host, bundle, model, part = dropped.host, dropped.bundle, dropped.model, dropped.part
    kept = part.stat().st_size
    assert sha256(part) == hashlib.sha256(
        (home / "blobs" / model["sha256"][:2] / model["sha256"]).read_bytes()[:kept]).hexdigest()
    to_send = still_missing(host, bundle) - kept

    (again,) = cli("push", "big", "pis", "--json").json
    assert again["state"] == "active", again
    assert again["resumed_bytes"] == kept and again["bytes_sent"] == to_send
    assert sha256(host.root / "blobs" / model["sha256"]) == model["sha256"]
    assert sha256(host.root / "current" / "model.onnx") == model["sha256"]
    assert part_files(host) == []


def test_a_damaged_kept_prefix_is_sent_again_in_full(cli: Cli, dropped: Dropped) -> None:
    host, bundle, model, part = dropped.host, dropped.bundle, dropped.model, dropped.part
    with part.open("r+b") as handle:  # one bit flipped in the middle of what arrived
        handle.seek(part.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0x01]))
    to_send = still_missing(host, bundle)

    (again,) = cli("push", "big", "pis", "--json").json
    assert again["state"] == "active", again
    assert again["resumed_bytes"] == 0 and again["bytes_sent"] == to_send
    assert sha256(host.root / "blobs" / model["sha256"]) == model["sha256"]
    assert sha256(host.root / "current" / "model.onnx") == model["sha256"]
    assert part_files(host) == []
