"""Golden-output smoke test end to end over real OpenSSH: a push whose golden outputs are wrong
never goes live (the previous version stays) and fails with the difference; ``devices verify``
re-checks on demand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from agent.protocol import canonical_json, manifest_digest
from orchestrator.artifacts.blobstore import BlobStore
from orchestrator.artifacts.bundles import get_bundle, manifest_of
from orchestrator.artifacts.golden import npz_bytes
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope

from ..conftest import Cli
from .test_push_e2e import active_manifest, model_folder, setup_fleet

SHAPE = ("--shape", "log_mel=1x1x98x40")  # the demo model's batch dim is dynamic


def tamper_golden_outputs(home: Path, ref: str, shift: float) -> None:
    """Shift the golden logits of ``ref`` and re-register the bundle consistently: new blob,
    manifest entry and digest, so every file still verifies and only the golden is wrong."""
    settings = Settings()
    store = BlobStore(home / "blobs")
    with session_scope(settings) as session:
        bundle = get_bundle(session, ref)
        manifest = manifest_of(bundle)
        entry = next(f for f in manifest["files"] if f["path"] == manifest["golden"]["outputs"])
        with np.load(store.path(entry["sha256"])) as data:
            arrays = {key: data[key] for key in data.files}
        arrays["logits"] = arrays["logits"] + np.float32(shift)
        tampered = home / "tampered.npz"
        tampered.write_bytes(npz_bytes(arrays))
        entry["sha256"], entry["size"] = store.add_file(tampered)
        bundle.manifest_json = canonical_json(manifest).decode("utf-8")
        bundle.digest = manifest_digest(manifest)
        bundle.size_bytes = sum(f["size"] for f in manifest["files"])
        session.add(bundle)


def test_tampered_golden_never_goes_live_and_verify_finds_a_changed_file(
        cli: Cli, sshd_factory, home: Path, tmp_path: Path) -> None:
    host = sshd_factory(1)[0]
    setup_fleet(cli, tmp_path, [host])
    v1 = cli("bundle", "build", model_folder(tmp_path, 0), "--name", "m", *SHAPE, "--json").json
    assert v1["golden"]["outputs"] == ".edgefleet/golden_outputs.npz"

    pushed = cli("push", "m@1", host.name, "--json").json[0]
    assert pushed["state"] == "active"
    assert pushed["smoke"]["ok"] is True and pushed["smoke"]["ms"] > 0
    assert {o["name"] for o in pushed["smoke"]["outputs"]} == {"logits", "probabilities"}

    cli("bundle", "build", model_folder(tmp_path, 1), "--name", "m", *SHAPE)
    tamper_golden_outputs(home, "m@2", shift=0.75)
    failed = cli("push", "m@2", host.name, "--json", expect=1).json[0]
    assert failed["state"] == "failed"
    assert "output 'logits' differs from the golden output by max abs 0.75" in failed["error"]
    assert "max rel" in failed["error"] and "m@1 stays active" in failed["error"]
    assert failed["smoke"]["reason"] == "mismatch"
    assert failed["smoke"]["rolled_back_to"]["version"] == "1"
    assert failed["bytes_sent"] > 0  # it was sent and staged, then dropped
    assert active_manifest(host)["version"] == "1"
    shown = cli("devices", "show", host.name, "--json").json
    assert shown["active_bundle"] == "m@1" and shown["active_digest"] == v1["digest"]
    assert shown["deployments"][0]["state"] == "failed"
    assert "m@1 stays active (m@2 never went live)" in shown["deployments"][0]["error"]

    verified = cli("devices", "verify", host.name, "--json").json[0]
    assert verified["state"] == "verified" and verified["bundle"] == "m@1"
    assert verified["files_checked"] == len(v1["files"]) and verified["failed_files"] == []
    assert verified["smoke"] == "passed" and verified["max_abs"] <= 1e-4

    model = host.root / "current" / "model.onnx"
    model.chmod(0o644)
    data = bytearray(model.read_bytes())
    data[-5] ^= 0x20
    model.write_bytes(bytes(data))
    broken = cli("devices", "verify", host.name, "--json", expect=1).json[0]
    assert broken["state"] == "failed" and broken["failed_files"] == ["model.onnx"]
    assert "model.onnx: sha256" in broken["error"]
    assert "edgefleet push m@1" in broken["error"]
    table = cli("devices", "verify", "pis", expect=1).stdout
    print(table)
    assert "model.onnx" in table and "0 ok, 1 failed" in table

    # A push repairs it: the changed bytes are not trusted, so they are sent again.
    repaired = cli("push", "m@1", host.name).stdout
    print(repaired)
    assert "active" in repaired and "passed, max abs" in repaired and "1 ok, 0 failed" in repaired
    assert cli("devices", "verify", host.name, "--json").json[0]["state"] == "verified"
    assert json.loads((host.root / "state.json").read_text())["history"][-1]["version"] == "1"
