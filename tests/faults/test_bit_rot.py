"""Bit rot on the device: a byte flipped in a stored blob with its mtime put back, as a corrupted
SD card (or anything that restores timestamps) leaves it, over real OpenSSH.

The hash cache used to trust a file while its inode, size and mtime were unchanged, so the next
push said "unchanged, 0 B", a benchmark measured the corrupt model and a rollback re-activated
it. The cache now keys on the ctime too (which no one can put back), so each of them hashes the
file again and refuses, or re-sends, naming it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.conftest import Cli
from tests.fleet.sshd import SshdHost
from tests.fleet.test_push_e2e import active_manifest, model_folder, setup_fleet

SHAPE = ("--shape", "log_mel=1x1x98x40")  # the demo model's batch dim is dynamic


def model_entry(bundle: dict[str, Any]) -> dict[str, Any]:
    return next(f for f in bundle["files"] if f["path"] == "model.onnx")


def cache_vouches_for(host: SshdHost, path: Path) -> bool:
    """The agent's persisted hash cache has an entry for this inode that matches its size and
    mtime (what the cache used to check): without the ctime, it would be trusted."""
    st = path.stat()
    cache = json.loads((host.root / "cache" / "hashes.json").read_text())
    entry = cache.get(f"{st.st_dev}:{st.st_ino}")
    return entry is not None and entry[:2] == [st.st_size, st.st_mtime_ns]


def rot(path: Path, offset: int) -> None:
    """Flip one byte in place and put mode, atime and mtime back (only the ctime moves)."""
    before = path.stat()
    path.chmod(0o644)
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x10]))
    path.chmod(before.st_mode & 0o7777)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size, before.st_mtime_ns, before.st_ino)


def test_a_rotten_blob_is_resent_and_never_benched_or_rolled_back_to(
        cli: Cli, sshd_factory, tmp_path: Path) -> None:
    host = sshd_factory(1)[0]
    setup_fleet(cli, tmp_path, [host])
    v1 = cli("bundle", "build", model_folder(tmp_path, 0), "--name", "m", *SHAPE, "--json").json
    v2 = cli("bundle", "build", model_folder(tmp_path, 1), "--name", "m", *SHAPE, "--json").json
    cli("push", "m@1", host.name)
    cli("push", "m@2", host.name)
    model1, model2 = model_entry(v1), model_entry(v2)
    blob2 = host.root / "blobs" / model2["sha256"]
    assert cache_vouches_for(host, blob2)

    # A benchmark re-verifies the version it measures: it refuses, naming the file.
    rot(blob2, model2["size"] // 2)
    assert cache_vouches_for(host, blob2)  # size and mtime alone would still say "unchanged"
    bench = cli("bench", "m@2", host.name, "--threads", "1", "--runs", "3", *SHAPE, "--json",
                expect=1).json
    (row,) = bench["results"]
    assert row["ok"] is False
    assert "m@2 on this device fails verification (model.onnx: sha256" in row["error"]

    # A push of the same version is not "unchanged, 0 B": the rotten blob is sent again.
    repaired = cli("push", "m@2", host.name, "--json").json[0]
    assert repaired["state"] == "active" and repaired["bytes_sent"] == model2["size"]
    assert (host.root / "current" / "model.onnx").read_bytes() == (
        host.root / "blobs" / model2["sha256"]).read_bytes()
    assert cli("devices", "verify", host.name, "--json").json[0]["state"] == "verified"

    # A rollback re-verifies its target: a rotten m@1 is refused, naming the file, and m@2
    # stays active on the device and in the DB.
    state = json.loads((host.root / "state.json").read_text())
    v1_model = host.root / state["history"][0]["dir"] / "model.onnx"
    assert state["history"][0]["version"] == "1" and cache_vouches_for(host, v1_model)
    rot(v1_model, model1["size"] // 3)
    refused = cli("rollback", host.name, "--json", expect=1).json[0]
    assert refused["state"] == "nothing-to-roll-back"
    assert "no earlier version still verifies (m@1: model.onnx: sha256" in refused["error"]
    assert active_manifest(host)["version"] == "2"
    assert cli("devices", "show", host.name, "--json").json["active_bundle"] == "m@2"

    # The rotten m@1 blob (the same inode) is not trusted by the next push either.
    back = cli("push", "m@1", host.name, "--json").json[0]
    assert back["state"] == "active" and back["bytes_sent"] == model1["size"]
    assert active_manifest(host)["version"] == "1"
