"""The JSON API in-process: real SQLite through migrations, real local devices, real agent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml
from fastapi.testclient import TestClient

from orchestrator.artifacts.bundles import build_bundle
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.demo.model import make_demo_classifier
from orchestrator.demo.simulate import create_simulated_device
from orchestrator.fleet.agents import install_agents
from orchestrator.fleet.deploy import push
from orchestrator.inventory.devices import all_devices, sync_inventory
from orchestrator.inventory.reader import load_inventory
from orchestrator.measure.runs import BenchParams, bench
from web.app import create_app


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, TestClient]]:
    base = tmp_path_factory.mktemp("api")
    settings = Settings(home=base / "home")
    hosts = {}
    for name, temp in (("pi-cool", 50.0), ("pi-hot", 83.0)):
        sim = create_simulated_device(base / name / "hw", temp_c=temp,
                                      throttled=0x8 if temp > 80 else 0)
        hosts[name] = sim.local_host_vars(base / name / "root") | {
            "cooler": "none" if temp > 80 else "active"}
    inventory = base / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"pis": {"hosts": hosts}}}}))
    with session_scope(settings) as session:
        sync_inventory(session, load_inventory(inventory))
        devices = all_devices(session)
    install_agents(settings, devices)
    make_demo_classifier(base / "model" / "model.onnx")
    with session_scope(settings) as session:
        bundle = build_bundle(session, settings, base / "model", "first-crack",
                              input_shapes={"log_mel": [1, 1, 98, 40]}).bundle
    assert all(o.ok for o in push(settings, bundle, devices))
    bench(settings, [bundle], devices, BenchParams(threads=[1], warmup=1, runs=5), "pis")
    with TestClient(create_app(settings, run_jobs=False), base_url="http://localhost") as client:
        yield settings, client


def test_reads(world: tuple[Settings, TestClient]) -> None:
    _, client = world
    devices = client.get("/api/devices").json()
    assert {d["name"] for d in devices} == {"pi-cool", "pi-hot"}
    assert all("key_file" not in d and "env" not in d for d in devices)
    assert [d["name"] for d in client.get("/api/devices", params={"pattern": "pis:!pi-hot"})
            .json()] == ["pi-cool"]
    assert client.get("/api/devices", params={"pattern": "nope"}).status_code == 400
    assert client.get("/api/devices/pi-hot").json()["deployments"][0]["state"] == "active"
    assert client.get("/api/devices/ghost").status_code == 404
    assert client.get("/api/bundles/first-crack").json()["version"] == "1"
    run = client.get("/api/runs").json()[0]
    detail = client.get(f"/api/runs/{run['id']}").json()
    hot = next(r for r in detail["results"] if r["device"] == "pi-hot")
    assert hot["valid"] is False and "temp_over_80c" in hot["flags"]
    raw = client.get(f"/api/runs/{run['id']}", params={"raw": True}).json()
    assert len(raw["results"][0]["latencies_ms"]) == raw["results"][0]["latency_ms"]["n"]
    rows = client.get("/api/compare", params={"a": run["id"], "b": run["id"]}).json()
    assert {r["device"] for r in rows} == {"pi-cool", "pi-hot"}


def test_jobs_and_schedules(world: tuple[Settings, TestClient]) -> None:
    settings, client = world
    created = client.post("/api/jobs", json={"kind": "telemetry", "targets": "pis"})
    assert created.status_code == 201 and created.json()["state"] == "queued"
    job_id = created.json()["id"]
    assert client.get(f"/api/jobs/{job_id}").json()["kind"] == "telemetry"
    # A refused job is the request's content, not a missing URL: 422 naming it, nothing queued.
    bad = client.post("/api/jobs", json={"kind": "launch", "targets": "pis"})
    assert bad.status_code == 422 and "launch" in bad.json()["detail"]
    ghost = client.post("/api/jobs", json={"kind": "push", "targets": "pis",
                                           "params": {"bundle": "ghost"}})
    assert ghost.status_code == 422 and "no bundle ghost" in ghost.json()["detail"]
    assert [j["id"] for j in client.get("/api/jobs").json()] == [job_id]
    cancelled = client.post(f"/api/jobs/{job_id}/cancel").json()
    assert cancelled["state"] == "cancelled"
    schedule = client.post("/api/schedules", json={"kind": "telemetry", "targets": "all",
                                                   "cron": "*/5 * * * *"})
    assert schedule.status_code == 201
    assert any(s["id"] == schedule.json()["id"] for s in client.get("/api/schedules").json())
    assert client.post("/api/schedules", json={"kind": "telemetry",
                                               "cron": "every tuesday"}).status_code == 400
    assert client.delete(f"/api/schedules/{schedule.json()['id']}").status_code == 204
    sid = schedule.json()["id"]
    audited = [(e["action"], e["target"]) for e in client.get("/api/audit").json()]
    assert audited[:3] == [("schedule.delete", f"schedule:{sid}"),
                           ("schedule.create", f"schedule:{sid}"),
                           ("job.cancel", f"job:{job_id}")]
    assert all(action != "telemetry" for action, _ in audited)  # a telemetry job only reads


@pytest.mark.parametrize(("run_at", "message"), [
    ("NIL", "time 'NIL': use YYYY-MM-DD HH:MM (UTC)"),  # fromisoformat's ValueError was a 500
    (0, "give an ISO time as a string"),  # not 1970 through pydantic's Unix times
    ("0001-01-01T00:00:00+01:00", "is out of range"),  # OverflowError converting to UTC
])
def test_a_schedule_time_that_cannot_be_read_is_a_422_naming_it(
        world: tuple[Settings, TestClient], run_at: object, message: str) -> None:
    _, client = world
    response = client.post("/api/schedules", json={"kind": "telemetry", "run_at": run_at})
    assert response.status_code == 422
    assert message in response.json()["detail"][0]["msg"]
    ok = client.post("/api/schedules", json={"kind": "telemetry",
                                             "run_at": "2099-01-01T05:00:00+02:00"})
    assert ok.status_code == 201 and ok.json()["run_at"] == "2099-01-01T03:00:00+00:00"
    assert client.delete(f"/api/schedules/{ok.json()['id']}").status_code == 204


def test_ids_past_64_bits_and_text_that_is_not_unicode_are_422s(
        world: tuple[Settings, TestClient]) -> None:
    """The two inputs that made 500s (web/inputs.py); tests/faults/test_api_fuzz.py sweeps
    every route with them."""
    _, client = world
    for url in ("/api/runs/99999999999999999999", "/api/jobs/9223372036854775808",
                "/api/compare?a=1&b=99999999999999999999"):
        response = client.get(url)
        assert response.status_code == 422, url
        assert "less than or equal to 9223372036854775807" in response.text
    response = client.post("/api/jobs", content=b'{"kind": "telemetry", "targets": "\\ud800"}',
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("body.targets: not valid Unicode text")


def test_metrics_and_docs(world: tuple[Settings, TestClient]) -> None:
    _, client = world
    text = client.get("/metrics").text
    assert 'edgefleet_device_temperature_celsius{device="pi-hot"} 83.0' in text
    assert 'edgefleet_device_throttled_bits{device="pi-hot"} 8.0' in text
    assert 'edgefleet_benchmark_p50_milliseconds{bundle="first-crack@1",device="pi-cool"' in text
    # the hot device's result is invalid: no p50 gauge for it
    assert 'edgefleet_benchmark_p50_milliseconds{bundle="first-crack@1",device="pi-hot"' \
        not in text
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/devices", "/api/jobs", "/api/runs/{run_id}", "/api/compare"} <= set(paths)


def test_run_reads_load_only_the_blobs_they_use(world: tuple[Settings, TestClient]) -> None:
    """Summaries select no raw blob; raw reads and comparisons load what they use in the one
    query per run (never a query per result), and a comparison of finished runs only once
    per process (``comparisons``: a repeat reads no result)."""
    import sqlalchemy as sa

    from orchestrator.core.db import get_engine
    from orchestrator.measure import comparisons
    from orchestrator.measure.runs import run_results

    settings, client = world
    run_id = client.get("/api/runs").json()[0]["id"]
    statements: list[str] = []

    def spy(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    def results_selects(url: str, **params: object) -> list[str]:
        statements.clear()
        assert client.get(url, params=params).status_code == 200
        return [s for s in statements if "FROM result" in s]

    engine = get_engine(settings)
    sa.event.listen(engine, "before_cursor_execute", spy)
    try:
        (summary,) = results_selects(f"/api/runs/{run_id}")
        (raw,) = results_selects(f"/api/runs/{run_id}", raw=True)
        comparisons.clear_cache()  # earlier tests compared these runs already
        compared = results_selects("/api/compare", a=run_id, b=run_id)
        repeated = results_selects("/api/compare", a=run_id, b=run_id)
    finally:
        sa.event.remove(engine, "before_cursor_execute", spy)
    assert "latencies" not in summary and "telemetry_samples" not in summary
    assert "result.latencies" in raw and "result.telemetry_samples" in raw
    assert len(compared) == 2 and repeated == []
    assert all("result.latencies" in s and "telemetry_samples" not in s for s in compared)

    with session_scope(settings) as session:
        result = run_results(session, run_id)[0]
        with pytest.raises(sa.exc.InvalidRequestError):  # raiseload: an error, not a query
            _ = result.latencies
