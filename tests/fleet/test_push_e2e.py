"""End to end over real OpenSSH: inventory, trust, agent install, build, push, rollback."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import yaml

from orchestrator.demo.model import make_demo_classifier
from orchestrator.demo.simulate import create_simulated_device
from orchestrator.fleet.agentclient import BLOBS_IN_FLIGHT

from ..conftest import Cli
from .sshd import SshdHost, write_inventory


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_folder(tmp_path: Path, seed: int = 0, name: str = "model") -> Path:
    folder = tmp_path / f"{name}-{seed}"
    folder.mkdir()
    make_demo_classifier(folder / "model.onnx", seed=seed)
    (folder / "config.json").write_text(json.dumps({"id2label": {"0": "no", "1": "yes"}}))
    return folder


def active_manifest(host: SshdHost) -> dict:
    return json.loads((host.root / "current" / ".edgefleet-manifest.json").read_text())


def setup_fleet(cli: Cli, tmp_path: Path, hosts: list[SshdHost], **extra: dict) -> None:
    inventory = write_inventory(tmp_path / "inventory.yml", hosts, extra_host_vars=extra or None)
    assert cli("inventory", "sync", inventory, "--json").json["added"] == [h.name for h in hosts]
    trusted = cli("devices", "trust", "pis", "--json").json
    assert [t["fingerprint"] for t in trusted] == [h.host_key_fingerprint for h in hosts]
    installed = cli("agent", "install", "pis", "--json").json
    assert all(o["state"] == "installed" for o in installed), installed


def test_push_three_hosts_repush_and_rollback(cli: Cli, sshd_factory, tmp_path: Path) -> None:
    hosts = sshd_factory(3)
    setup_fleet(cli, tmp_path, hosts)
    v1 = cli("bundle", "build", model_folder(tmp_path, 0), "--name", "first-crack", "--json").json
    assert v1["version"] == "1" and v1["created"]

    pushed = cli("push", "first-crack", "pis", "--json").json
    assert [p["state"] for p in pushed] == ["active"] * 3
    assert all(p["bytes_sent"] == v1["size_bytes"] for p in pushed)
    for host in hosts:
        for entry in v1["files"]:
            assert sha256(host.root / "current" / entry["path"]) == entry["sha256"]
        assert active_manifest(host)["version"] == "1"

    again = cli("push", "first-crack@1", "pis", "--json").json
    assert [(p["state"], p["bytes_sent"]) for p in again] == [("unchanged", 0)] * 3

    v2 = cli("bundle", "build", model_folder(tmp_path, 1), "--name", "first-crack", "--json").json
    assert v2["version"] == "2"
    pushed2 = cli("push", "first-crack", "pis", "--json").json
    old_blobs = {f["sha256"] for f in v1["files"]}
    new_bytes = sum(f["size"] for f in v2["files"] if f["sha256"] not in old_blobs)
    assert {f["path"] for f in v2["files"] if f["sha256"] not in old_blobs} == {
        "model.onnx", ".edgefleet/golden_outputs.npz"}
    # config.json and the golden inputs are identical in both versions: only the model and its
    # golden outputs travel.
    assert all(p["state"] == "active" and p["bytes_sent"] == new_bytes for p in pushed2)
    assert {active_manifest(h)["version"] for h in hosts} == {"2"}

    rolled = cli("rollback", "pis", "--json").json
    assert [r["state"] for r in rolled] == ["rolled-back"] * 3
    assert {active_manifest(h)["version"] for h in hosts} == {"1"}
    listed = {d["name"]: d for d in cli("devices", "list", "--json").json}
    assert {d["active_bundle"] for d in listed.values()} == {"first-crack@1"}

    # Back to v2: its blobs are still on the devices, so nothing is sent.
    back = cli("push", "first-crack@2", "pis", "--json").json
    assert [(p["state"], p["bytes_sent"]) for p in back] == [("active", 0)] * 3


def test_unknown_and_changed_host_keys_are_refused(cli: Cli, sshd_factory,
                                                   tmp_path: Path) -> None:
    hosts = sshd_factory(2)
    inventory = write_inventory(tmp_path / "inventory.yml", hosts)
    cli("inventory", "sync", inventory)
    refused = cli("agent", "install", "pis", "--json", expect=1).json
    for outcome, host in zip(refused, hosts, strict=True):
        assert outcome["state"] == "failed"
        assert host.name in outcome["error"] and host.host_key_fingerprint in outcome["error"]
        assert "edgefleet devices trust" in outcome["error"]
        assert not host.root.exists()

    cli("devices", "trust", "pis")
    cli("agent", "install", "pis")
    bundle = cli("bundle", "build", model_folder(tmp_path), "--name", "m", "--json").json
    old_fingerprint = hosts[0].host_key_fingerprint
    new_fingerprint = hosts[0].regenerate_host_key()
    before = sorted(p.relative_to(hosts[0].root) for p in hosts[0].root.rglob("*"))

    pushed = cli("push", "m", "pis", "--json", expect=1).json
    assert pushed[0]["state"] == "failed" and pushed[0]["bytes_sent"] == 0
    assert "HOST KEY CHANGED" in pushed[0]["error"]
    assert old_fingerprint in pushed[0]["error"] and new_fingerprint in pushed[0]["error"]
    assert pushed[1]["state"] == "active" and pushed[1]["bytes_sent"] == bundle["size_bytes"]
    assert sorted(p.relative_to(hosts[0].root) for p in hosts[0].root.rglob("*")) == before

    # trust does not silently replace a changed key either; --replace does.
    assert cli("devices", "trust", hosts[0].name, expect=1).exit_code == 1
    cli("devices", "trust", hosts[0].name, "--replace")
    assert cli("push", "m", hosts[0].name, "--json").json[0]["state"] == "active"


def test_corruption_is_caught_and_old_version_stays(cli: Cli, sshd_factory, home: Path,
                                                     tmp_path: Path) -> None:
    host = sshd_factory(1)[0]
    setup_fleet(cli, tmp_path, [host])
    v1 = cli("bundle", "build", model_folder(tmp_path, 0), "--name", "m", "--json").json
    cli("push", "m@1", host.name)

    # A blob modified on the device is not trusted: it is re-sent.
    model = next(f for f in v1["files"] if f["path"] == "model.onnx")
    device_blob = host.root / "blobs" / model["sha256"]
    data = bytearray(device_blob.read_bytes())
    data[100] ^= 0xFF
    device_blob.write_bytes(bytes(data))
    repaired = cli("push", "m@1", host.name, "--json").json[0]
    assert repaired["state"] == "active" and repaired["bytes_sent"] == model["size"]
    assert sha256(host.root / "current" / "model.onnx") == model["sha256"]

    # Bytes corrupted on the way (here: in the control plane's blob store) fail verification
    # on the device, which names the file and keeps v1 active.
    v2 = cli("bundle", "build", model_folder(tmp_path, 7), "--name", "m", "--json").json
    model2 = next(f for f in v2["files"] if f["path"] == "model.onnx")
    store_blob = home / "blobs" / model2["sha256"][:2] / model2["sha256"]
    data = bytearray(store_blob.read_bytes())
    data[200] ^= 0xFF
    store_blob.write_bytes(bytes(data))
    failed = cli("push", "m@2", host.name, "--json", expect=1).json[0]
    assert failed["state"] == "failed" and "model.onnx" in failed["error"]
    assert active_manifest(host)["version"] == "1"
    assert not list((host.root / "incoming").glob("*.part"))
    assert cli("devices", "show", host.name, "--json").json["active_bundle"] == "m@1"


def test_one_device_down_others_succeed(cli: Cli, sshd_factory, tmp_path: Path) -> None:
    hosts = sshd_factory(3)
    setup_fleet(cli, tmp_path, hosts)
    cli("bundle", "build", model_folder(tmp_path), "--name", "m")
    hosts[1].stop()
    result = cli("push", "m", "pis", "--json", expect=1)
    states = {p["device"]: p for p in result.json}
    assert states[hosts[0].name]["state"] == "active"
    assert states[hosts[2].name]["state"] == "active"
    assert states[hosts[1].name]["state"] == "failed"
    assert "cannot connect" in states[hosts[1].name]["error"]
    table = cli("push", "m", "pis", expect=1).stdout
    assert "2 ok, 1 failed, 3 devices" in table


def test_hostile_root_and_labels_pass_through_literally(cli: Cli, sshd_factory,
                                                        tmp_path: Path) -> None:
    host = sshd_factory(1, odd_root=True, odd_sim_dir=True)[0]
    label = "it's \"$(touch PWNED)\" `id` ; rm -rf /"
    setup_fleet(cli, tmp_path, [host], **{host.name: {"note": label}})
    cli("bundle", "build", model_folder(tmp_path), "--name", "m")
    assert cli("push", "m", host.name, "--json").json[0]["state"] == "active"
    assert (host.root / "current" / "model.onnx").is_file()
    shown = cli("devices", "show", host.name, "--json").json
    assert shown["labels"]["note"] == label and shown["root"] == str(host.root)
    assert shown["facts"]["root"] == str(host.root)
    assert not list(Path("/").glob("PWNED")) and not list(tmp_path.rglob("PWNED"))
    assert not list(Path(os.getcwd()).glob("PWNED"))


def test_old_onnxruntime_is_refused_before_transfer(cli: Cli, sshd_factory,
                                                    tmp_path: Path) -> None:
    """The device's onnxruntime is replaced by a stub reporting 1.10.0 (on its PYTHONPATH)."""
    host = sshd_factory(1)[0]
    stub = tmp_path / "old-ort" / "onnxruntime"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(
        "__version__ = '1.10.0'\n"
        "def get_available_providers():\n    return ['CPUExecutionProvider']\n"
    )
    env = dict(host.sim.env, PYTHONPATH=str(stub.parent))
    setup_fleet(cli, tmp_path, [host], **{host.name: {"edgefleet_env": env}})
    bundle = cli("bundle", "build", model_folder(tmp_path), "--name", "m", "--json").json
    assert bundle["min_onnxruntime"] == "1.12"  # opset 17
    failed = cli("push", "m", host.name, "--json", expect=1).json[0]
    assert failed["bytes_sent"] == 0
    assert "1.10.0" in failed["error"] and ">= 1.12" in failed["error"]
    assert not (host.root / "blobs").exists() or not any((host.root / "blobs").iterdir())


def many_files_folder(tmp_path: Path, name: str, count: int, tag: str, size: int) -> Path:
    """A model plus ``count`` side files of ``size`` bytes."""
    folder = model_folder(tmp_path, 0, name=name)
    (folder / "labels").mkdir()
    for index in range(count):
        line = f"{tag} label file {index}\n".encode()
        body = (line * (size // len(line) + 1))[:size]
        (folder / "labels" / f"{index:04d}.txt").write_bytes(body)
    return folder


def check_pipelined_push(cli: Cli, home: Path, tmp_path: Path, device: str, root: Path,
                         count: int, size: int) -> None:
    """Blobs stream back to back with results read behind them: all arrive; a bad blob midway
    fails the push naming it, keeps what arrived before it, and leaves v1 active."""
    v1 = cli("bundle", "build", many_files_folder(tmp_path, "v1", count, "a", size), "--name",
             "many", "--json").json
    pushed = cli("push", "many", device, "--json").json[0]
    assert pushed["state"] == "active" and pushed["bytes_sent"] == v1["size_bytes"]
    for entry in v1["files"]:
        assert sha256(root / "current" / entry["path"]) == entry["sha256"]

    v2 = cli("bundle", "build", many_files_folder(tmp_path, "v2", count, "b", size), "--name",
             "many", "--json").json
    new = sorted((f for f in v2["files"] if f["path"].startswith("labels/")),
                 key=lambda f: f["path"])
    bad = new[len(new) // 2]
    store_blob = home / "blobs" / bad["sha256"][:2] / bad["sha256"]
    good_bytes = store_blob.read_bytes()
    store_blob.write_bytes(b"X" + good_bytes[1:])
    failed = cli("push", "many", device, "--json", expect=1).json[0]
    assert failed["state"] == "failed" and bad["path"] in failed["error"]
    assert active_manifest_at(root)["version"] == "1"
    assert not list((root / "incoming").glob("*.part"))

    store_blob.write_bytes(good_bytes)
    fixed = cli("push", "many", device, "--json").json[0]
    to_send = sum(f["size"] for f in v2["files"]
                  if f["sha256"] not in {g["sha256"] for g in v1["files"]})
    assert fixed["state"] == "active" and 0 < fixed["bytes_sent"] < to_send  # kept what came
    assert active_manifest_at(root)["version"] == "2"


def active_manifest_at(root: Path) -> dict:
    return json.loads((root / "current" / ".edgefleet-manifest.json").read_text())


def test_many_files_are_pipelined_over_ssh(cli: Cli, sshd_factory, home: Path,
                                           tmp_path: Path) -> None:
    host = sshd_factory(1)[0]
    setup_fleet(cli, tmp_path, [host])
    check_pipelined_push(cli, home, tmp_path, host.name, host.root,
                         count=2 * BLOBS_IN_FLIGHT + 5, size=100)


def test_many_files_are_pipelined_over_the_local_transport(cli: Cli, home: Path,
                                                           tmp_path: Path) -> None:
    """The local transport reads the agent's stdout only when asked. 700 results (~120 bytes
    each) overfill its 64 KiB stdout pipe, and 700 x 4 KiB overfill its 1 MiB stdin pipe: were
    the unread results not bounded, agent and control plane would each wait on the other."""
    sim = create_simulated_device(tmp_path / "sim")
    root = tmp_path / "root"
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"here": sim.local_host_vars(root)}}}))
    cli("inventory", "sync", inventory)
    assert cli("agent", "install", "here", "--json").json[0]["state"] == "installed"
    check_pipelined_push(cli, home, tmp_path, "here", root, count=700, size=4096)
