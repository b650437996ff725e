"""A device whose bench, eval, rollback, verify and push answers are well-formed JSON of the
wrong shape. Real local-transport device, real agent, real onnxruntime, real DB, real pages:
the device's interpreter is a wrapper that runs the real agent and rewrites what its session
prints (the ``measured`` events and the result line), as a compromised or broken device could.

Before (measure.entries, evals.checked_samples, answers.checked_smoke, deploy, verify):
- an ok, valid result with ``"p50": null`` made /metrics answer 500 to every scraper;
- ``"threads": "x"`` was stored as text in an integer column: /trends, /runs/compare and the
  API's run answered 500 for everyone, for good;
- ``"energy": "x"`` or ``"inputs": 5`` broke the run page and the bundle page;
- ``"error": {...}`` failed the insert: the device's failure row was never written;
- an eval sample ``"id": [1]`` broke every view of the eval run;
- a rollback's digest that is a list, or a failed smoke test's ``rolled_back_to: "x"``, left
  the Deployment row pending forever;
- a verify answer's lists went unclipped into the job's result and error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from sqlmodel import col, select

from orchestrator.artifacts.bundles import build_bundle
from orchestrator.artifacts.datasets import build_dataset
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Bundle, Dataset, Deployment, Device, Result, Run
from orchestrator.demo.model import make_demo_classifier
from orchestrator.demo.simulate import create_simulated_device
from orchestrator.fleet import deploy
from orchestrator.fleet.agents import install_agents
from orchestrator.fleet.verify import verify_devices
from orchestrator.inventory.devices import all_devices, sync_inventory
from orchestrator.inventory.reader import load_inventory
from orchestrator.measure.evals import evaluate
from orchestrator.measure.runs import BenchParams, bench
from web.app import create_app

# The device's "python": the real one; a session's output lines pass through this rewriter,
# which patches what HOSTILE_PATCH (the device's environment) says.
REWRITER = """
import json, os, subprocess, sys
PYTHON = {python!r}
def expand(obj):  # {"__repeat__": [item, n]}: n items (a big answer from a short variable)
    if isinstance(obj, dict) and "__repeat__" in obj:
        item, n = obj["__repeat__"]
        return [expand(item)] * n
    if isinstance(obj, dict):
        return {k: expand(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [expand(v) for v in obj]
    if isinstance(obj, str) and obj.startswith("__times__"):
        letter, n = obj[len("__times__"):].split(":")
        return letter * int(n)
    return obj
patch = expand(json.loads(os.environ.get("HOSTILE_PATCH") or "{}"))
if not patch:
    os.execv(PYTHON, [PYTHON, *sys.argv[1:]])
proc = subprocess.Popen([PYTHON, *sys.argv[1:]], stdout=subprocess.PIPE)
for raw in proc.stdout:
    try:
        line = json.loads(raw)
    except ValueError:
        sys.stdout.buffer.write(raw)
        continue
    command = line.get("command")
    if line.get("event") == "measured":
        line["entry"].update(patch.get("entry", {}))
        line["common"] = dict(line.get("common") or {}, **patch.get("common", {}))
    elif line.get("type") == "result" and line.get("ok") and command in ("bench", "eval"):
        for entry in line["data"].get("results") or []:
            entry.update(patch.get("entry", {}))
        line["data"].update(patch.get("common", {}))
    elif line.get("type") == "result" and command in patch.get("answer", {}):
        line = patch["answer"][command]
    elif line.get("type") == "result" and line.get("ok") and command in patch.get("data", {}):
        line["data"].update(patch["data"][command])
    sys.stdout.write(json.dumps(line) + "\\n")
    sys.stdout.flush()
sys.exit(proc.wait())
"""
LABELS = ["background", "crack"]
PAGES = ("/", "/metrics", "/trends", "/runs", "/runs/compare?a=1&b=1", "/benchmarks",
         "/bundles/crack@1", "/api/runs", "/devices/pi-evil")


class Lab:
    def __init__(self, settings: Settings, bundle: Bundle, dataset: Dataset) -> None:
        self.settings, self.bundle, self.dataset = settings, bundle, dataset
        self.client = TestClient(create_app(settings, run_jobs=False),
                                 base_url="http://127.0.0.1")

    def hostile(self, patch: dict[str, Any]) -> list[Device]:
        """The device's next sessions are rewritten by ``patch``; its rows, ready to use."""
        with session_scope(self.settings) as session:
            (device,) = all_devices(session)
            device.env = {**device.env, "HOSTILE_PATCH": json.dumps(patch)}
            session.add(device)
            session.flush()
            session.expunge_all()
            return [device]

    def pages_answer(self, *extra: str) -> None:
        for path in (*PAGES, *extra):
            answer = self.client.get(path)
            assert answer.status_code == 200, (path, answer.text[:1000])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    base = tmp_path_factory.mktemp("hostile-results")
    wrapper = base / "hostile-python"
    wrapper.write_text(f"#!{sys.executable}\n" + REWRITER.replace("{python!r}",
                                                                   repr(sys.executable)))
    wrapper.chmod(0o755)
    sim = create_simulated_device(base / "sim")
    inventory = base / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {
        "pi-evil": sim.local_host_vars(base / "root", str(wrapper))}}}))
    settings = Settings(home=base / "home", database_url=None)
    model = base / "model"
    make_demo_classifier(model / "model.onnx", seed=0)
    (model / "config.json").write_text(json.dumps({"id2label": dict(enumerate(LABELS))}))
    x = np.random.default_rng(1).standard_normal((4, 1, 98, 40)).astype(np.float32)
    np.savez(base / "set.npz", log_mel=x, labels=np.array([0, 1] * 2))
    with session_scope(settings) as session:
        sync_inventory(session, load_inventory(inventory))
        devices = all_devices(session)
        bundle = build_bundle(session, settings, model, "crack").bundle
        dataset = build_dataset(session, settings, base / "set.npz", "set",
                                bundle=bundle).dataset
        session.expunge_all()
    assert all(o.ok for o in install_agents(settings, devices)[1])
    assert all(o.ok for o in deploy.push(settings, bundle, devices))
    return Lab(settings, bundle, dataset)


def run_bench(lab: Lab, patch: dict[str, Any], rounds: int = 1,
              ) -> tuple[Run, list[Result], Any]:
    devices = lab.hostile(patch)
    (run,), (outcome,) = bench(lab.settings, [lab.bundle], devices,
                               BenchParams(threads=[1], warmup=1, runs=5), "pi-evil",
                               rounds=rounds)
    with session_scope(lab.settings) as session:
        rows = list(session.exec(select(Result).where(col(Result.run_id) == run.id)).all())
        session.expunge_all()
    return run, rows, outcome


def test_an_ok_result_without_a_p50_is_a_failure_and_metrics_answer(lab: Lab) -> None:
    run, (row,), outcome = run_bench(lab, {"entry": {"latency_ms": {"n": 5, "p50": None},
                                                     "valid": True}})
    assert not row.ok and row.valid is None and "no latency p50" in (row.error or "")
    assert not outcome.ok and run.state == "failed"
    lab.pages_answer(f"/runs/{run.id}", f"/api/runs/{run.id}")


def test_a_thread_count_nobody_asked_for_is_not_stored(lab: Lab) -> None:
    run, (row,), outcome = run_bench(lab, {"entry": {"threads": "x"}})
    assert row.threads is None and not row.ok  # the device's failure row, nothing else
    assert "no result for threads 1" in (row.error or ""), row.error
    assert not outcome.ok
    lab.pages_answer(f"/runs/{run.id}", f"/api/runs/{run.id}",
                     f"/runs/compare?a={run.id}&b={run.id}")


def test_fields_of_the_wrong_type_are_stored_typed(lab: Lab) -> None:
    patch = {"entry": {"energy": "x", "error": {"x": 1}, "valid": "yes", "flags": "all",
                       "reasons": [1, "r"], "peak_rss_mb": "big", "round_sizes": "x",
                       "telemetry": {"status": [1], "throttled_bits": 2**64, "samples": "x",
                                     "throttle_flags": "all", "temp_c_max": "hot"}},
             "common": {"inputs": 5, "model_size_mb": "huge", "providers": "CPU"}}
    run, (row,), outcome = run_bench(lab, patch)
    assert row.ok and outcome.ok, (row.error, outcome.error)
    assert row.valid is False and row.error is None and row.flags == []
    assert row.reasons == ["r"] and row.peak_rss_mb is None and row.temp_c_max is None
    assert row.telemetry_status == "unknown" and row.throttled_bits is None
    assert row.detail["inputs"] is None and row.detail["energy"] is None
    lab.pages_answer(f"/runs/{run.id}", f"/api/runs/{run.id}")


def test_odd_cpu_energy_and_round_fields_merge_over_rounds(lab: Lab) -> None:
    """Over several rounds (a gate runs 5) the rounds are merged: a CPU p50 or an energy
    figure that is not a number used to fail the merge outside any handler, losing the
    device's rows; a device's own ``round_sizes`` failed the compare page's split."""
    patch = {"entry": {"cpu_ms": {"p50": "x"}, "round_sizes": [None, 3],
                       "energy": {"available": True, "mean_w": "x", "mj_per_inference": "y",
                                  "samples": "z"}}}
    run, (row,), outcome = run_bench(lab, patch, rounds=2)
    assert row.ok and outcome.ok, (row.error, outcome.error)
    assert row.cpu_p50_ms is None and row.detail["round_sizes"] == [3, 2]
    assert row.detail["energy"]["available"] is False
    lab.pages_answer(f"/runs/{run.id}", f"/api/runs/{run.id}",
                     f"/runs/compare?a={run.id}&b={run.id}")
    run, (row,), outcome = run_bench(lab, {"entry": {"round_sizes": [None, 3]}})
    assert row.ok and row.detail["round_sizes"] is None
    lab.pages_answer(f"/runs/{run.id}", f"/runs/compare?a={run.id}&b={run.id}")


def test_an_error_that_is_an_object_still_writes_the_failure_row(lab: Lab) -> None:
    run, (row,), outcome = run_bench(lab, {"entry": {"ok": False, "error": {"x": 1},
                                                     "latency_ms": "x", "latencies_ms": ["a"]}})
    assert not row.ok and row.threads == 1 and row.error is None
    assert not outcome.ok
    lab.pages_answer(f"/runs/{run.id}", f"/api/runs/{run.id}")


def test_eval_samples_of_the_wrong_shape_fail_the_result_not_the_pages(lab: Lab) -> None:
    devices = lab.hostile({"entry": {"samples": [{"id": [1], "label": 0, "probs": "x",
                                                  "pre_ms": "x"}] * 4}})
    run, (outcome,) = evaluate(lab.settings, lab.bundle, lab.dataset, devices, [1], None, 0.5)
    with session_scope(lab.settings) as session:
        (row,) = session.exec(select(Result).where(col(Result.run_id) == run.id)).all()
    assert not row.ok and "cannot score the predictions" in (row.error or ""), row.error
    assert not outcome.ok
    lab.pages_answer(f"/runs/{run.id}", f"/api/runs/{run.id}")


def test_eval_samples_left_out_or_repeated_are_refused(lab: Lab) -> None:
    sample = {"id": "0", "label": "crack", "probs": [0.5, 0.5], "pre_ms": 1.0}
    devices = lab.hostile({"entry": {"samples": [sample] * 4}})
    run, (outcome,) = evaluate(lab.settings, lab.bundle, lab.dataset, devices, [1], None, 0.5)
    with session_scope(lab.settings) as session:
        (row,) = session.exec(select(Result).where(col(Result.run_id) == run.id)).all()
    assert not row.ok and "each once" in (row.error or ""), row.error


def deployments(lab: Lab) -> list[Deployment]:
    with session_scope(lab.settings) as session:
        rows = list(session.exec(select(Deployment).order_by(col(Deployment.id))).all())
        session.expunge_all()
        return rows


def test_a_rollback_answer_with_a_list_for_a_digest_closes_its_row(lab: Lab) -> None:
    answer = {"v": 1, "type": "result", "ok": True, "command": "rollback", "data": {
        "active": {"name": "m", "version": "1", "digest": ["x"]}}}
    (outcome,) = deploy.rollback(lab.settings, lab.hostile({"answer": {"rollback": answer}}))
    assert not outcome.ok and "names no active version" in (outcome.error or "")
    row = deployments(lab)[-1]
    assert (row.operation, row.state) == ("rollback", "failed") and row.finished_at is not None


def test_a_failed_smoke_test_naming_no_version_closes_the_push_row(lab: Lab,
                                                                   tmp_path: Path) -> None:
    model = tmp_path / "model"
    make_demo_classifier(model / "model.onnx", seed=1)
    (model / "config.json").write_text(json.dumps({"id2label": dict(enumerate(LABELS))}))
    with session_scope(lab.settings) as session:
        second = build_bundle(session, lab.settings, model, "crack").bundle
        session.expunge_all()
    answer = {"v": 1, "type": "result", "ok": False, "command": "activate", "error": {
        "code": "smoke_failed", "message": "mismatch", "rolled_back_to": "x",
        "max_abs": "x", "max_rel": 1.0, "ms": [1], "outputs": "x"}}
    (outcome,) = deploy.push(lab.settings, second, lab.hostile({"answer": {"activate": answer}}))
    assert not outcome.ok and outcome.data["smoke"] == "failed"
    row = deployments(lab)[-1]
    assert (row.operation, row.state) == ("push", "failed") and row.finished_at is not None


def test_a_verify_answer_is_clipped(lab: Lab) -> None:
    answer = {"v": 1, "type": "result", "ok": True, "command": "verify", "data": {
        "ok": False, "active": {"name": "crack", "version": "1", "digest": "d"},
        "files": {"checked": "all", "failed": {"__repeat__": ["__times__f:2000", 5000]},
                  "problems": "x"},
        "problems": {"__repeat__": ["__times__p:2000", 5000]},
        "smoke": {"ok": False, "message": ["x"]}}}
    (outcome,) = verify_devices(lab.settings, lab.hostile({"answer": {"verify": answer}}))
    assert not outcome.ok and outcome.data.get("files_checked") == 0, outcome.error[:800]
    assert len(outcome.data["failed_files"]) == 100
    assert all(len(f) == 500 for f in outcome.data["failed_files"])
    assert len(outcome.error or "") < 20_000


def test_a_plan_asking_for_blobs_the_bundle_lacks_is_refused_naming_the_device(
        lab: Lab) -> None:
    """Before: a sha the manifest lacks was a KeyError ("failed unexpectedly"), a string for
    ``missing`` was read letter by letter, ``disk_free_bytes: "x"`` a TypeError."""
    for missing in (["ab" * 32], "abc", [["x"]]):
        (outcome,) = deploy.push(lab.settings, lab.bundle,
                                 lab.hostile({"data": {"plan": {
                                     "missing": missing, "already_active": False}}}))
        assert not outcome.ok and (outcome.error or "").startswith("pi-evil: the agent"), outcome
        assert "unexpectedly" not in outcome.error and "reinstall" in outcome.error.lower()
        row = deployments(lab)[-1]
        assert (row.operation, row.state) == ("push", "failed") and row.finished_at is not None
    (outcome,) = deploy.push(lab.settings, lab.bundle, lab.hostile({"data": {"plan": {
        "disk_free_bytes": "x", "already_active": False}}}))
    assert outcome.ok, outcome.error
