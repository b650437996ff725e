"""Change points (orchestrator/measure/regressions.py) and run kinds that never mix (issue 13,
items 1 and 2): the detector on its own, then the service through the CLI, the API, /trends, the
Compare page and /metrics, over a history of Run/Result rows written as the product writes
them (plain tables).

The history: ``kws`` (fp32) on pi-a, 1 thread: eight runs around 2.0 ms (noise this machine
measured, bench/changepoints_aa.json), then four runs of a slower version at 1.5x, with an eval
run of the same bundle (p50 3x) and a throttled benchmark (p50 4x) in between, neither of which
may count. Its INT8 variant (same bundle name, another precision) is steady at 1.4 ms on the
same device: its own series, no change point. pi-b has one steady series.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from orchestrator.access.auth import create_token
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Result, Run
from orchestrator.inventory.devices import sync_inventory
from orchestrator.inventory.reader import load_inventory
from orchestrator.measure import regressions, trends
from orchestrator.measure.regressions import DetectorSettings, change_indices
from tests.conftest import Cli
from tests.unit.web.test_pages import parse
from tests.webhook_receiver import Receiver
from web.app import create_app

FIXTURE = Path(__file__).resolve().parents[3] / "bench" / "changepoints_aa.json"
NOISE = [1.99, 2.04, 1.97, 2.02, 2.05, 1.96, 2.01, 2.03]  # ms: v1's eight runs
SLOWER = 1.5
T0 = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)


@dataclass
class History:
    settings: Settings
    v1_runs: list[int]
    v2_runs: list[int]  # the slower version's runs: the change point is at v2_runs[0]
    eval_run: int
    throttled_run: int


def _run(settings: Settings, version: str, at: datetime, results: list[dict[str, Any]],
         kind: str = "bench", bundle: str = "kws") -> int:
    with session_scope(settings) as session:
        run = Run(kind=kind, bundle_name=bundle, bundle_version=version,
                  bundle_digest=f"{version:0>64}"[:64], targets="all", created_by="test",
                  state="succeeded", created_at=at, finished_at=at)
        session.add(run)
        session.flush()
        for fields in results:
            session.add(Result(**({"run_id": run.id, "ok": True, "n": 30, "valid": True,
                                   "telemetry_status": "clean", "precision": "fp32",
                                   "threads": 1, "created_at": at} | fields)))
        assert run.id is not None
        return run.id


@pytest.fixture
def history(home: Path, tmp_path: Path) -> History:
    settings = Settings(home=home, database_url=None)
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"lab": {"hosts": {
        "pi-a": {"ansible_connection": "local"}, "pi-b": {"ansible_connection": "local"}}}}}}))
    with session_scope(settings) as session:
        sync_inventory(session, load_inventory(inventory))
    v1, v2 = [], []
    at = T0
    for n, p50 in enumerate(NOISE + [p * SLOWER for p in NOISE[:4]]):
        at += timedelta(days=1)
        version = "1" if n < len(NOISE) else "2"
        (v1 if version == "1" else v2).append(_run(settings, version, at, [
            {"device_name": "pi-a", "p50_ms": p50},
            {"device_name": "pi-b", "p50_ms": 5.0 + 0.01 * (n % 3)}]))
        _run(settings, f"{version}-int8", at + timedelta(minutes=5), [
            {"device_name": "pi-a", "p50_ms": 1.4 + 0.01 * (n % 2), "precision": "int8"}])
        if n == 3:  # an eval of v1 and a throttled benchmark, in the middle of the noise
            eval_run = _run(settings, "1", at + timedelta(hours=1),
                            [{"device_name": "pi-a", "p50_ms": 3 * p50}], kind="eval")
            throttled = _run(settings, "1", at + timedelta(hours=2), [
                {"device_name": "pi-a", "p50_ms": 4 * p50, "valid": False,
                 "telemetry_status": "throttled", "flags": ["soft_temp_limit"]}])
    return History(settings, v1, v2, eval_run, throttled)


# --- the detector -----------------------------------------------------------------------------


def test_a_step_is_found_where_it_starts_and_flat_noise_has_none() -> None:
    assert change_indices(NOISE + [p * SLOWER for p in NOISE[:4]])[0][0] == len(NOISE)
    (index, p), = change_indices(NOISE + [p * SLOWER for p in NOISE[:4]])
    assert p < regressions.DETECTOR.max_pvalue
    assert change_indices(NOISE * 3) == []
    assert change_indices(NOISE[:5]) == []  # too short for two segments of min_points


def test_a_regression_and_its_fix_are_two_change_points() -> None:
    """Slower for four runs, then fixed: both ends found (binary segmentation over the whole
    series misses such an up-and-down; the narrow window finds it)."""
    series = NOISE + [p * SLOWER for p in NOISE[:4]] + NOISE[::-1]
    assert [i for i, _ in change_indices(series)] == [len(NOISE), len(NOISE) + 4]
    again = series * 3  # as the demo run three times in one home: up, down, up, down, ...
    assert len(change_indices(again)) == 6


def test_one_odd_run_is_not_a_change_point() -> None:
    """A single slow run (a neighbour's compile job) is an outlier, not a new level; the
    newest level shows once ``min_points`` runs of it exist."""
    spike = NOISE + [2 * NOISE[0]] + NOISE
    assert change_indices(spike) == []
    step = NOISE + [p * SLOWER for p in NOISE[:4]]
    assert change_indices(step[:len(NOISE) + 2]) == []  # two slower runs: not yet
    assert [i for i, _ in change_indices(step[:len(NOISE) + 3])] == [len(NOISE)]
    loose = DetectorSettings(min_points=1)
    assert change_indices(spike, loose) == []  # Otava's own merge drops it too


def test_the_recorded_noise_replays() -> None:
    """The committed A/A recording is what bench/changepoints.py replays: 40+ runs per thread
    count, all of one bundle on one device, with the load they were measured under."""
    data = json.loads(FIXTURE.read_text())
    assert len(data["runs"]) >= 40
    assert {t for row in data["runs"] for t in row["p50_ms"]} == {"1", "2"}
    assert all(row["load_1m"] >= 0 for row in data["runs"])


# --- the service: kinds, validity, precision ----------------------------------------------------


def test_change_point_of_the_slower_version_with_its_shift(history: History) -> None:
    with session_scope(history.settings) as session:
        found = regressions.regressions(session)
    (change,) = found.change_points
    assert change.series == ("pi-a", "kws", "fp32", 1)
    assert (change.run_id, change.version) == (history.v2_runs[0], "2")
    assert (change.previous_run_id, change.previous_version) == (history.v1_runs[-1], "1")
    assert change.slower and change.ratio == pytest.approx(SLOWER, rel=0.02)
    assert change.ci_low is not None and change.ci_high is not None
    assert 1 < change.ci_low <= change.ratio <= change.ci_high
    assert change.p_value < regressions.DETECTOR.max_pvalue
    # the eval's and the throttled run's p50s are not points of the series
    assert (change.points_before, change.points_after) == (len(NOISE), 4)
    assert change.before_ms == pytest.approx(statistics.median(NOISE))
    # pi-a fp32, pi-a int8, pi-b fp32: the INT8 variant is a series of its own
    assert found.series == 3
    assert found.valid_points == 12 + 12 + 12
    runs = {p.run_id for p in found.points}
    assert history.eval_run not in runs and history.throttled_run in runs
    public = regressions.regressions_public(found)
    assert public["regressions"] == 1 and public["change_points"][0]["direction"] == "slower"


def test_a_slowdown_found_after_a_bench_alerts_once(history: History,
                                                   receiver: Receiver) -> None:
    """What jobs.execute.run_bench calls after every benchmark: the slower level goes to the
    webhook once, however often the detector runs again over the same history."""
    settings = Settings(home=history.settings.home, database_url=None,
                        webhook_url=receiver.url, webhook_secret="s3cret")
    (made,) = regressions.alert_regressions(settings, "kws", ["pi-a", "pi-b"])
    assert regressions.alert_regressions(settings, "kws") == []  # known already
    (request,) = receiver.wait_for(1)
    event = json.loads(request.body)
    assert event["event"] == "regression" and event["id"] == made
    assert event["data"]["series"] == {"device": "pi-a", "bundle": "kws", "precision": "fp32",
                                       "threads": 1}
    assert event["data"]["run_id"] == history.v2_runs[0]
    assert event["data"]["ratio"] == pytest.approx(SLOWER, rel=0.02)


def test_trends_series_are_benchmarks_of_one_precision(history: History) -> None:
    with session_scope(history.settings) as session:
        points = trends.trend_points(session)
        cells = trends.version_matrix(session, "kws")
        names = trends.bundle_names(session)
    assert {p.precision for p in points if p.device == "pi-a"} == {"fp32", "int8"}
    assert all(p.run_id != history.eval_run for p in points)
    v1 = [c for c in cells if c.device == "pi-a" and c.version == "1"]
    (cell,) = v1
    # the heatmap's v1 cell is the mean of the benchmarks only (the eval's 3x is not in it)
    assert cell.p50_ms == pytest.approx(sum(NOISE) / len(NOISE))
    assert cell.invalid_runs == 1 and names == ["kws"]
    _run(history.settings, "1", T0, [{"device_name": "pi-a", "p50_ms": 1.0, "threads": 8}],
         kind="eval", bundle="evalonly")
    with session_scope(history.settings) as session:
        assert trends.bundle_names(session) == ["kws"]  # the pages' filters: benchmarks only
        assert trends.thread_counts(session) == [1]


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_regressions_table_and_json(cli: Cli, history: History) -> None:
    out = cli("runs", "regressions").stdout
    assert "1 change point(s), 1 slower, in 3 series of 36 valid benchmark p50s" in out
    assert "kws fp32 on pi-a, 1 thread" in out and "1 -> 2" in out and "slower" in out
    assert "Apache Otava" in " ".join(out.split())
    data = cli("runs", "regressions", "--json").json
    (change,) = data["change_points"]
    assert change["run_id"] == history.v2_runs[0] and change["precision"] == "fp32"
    assert change["ratio"] == pytest.approx(SLOWER, rel=0.02)
    assert data["detector"]["min_points"] == regressions.DETECTOR.min_points
    narrowed = cli("runs", "regressions", "pi-b", "--json").json
    assert narrowed["change_points"] == [] and narrowed["series"] == 1
    other = cli("runs", "regressions", "--bundle", "nosuch", "--json").json
    assert other["series"] == 0
    assert "0 change point(s)" in cli("runs", "regressions", "pi-b").stdout


def test_cli_compare_refuses_runs_of_different_kinds(cli: Cli, history: History) -> None:
    refused = cli("runs", "compare", str(history.v1_runs[0]), str(history.eval_run), expect=2)
    said = " ".join((refused.stdout + refused.stderr).split())
    assert f"run {history.v1_runs[0]} is a benchmark run and run {history.eval_run} an eval " \
           "run: runs of different kinds are not compared" in said
    assert "slower" not in said
    assert "error" in cli("runs", "compare", str(history.eval_run), str(history.v1_runs[0]),
                          "--json", expect=2).json


# --- API and pages ------------------------------------------------------------------------------


@pytest.fixture
def client(history: History) -> TestClient:
    app = create_app(history.settings, run_jobs=False)
    _, secret = create_token(history.settings, "viewer", "viewer")
    return TestClient(app, base_url="http://localhost",
                      headers={"Authorization": f"Bearer {secret}"})


def test_api_regressions_and_compare_kinds(client: TestClient, history: History) -> None:
    body = client.get("/api/regressions").json()
    (change,) = body["change_points"]
    assert change["run_id"] == history.v2_runs[0] and change["direction"] == "slower"
    assert body["series"] == 3
    assert client.get("/api/regressions", params={"targets": "pi-b"}).json()["series"] == 1
    assert client.get("/api/regressions", params={"bundle": "kws", "threads": 2}
                      ).json()["series"] == 0
    mixed = client.get("/api/compare", params={"a": history.v1_runs[0], "b": history.eval_run})
    assert mixed.status_code == 400
    assert "runs of different kinds are not compared" in mixed.json()["detail"]
    same = client.get("/api/compare", params={"a": history.v1_runs[0], "b": history.v2_runs[0]})
    assert same.status_code == 200


def test_trends_page_shows_the_change_point_not_the_eval(client: TestClient,
                                                        history: History) -> None:
    page = parse(client.get("/trends").text)
    (row,) = page.tables["change-points"][1:]
    assert row["cells"][0] == "kws fp32 on pi-a, 1 thread"
    assert row["cells"][1] == f"#{history.v2_runs[0]}" and "verdict-slower" in row["class"]
    urls = [a["data-url"] for tag, a in page.tags if tag == "div" and a.get("data-lines")]
    charts = {c["title"]: c for c in (client.get(u).json() for u in urls)}
    chart = charts["kws on pi-a"]
    labels = {s["label"]: s for s in chart["series"]}
    assert {"fp32, 1 thread", "int8, 1 thread", "fp32, 1 thread, regression",
            "fp32, 1 thread, invalid"} == set(labels)
    marked = [v for v in labels["fp32, 1 thread, regression"]["values"] if v is not None]
    assert marked == [pytest.approx(NOISE[0] * SLOWER)]
    assert max(v for v in labels["fp32, 1 thread"]["values"] if v is not None) \
        < 3 * min(NOISE)  # the eval's p50 is not on the line
    assert chart["regressions"] == 1 and chart["invalid"] == 1
    quiet = parse(client.get("/trends?bundle=kws&threads=1").text)
    assert "change-points" in quiet.tables
    none = client.get("/trends?threads=2").text
    assert "No benchmark results match" in none


def test_compare_page_refuses_mixed_kinds_and_marks_evals(client: TestClient,
                                                         history: History) -> None:
    response = client.get(f"/runs/compare?a={history.v1_runs[0]}&b={history.eval_run}")
    assert response.status_code == 400
    assert "runs of different kinds are not compared" in response.text
    assert "comparison" not in parse(response.text).tables
    assert f"#{history.eval_run} kws@1 (eval)</option>" in response.text


def test_metrics_report_benchmark_p50s_only(client: TestClient, history: History) -> None:
    _run(history.settings, "2", T0 + timedelta(days=90),  # the newest run of all: an eval
         [{"device_name": "pi-a", "p50_ms": 99.0}], kind="eval")
    text = client.get("/metrics").text
    line = [x for x in text.splitlines() if x.startswith("edgefleet_benchmark_p50_milliseconds")
            and 'device="pi-a"' in x and 'bundle="kws@2"' in x]
    assert line and "99.0" not in line[0]
    assert float(line[0].rsplit(" ", 1)[1]) == pytest.approx(NOISE[3] * SLOWER)
