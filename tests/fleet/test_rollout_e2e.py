"""Staged rollouts over real OpenSSH (issue 15 items 3-4): a bad canary stops everything, a
failing batch halts the rest untouched, ``--rollback-on-fail`` restores the previous version,
batches follow the inventory's order, ``--health-bench`` fails a slower version."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.core.config import get_settings
from orchestrator.core.db import session_scope
from orchestrator.demo.model import make_large_model
from orchestrator.jobs.queue import get_job

from ..conftest import Cli
from .sshd import SshdHost, write_inventory
from .test_push_e2e import active_manifest, model_folder
from .test_smoke_e2e import SHAPE, tamper_golden_outputs


def setup_in_order(cli: Cli, tmp_path: Path, hosts: list[SshdHost]) -> None:
    """The hosts in the inventory in the order given (not by name), trusted, agent installed."""
    inventory = write_inventory(tmp_path / "inventory.yml", hosts)
    assert sorted(cli("inventory", "sync", inventory, "--json").json["added"]) == \
        sorted(h.name for h in hosts)
    cli("devices", "trust", "pis", "--json")
    installed = cli("agent", "install", "pis", "--json").json
    assert all(o["state"] == "installed" for o in installed), installed


def versions(hosts: list[SshdHost]) -> dict[str, str]:
    return {h.name: active_manifest(h)["version"] for h in hosts}


def deployments(cli: Cli, name: str) -> list[dict]:
    return cli("devices", "show", name, "--json").json["deployments"]


def start_v1_and_build_v2(cli: Cli, tmp_path: Path, hosts: list[SshdHost]) -> None:
    cli("bundle", "build", model_folder(tmp_path, 0), "--name", "m", *SHAPE, "--json")
    assert all(p["state"] == "active" for p in cli("push", "m@1", "pis", "--json").json)
    cli("bundle", "build", model_folder(tmp_path, 1), "--name", "m", *SHAPE, "--json")


def test_batches_in_inventory_order_halt_on_a_failing_batch_and_roll_back(
        cli: Cli, sshd_factory, tmp_path: Path) -> None:
    hosts = sshd_factory(5)  # pi1 .. pi5
    order = [hosts[4], hosts[2], hosts[0], hosts[3], hosts[1]]  # pi5 pi3 pi1 pi4 pi2
    setup_in_order(cli, tmp_path, order)
    start_v1_and_build_v2(cli, tmp_path, hosts)
    before = {h.name: len(deployments(cli, h.name)) for h in hosts}

    hosts[0].stop()  # pi1: unreachable, in the first batch after the canary
    out = cli("push", "m@2", "pis", "--canary", "pi5", "--batch", "2", "--max-fail", "0",
              "--rollback-on-fail", "--json", expect=1).json
    assert [(b["kind"], b["devices"], b["state"]) for b in out["batches"]] == [
        ("canary", ["pi5"], "ok"), ("batch", ["pi3", "pi1"], "failed"),
        ("batch", ["pi4", "pi2"], "not started")]
    assert out["halted_at"] == 1 and out["state"] == "failed"
    assert set(out) == {"bundle", "digest", "state", "error", "halted_at", "options", "batches",
                        "devices", "rolled_back", "health_runs"}
    assert out["bundle"] == "m@2" and out["health_runs"] == []
    assert set(out["batches"][0]) == {"index", "kind", "devices", "state", "failed", "note"}
    assert set(out["devices"][0]) == {"device", "batch", "state", "bytes_sent", "resumed_bytes",
                                      "duration_s", "error", "smoke", "recovered", "health",
                                      "rolled_back_to"}
    assert out["devices"][0]["rolled_back_to"] == "m@1" and out["devices"][0]["batch"] == 0
    assert out["batches"][1]["failed"] == ["pi1"]
    assert "rollout halted at batch 1 of 3" in out["error"]
    assert "2 devices not started (pi4, pi2)" in out["error"]
    states = {d["device"]: d["state"] for d in out["devices"]}
    assert states == {"pi5": "active", "pi3": "active", "pi1": "failed",
                      "pi4": "not started", "pi2": "not started"}
    assert [d["device"] for d in out["devices"]] == ["pi5", "pi3", "pi1", "pi4", "pi2"]
    # --rollback-on-fail: the two devices it updated are back on v1, by name.
    assert sorted((r["device"], r["state"]) for r in out["rolled_back"]) == [
        ("pi3", "rolled-back"), ("pi5", "rolled-back")]
    running = [h for h in hosts if h.name != "pi1"]
    assert versions(running) == {h.name: "1" for h in running}
    listed = {d["name"]: d["active_bundle"] for d in cli("devices", "list", "--json").json}
    assert listed == dict.fromkeys(listed, "m@1")
    # The devices not started were never touched: no deployment row, no file sent.
    for name in ("pi4", "pi2"):
        assert len(deployments(cli, name)) == before[name]
    new_model = next(f["sha256"] for f in cli("bundle", "show", "m@2", "--json").json["files"]
                     if f["path"] == "model.onnx")
    assert [h.name for h in hosts if (h.root / "blobs" / new_model).exists()] == ["pi3", "pi5"]

    # Audited: the push (with its rollout options) and the halt.
    with session_scope(get_settings()) as session:
        from orchestrator.access.audit import list_events

        events = [(e.action, e.target, e.detail) for e in list_events(session, 10)]
    halt = next(e for e in events if e[0] == "rollout.halt")
    assert halt[2]["batch"] == 1 and halt[2]["failed"] == ["pi1"]
    assert halt[2]["not_started"] == ["pi4", "pi2"]
    assert sorted(halt[2]["rolled_back"]) == ["pi3", "pi5"]
    push = next(e for e in events if e[0] == "push" and e[1] == halt[1])
    assert push[2]["params"]["rollout"] == {"canary": "pi5", "batch": "2", "max_fail": 0.0,
                                           "health_bench": False, "rollback_on_fail": True}
    job_id = int(halt[1].split(":")[1])
    with session_scope(get_settings()) as session:
        job = get_job(session, job_id)
        assert job.state == "failed"
        assert [b["state"] for b in job.progress["rollout"]["batches"]] == [
            "ok", "failed", "not started"]
        assert job.result["rollout"]["halted_at"] == 1


def test_an_unreachable_canary_stops_the_rollout_there(cli: Cli, sshd_factory,
                                                       tmp_path: Path) -> None:
    hosts = sshd_factory(3)
    setup_in_order(cli, tmp_path, hosts)
    start_v1_and_build_v2(cli, tmp_path, hosts)
    before = {h.name: len(deployments(cli, h.name)) for h in hosts}
    hosts[1].stop()
    out = cli("push", "m@2", "pis", "--canary", "pi2", "--batch", "50%", "--max-fail", "100",
              "--json", expect=1).json
    assert [(b["kind"], b["devices"], b["state"]) for b in out["batches"]] == [
        ("canary", ["pi2"], "failed"), ("batch", ["pi1"], "not started"),
        ("batch", ["pi3"], "not started")]  # 50% of the 2 others: 1 a batch
    assert "rollout halted at the canary" in out["error"]
    assert out["rolled_back"] == []
    for h in (hosts[0], hosts[2]):
        assert active_manifest(h)["version"] == "1"
        assert len(deployments(cli, h.name)) == before[h.name]


def test_a_canary_failing_its_smoke_test_stops_the_rollout_there(
        cli: Cli, sshd_factory, home: Path, tmp_path: Path) -> None:
    hosts = sshd_factory(3)
    setup_in_order(cli, tmp_path, hosts)
    start_v1_and_build_v2(cli, tmp_path, hosts)
    tamper_golden_outputs(home, "m@2", shift=0.75)
    before = {h.name: len(deployments(cli, h.name)) for h in hosts}
    out = cli("push", "m@2", "pis", "--canary", "pi1", "--rollback-on-fail", "--json",
              expect=1).json
    assert [(b["devices"], b["state"]) for b in out["batches"]] == [
        (["pi1"], "failed"), (["pi2", "pi3"], "not started")]
    (canary,) = [d for d in out["devices"] if d["device"] == "pi1"]
    assert canary["smoke"]["reason"] == "mismatch"
    assert out["rolled_back"] == []  # the canary kept v1 by itself: nothing was updated
    assert versions(hosts) == {"pi1": "1", "pi2": "1", "pi3": "1"}
    for h in hosts[1:]:
        assert len(deployments(cli, h.name)) == before[h.name]


def test_a_whole_rollout_and_its_table(cli: Cli, sshd_factory, tmp_path: Path) -> None:
    hosts = sshd_factory(3)
    setup_in_order(cli, tmp_path, hosts)
    start_v1_and_build_v2(cli, tmp_path, hosts)
    shown = cli("push", "m@2", "pis", "--canary", "pi3", "--batch", "1")
    assert "rollout of m@2" in shown.stdout and "not started" not in shown.stdout
    assert versions(hosts) == {"pi1": "2", "pi2": "2", "pi3": "2"}


def test_health_bench_fails_a_slower_version(cli: Cli, sshd_factory, tmp_path: Path) -> None:
    hosts = sshd_factory(2)
    setup_in_order(cli, tmp_path, hosts)
    for mb in (4, 64):
        folder = tmp_path / f"large-{mb}"
        folder.mkdir()
        make_large_model(folder / "model.onnx", mb)
        (folder / "config.json").write_text(json.dumps({}))
        rows = 16384 * mb // 4
        cli("bundle", "build", folder, "--name", "big", "--shape", f"x=1x{rows}", "--json")
    # v1 everywhere: no earlier version of "big" to compare with, so not judged (passes).
    first = cli("push", "big@1", "pis", "--batch", "1", "--health-bench", "--json").json
    assert first["state"] == "succeeded", first
    assert all(d["health"]["ok"] and "no earlier version of big" in d["health"]["note"]
               for d in first["devices"]), first["devices"]
    assert first["health_runs"] == []

    out = cli("push", "big@2", "pis", "--canary", "pi1", "--health-bench",
              "--rollback-on-fail", "--json", expect=1).json
    (canary,) = [d for d in out["devices"] if d["device"] == "pi1"]
    assert canary["state"] == "unhealthy", canary
    health = canary["health"]
    assert health["ratio"] > 1.5 and health["baseline"] == "big@1"
    assert "measured alternately" in health["note"] and "slower by more than 5%" in \
        health["note"]
    assert len(out["health_runs"]) == 2 and health["run_ids"] == out["health_runs"]
    runs = [cli("runs", "show", str(i), "--format", "json").json for i in out["health_runs"]]
    assert [(r["bundle"]["version"], r["params"]["rounds"]) for r in runs] == [("1", 5),
                                                                               ("2", 5)]
    assert [b["state"] for b in out["batches"]] == ["failed", "not started"]
    assert [(r["device"], r["state"]) for r in out["rolled_back"]] == [("pi1", "rolled-back")]
    assert versions(hosts) == {"pi1": "1", "pi2": "1"}
