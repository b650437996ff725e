"""Evaluation runs as jobs: submitted through the API or the bundle page's form, run by a job
worker over real local devices (real agent, real onnxruntime; simulated sensors only), and a
CLI ``edgefleet eval`` recorded as a job of origin "cli". Real SQLite through migrations."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from orchestrator.access.auth import create_token
from orchestrator.artifacts.bundles import build_bundle
from orchestrator.artifacts.datasets import build_dataset
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError
from orchestrator.core.models import DeviceLease, Job, Result, Run
from orchestrator.demo.model import make_demo_classifier
from orchestrator.fleet.deploy import push
from orchestrator.inventory.devices import all_devices
from orchestrator.jobs import queue, schedules
from orchestrator.jobs import runner as job_runner
from orchestrator.measure import evals
from tests.conftest import Cli
from tests.unit.jobs.test_jobs import all_jobs, make_fleet
from web.app import create_app

LABELS = ["background", "crack"]
SAMPLES = 8


def labelled_fleet(base: Path, names: tuple[str, ...] = ("pi-a", "pi-b"),
                   settings: Settings | None = None) -> Settings:
    """make_fleet's devices plus ``crack@1`` (a classifier with labels) pushed to all of them
    and ``set@1``, a tensor dataset of SAMPLES labelled inputs built for it."""
    settings = make_fleet(base, names=names, settings=settings)
    model = base / "crack-model"
    make_demo_classifier(model / "model.onnx", seed=0)
    (model / "config.json").write_text(json.dumps({"id2label": dict(enumerate(LABELS))}))
    x = np.random.default_rng(1).standard_normal((SAMPLES, 1, 98, 40)).astype(np.float32)
    npz = base / "set.npz"
    np.savez(npz, log_mel=x, labels=np.array([0, 1] * (SAMPLES // 2)))
    with session_scope(settings) as session:
        bundle = build_bundle(session, settings, model, "crack").bundle
        build_dataset(session, settings, npz, "set", bundle=bundle)
        devices = all_devices(session)
        session.expunge_all()
    assert all(o.ok for o in push(settings, bundle, devices))
    return settings


class Site:
    """One fleet, an app, and a bearer token per role (bearer requests need no CSRF)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = TestClient(create_app(settings, run_jobs=False), base_url="http://localhost")
        self.tokens = {role: create_token(settings, role, role)[1]
                       for role in ("admin", "operator", "viewer")}

    def call(self, role: str, method: str, url: str, **kw: Any) -> Any:
        return self.client.request(method, url, follow_redirects=False,
                                   headers={"Authorization": f"Bearer {self.tokens[role]}"},
                                   **kw)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return Site(labelled_fleet(tmp_path_factory.mktemp("eval-jobs")))


def run_next(settings: Settings) -> Job:
    done = job_runner.JobRunner(settings, telemetry_interval_s=None).run_one()
    assert done is not None
    return done


def test_eval_job_from_the_api_runs_to_a_scored_run(site: Site) -> None:
    body = {"kind": "eval", "targets": "all",
            "params": {"bundle": "crack", "dataset": "set", "threads": [1, 2]}}
    created = site.call("operator", "POST", "/api/jobs", json=body)
    assert created.status_code == 201, created.text
    queued = created.json()
    assert queued["state"] == "queued" and queued["kind"] == "eval"
    # Defaults filled in as `edgefleet eval` has them.
    assert queued["params"] | {"threshold": 0.5, "warmup": 1, "positive": None} \
        == queued["params"]
    done = run_next(site.settings)
    assert done.id == queued["id"]
    assert done.state == "succeeded", done.error
    assert done.run_id is not None and done.result["run_ids"] == [done.run_id]
    assert done.result["runs"] == [{"id": done.run_id, "bundle": "crack@1",
                                    "state": "succeeded"}]
    assert done.result["dataset"] == "set@1"
    sent = {d["device"]: d["dataset_bytes_sent"] for d in done.result["devices"]}
    assert set(sent) == {"pi-a", "pi-b"} and all(n > 0 for n in sent.values())
    for name in ("pi-a", "pi-b"):
        progress = done.progress["devices"][name]
        assert progress | {"state": "done", "phase": "samples", "done": SAMPLES,
                           "total": SAMPLES, "threads": 2, "step": 2,
                           "steps": 2} == progress
    with session_scope(site.settings) as session:
        run = session.get(Run, done.run_id)
        assert run is not None and run.kind == "eval" and run.state == "succeeded"
        assert run.created_by == "operator"  # the token that submitted the job
        assert run.params["dataset"]["name"] == "set" and run.params["labels"] == LABELS
        results = session.exec(select(Result).where(Result.run_id == done.run_id)).all()
        assert sorted((r.device_name, r.threads) for r in results) == [
            ("pi-a", 1), ("pi-a", 2), ("pi-b", 1), ("pi-b", 2)]
        for result in results:
            metrics = result.detail["eval"]
            assert result.ok and metrics["n"] == SAMPLES
            assert sum(map(sum, metrics["confusion_matrix"])) == SAMPLES
            assert [s["label"] for s in result.detail["samples"]] == \
                [LABELS[i % 2] for i in range(SAMPLES)]
        assert session.exec(select(DeviceLease)).all() == []  # leases released
    api_run = site.call("viewer", "GET", f"/api/runs/{done.run_id}").json()
    assert all(r["eval"]["metrics"]["n"] == SAMPLES for r in api_run["results"])
    api_job = site.call("viewer", "GET", f"/api/jobs/{done.id}").json()
    assert api_job["run_id"] == done.run_id and api_job["state"] == "succeeded"
    page = site.call("viewer", "GET", f"/jobs/{done.id}").text
    assert f'href="/runs/{done.run_id}"' in page and "set@1" in page
    listed = site.call("viewer", "GET", "/jobs?kind=eval").text
    assert f'href="/jobs/{done.id}"' in listed


@pytest.mark.parametrize(("params", "targets", "message"), [
    ({"bundle": "crack", "dataset": "nope"}, "all", "no dataset nope"),
    ({"bundle": "crack", "dataset": "set@9"}, "all", "no dataset set@9 (versions: 1)"),
    ({"bundle": "crack"}, "all", "'dataset' must be a dataset reference"),
    ({"bundle": "ghost", "dataset": "set"}, "all", "no bundle ghost"),
    ({"bundle": "fc", "dataset": "set"}, "all", "fc@1 has no labels"),
    ({"bundle": "crack", "dataset": "set", "positive": "dog"}, "all", "--positive 'dog'"),
    ({"bundle": "crack", "dataset": "set", "threshold": 1.5}, "all",
     "'threshold' must be within [0, 1]"),
    ({"bundle": "crack", "dataset": "set", "threads": [0]}, "all",
     "eval job: 'threads' must be a list"),
    ({"bundle": "crack", "dataset": "set", "runs": 3}, "all", "unknown parameter(s) 'runs'"),
    ({"bundle": "crack", "dataset": "set"}, "pi-zzz", "pi-zzz"),
])
def test_bad_eval_requests_are_422_naming_the_problem_and_queue_nothing(
        site: Site, params: dict[str, Any], targets: str, message: str) -> None:
    before = len(all_jobs(site.settings))
    refused = site.call("operator", "POST", "/api/jobs",
                        json={"kind": "eval", "targets": targets, "params": params})
    assert refused.status_code == 422, refused.text
    assert message in refused.json()["detail"]
    assert len(all_jobs(site.settings)) == before


def test_viewers_cannot_submit_eval_jobs(site: Site) -> None:
    body = {"kind": "eval", "targets": "all", "params": {"bundle": "crack", "dataset": "set"}}
    before = len(all_jobs(site.settings))
    assert site.call("viewer", "POST", "/api/jobs", json=body).status_code == 403
    assert len(all_jobs(site.settings)) == before


def test_openapi_documents_eval_jobs(site: Site) -> None:
    spec = site.client.get("/openapi.json").json()
    post = spec["paths"]["/api/jobs"]["post"]
    assert "422" in post["responses"]
    job_in = spec["components"]["schemas"]["JobIn"]
    assert "eval" in job_in["properties"]["kind"]["description"]
    assert "dataset" in job_in["description"]
    assert any(e["kind"] == "eval" for e in job_in["examples"])


def _eval_form(html: str) -> str | None:
    start = html.find('<form method="post" action="/bundles/crack@1/eval"')
    return None if start < 0 else html[start:html.index("</form>", start)]


def test_bundle_page_evaluate_form_for_operators_only(site: Site) -> None:
    form = _eval_form(site.call("operator", "GET", "/bundles/crack").text)
    assert form is not None
    assert 'name="csrf_token"' in form and 'name="targets"' in form
    assert 'name="eval_threads" value="1"' in form and 'name="threshold"' in form
    assert '<option value="set@1" selected>' in form  # built --for crack: preselected
    viewer_page = site.call("viewer", "GET", "/bundles/crack").text
    assert _eval_form(viewer_page) is None and "need an operator token" in viewer_page
    before = len(all_jobs(site.settings))
    form_data = {"dataset": "set@1", "targets": "pi-a", "eval_threads": "1,2"}
    assert site.call("viewer", "POST", "/bundles/crack/eval",
                     data=form_data).status_code == 403
    assert len(all_jobs(site.settings)) == before


def test_evaluate_form_queues_a_job_and_bad_input_queues_nothing(site: Site) -> None:
    before = len(all_jobs(site.settings))
    bad = site.call("operator", "POST", "/bundles/crack/eval",
                    data={"dataset": "gone@1", "targets": "pi-a", "eval_threads": "1"})
    assert bad.status_code == 400 and "no dataset gone@1" in bad.text
    assert 'value="pi-a"' in (_eval_form(bad.text) or "")  # the form keeps what was typed
    assert len(all_jobs(site.settings)) == before
    queued = site.call("operator", "POST", "/bundles/crack/eval",
                       data={"dataset": "set@1", "targets": "pi-a", "eval_threads": "1,2",
                             "threshold": "0.7"})
    assert queued.status_code == 303
    job_id = int(queued.headers["location"].split("/jobs/")[1].split("?")[0])
    with session_scope(site.settings) as session:
        job = queue.get_job(session, job_id)
        assert (job.kind, job.state, job.targets, job.created_by) == \
            ("eval", "queued", "pi-a", "operator")
        assert job.params | {"bundle": "crack@1", "dataset": "set@1", "threads": [1, 2],
                             "threshold": 0.7} == job.params
    queue.cancel(site.settings, job_id, actor="tester")  # leave nothing queued for the other tests


def test_evaluate_form_schedules_an_eval_listed_with_the_benchmarks(site: Site) -> None:
    """"When: repeat, cron" on the bundle page creates an eval schedule (validated first, so a
    bad dataset or time stores nothing), listed on /benchmarks with its dataset."""
    from orchestrator.jobs import schedules

    form = _eval_form(site.call("operator", "GET", "/bundles/crack").text) or ""
    assert 'name="when" value="now" checked' in form and 'name="cron"' in form
    with session_scope(site.settings) as session:
        before = len(schedules.list_schedules(session))
    jobs_before = len(all_jobs(site.settings))
    base = {"dataset": "set@1", "targets": "pi-a", "eval_threads": "1", "threshold": "0.6"}
    for bad, message in (({"dataset": "gone@1"}, "no dataset gone@1"),
                         ({"cron": "every night"}, "cron"),
                         ({"when": "at", "at": "2001-01-01T03:00"}, "has passed")):
        refused = site.call("operator", "POST", "/bundles/crack/eval",
                            data=base | {"when": "cron", "cron": "0 3 * * *"} | bad)
        assert refused.status_code == 400 and message in refused.text, refused.text
        assert 'value="pi-a"' in (_eval_form(refused.text) or "")
    created = site.call("operator", "POST", "/bundles/crack/eval",
                        data=base | {"when": "cron", "cron": "30 2 * * *"})
    assert created.status_code == 303
    assert created.headers["location"] == "/benchmarks?notice=schedule_created"
    with session_scope(site.settings) as session:
        rows = [schedules.schedule_public(s) for s in schedules.list_schedules(session)]
    assert len(rows) == before + 1 and len(all_jobs(site.settings)) == jobs_before
    row = rows[-1]
    assert (row["kind"], row["cron"], row["targets"], row["created_by"]) == \
        ("eval", "30 2 * * *", "pi-a", "operator")
    assert row["params"] | {"bundle": "crack@1", "dataset": "set@1", "threshold": 0.6} == \
        row["params"]
    page = site.call("viewer", "GET", "/benchmarks?notice=schedule_created").text
    assert "It queues its job at its next time" in page
    assert "crack@1" in page and "on set@1" in page and "<code>30 2 * * *</code>" in page
    # Leave nothing scheduled for the other tests.
    schedules.delete(site.settings, row["id"], actor="tester")


def test_cancel_a_running_eval_stops_before_the_next_device_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = labelled_fleet(tmp_path)
    job = queue.submit(settings, "eval", {"bundle": "crack", "dataset": "set",
                                         "threads": [1, 2], "forks": 1}, "all", actor="tester")
    seen: list[tuple[str, Any]] = []  # (device, threads) of each thread count begun
    real = evals.evaluate

    def evaluate_cancelling_after_first_samples(*args: Any, **kwargs: Any) -> Any:
        on_event = args[9]

        def spy(device: str, event: dict[str, Any]) -> None:
            if event.get("phase") == "load" and event.get("done") == 0:
                seen.append((device, event.get("threads")))
            if event.get("phase") == "samples" and len(seen) == 1:
                queue.cancel(settings, job.id, actor="tester")  # type: ignore[arg-type]
            on_event(device, event)

        return real(*args[:9], spy, *args[10:], **kwargs)

    monkeypatch.setattr(evals, "evaluate", evaluate_cancelling_after_first_samples)
    done = run_next(settings)
    assert done.state == "cancelled" and done.cancel_requested
    # pi-a ran its first thread count and stopped before its second; pi-b stopped before its
    # dataset push: it never started a child.
    assert seen == [("pi-a", 1), ("pi-a", 2)]
    assert done.error is not None and "pi-a, pi-b" in done.error
    assert done.progress["devices"]["pi-b"]["state"] == "cancelled"
    assert {d["device"]: d["dataset_bytes_sent"] for d in done.result["devices"]}["pi-b"] == 0
    with session_scope(settings) as session:
        results = session.exec(select(Result).where(Result.run_id == done.run_id)).all()
        assert {r.device_name for r in results} == {"pi-a", "pi-b"}
        # pi-a's finished thread count is kept, scored, next to the row saying why it stopped.
        kept = [r for r in results if r.ok]
        assert [(r.device_name, r.threads) for r in kept] == [("pi-a", 1)]
        assert kept[0].detail["eval"]["accuracy"] is not None
        stopped = [r for r in results if not r.ok]
        assert {r.device_name for r in stopped} == {"pi-a", "pi-b"}
        assert all("was cancelled" in (r.error or "") and r.threads is None for r in stopped)
        assert "results of threads 1, finished before this, are kept" in next(
            r.error for r in stopped if r.device_name == "pi-a")
        assert session.exec(select(DeviceLease)).all() == []


def test_cli_eval_is_recorded_as_a_cli_job(cli: Cli, home: Path, tmp_path: Path) -> None:
    settings = labelled_fleet(tmp_path, names=("pi-a",), settings=Settings())
    assert settings.home == home
    report = cli("eval", "crack", "set", "all", "--threads", "1", "--json").json
    (job,) = [j for j in all_jobs(settings) if j.kind == "eval"]
    assert (job.origin, job.state, job.targets) == ("cli", "succeeded", "all")
    assert job.run_id == report["id"]
    assert job.params | {"bundle": "crack@1", "dataset": "set@1", "threads": [1]} == job.params
    assert job.progress["devices"]["pi-a"]["state"] == "done"
    assert job.progress["devices"]["pi-a"]["done"] == SAMPLES
    assert job.result["runs"][0]["id"] == report["id"]
    # The CLI's job validates like a server job with the same params would.
    with session_scope(settings) as session:
        from orchestrator.jobs.params import validate_params

        checked = validate_params(session, "eval", job.params, job.targets)
    assert checked == job.params


def test_a_scheduled_eval_fires_and_runs_to_a_scored_run(tmp_path: Path) -> None:
    """A nightly accuracy check: an eval schedule (validated when created, like a job) fires
    through the runner's tick and produces a scored eval run on every device."""
    settings = labelled_fleet(tmp_path)
    with pytest.raises(EdgeFleetError, match="no dataset nope"):
        schedules.create(settings, "eval", {"bundle": "crack", "dataset": "nope"}, "all",
                         cron="0 3 * * *", actor="tester")
    created = schedules.create(settings, "eval", {"bundle": "crack", "dataset": "set",
                                                  "threads": [1], "threshold": 0.6}, "all",
                               run_at=datetime.now(UTC) - timedelta(seconds=1), actor="tester")
    # The schedule keeps the names: each firing evaluates the newest versions at run time.
    assert created.params["bundle"] == "crack" and created.params["dataset"] == "set"
    runner = job_runner.JobRunner(settings, telemetry_interval_s=None)
    (queued,) = runner.tick()
    assert queued.kind == "eval" and queued.schedule_id == created.id
    done = runner.run_one()
    assert done is not None and done.id == queued.id and done.state == "succeeded", done.error
    with session_scope(settings) as session:
        evaluated = session.get(Run, done.run_id)
        assert evaluated is not None and evaluated.kind == "eval"
        assert (evaluated.bundle_name, evaluated.bundle_version) == ("crack", "1")
        assert evaluated.params["dataset"]["version"] == "1"
        results = session.exec(select(Result).where(Result.run_id == done.run_id)).all()
        assert sorted(r.device_name for r in results) == ["pi-a", "pi-b"]
        assert all(r.ok and r.threads == 1 and r.detail["eval"]["threshold"] == 0.6
                   for r in results)
    assert runner.tick() == []  # a one-off schedule fires once
