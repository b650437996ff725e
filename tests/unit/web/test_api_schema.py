"""The API's declared response models (web/schemas.py): every /api operation documents its
success response in /openapi.json, real responses validate against their model with no key
the model leaves undeclared, and declaring the models changed no response byte (each response
is exactly the service dict, rendered as before)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel, TypeAdapter
from sqlmodel import select

from orchestrator.access.audit import event_public, list_events
from orchestrator.access.auth import create_token
from orchestrator.artifacts.bundles import build_bundle, bundle_public, list_bundles
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Deployment, Result, Run
from orchestrator.demo.model import make_demo_classifier
from orchestrator.demo.simulate import create_simulated_device
from orchestrator.inventory.devices import all_devices, device_public, get_device, sync_inventory
from orchestrator.inventory.reader import load_inventory
from orchestrator.jobs import queue, schedules
from orchestrator.measure.regressions import regressions, regressions_public
from orchestrator.measure.runs import get_run, list_runs, pack_floats, run_public, run_results
from web import api
from web.app import create_app
from web.schemas import DeploymentRow


def _rendered(content: Any) -> bytes:
    """A dict as the API rendered it before it declared models (starlette's JSONResponse)."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None,
                      separators=(",", ":")).encode()


def _seed(settings: Settings, base: Path) -> dict[str, int]:
    """A device with a deployment, a bundle, a bench run and an eval run (one with raw
    latencies, one with an ``eval`` block), six more bench runs whose p50 steps up (a change
    point), a queued job, a schedule and audit events."""
    sim = create_simulated_device(base / "pi-a" / "hw", temp_c=50.0)
    inventory = base / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"pis": {"hosts": {
        "pi-a": sim.local_host_vars(base / "pi-a" / "root")}}}}}))
    make_demo_classifier(base / "model" / "model.onnx")
    now = datetime.now(UTC)
    ids = {}
    with session_scope(settings) as session:
        sync_inventory(session, load_inventory(inventory))
        # integral numbers where floats are usual: a response must keep them as they are
        get_device(session, "pi-a").facts = {"cores": 4, "ram_mb": 8000, "sensors": {
            "temp_c": 50, "throttled_hex": "0x0", "throttle_flags": {}}}
        bundle = build_bundle(session, settings, base / "model", "first-crack",
                              input_shapes={"log_mel": [1, 1, 98, 40]}).bundle
        session.add(Deployment(device_name="pi-a", bundle_name=bundle.name,
                               bundle_version=bundle.version, bundle_digest=bundle.digest,
                               state="active", bytes_sent=1234, duration_s=2,
                               finished_at=now))
        for kind in ("bench", "eval"):
            run = Run(kind=kind, bundle_name=bundle.name, bundle_version=bundle.version,
                      bundle_digest=bundle.digest, targets="all", params={"threads": [1]},
                      created_by="test", state="succeeded", created_at=now, finished_at=now)
            session.add(run)
            session.flush()
            assert run.id is not None
            ids[kind] = run.id
            detail = {"eval": {"accuracy": 1.0}, "samples": []} if kind == "eval" else {}
            session.add(Result(run_id=run.id, device_name="pi-a", threads=1, ok=True,
                               simulated=True, n=3, p50_ms=1.0, mean_ms=1, valid=True,
                               telemetry_status="clean", precision="fp32", detail=detail,
                               latencies=pack_floats([1.0, 1.5, 2.0]), created_at=now))
        for n, p50 in enumerate([1.02, 0.98, 1.01, 1.52, 1.49, 1.51]):
            at = now + timedelta(minutes=n + 1)
            run = Run(bundle_name=bundle.name, bundle_version=bundle.version,
                      bundle_digest=bundle.digest, targets="all", created_by="test",
                      state="succeeded", created_at=at, finished_at=at)
            session.add(run)
            session.flush()
            session.add(Result(run_id=run.id, device_name="pi-a", threads=1, ok=True, n=3,
                               p50_ms=p50, valid=True, precision="fp32", created_at=at))
    queue.submit(settings, "telemetry", {}, "all", actor="test")
    schedules.create(settings, "telemetry", {}, "all", cron="0 3 * * *", actor="test")
    return ids


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory,
          ) -> Iterator[tuple[Settings, TestClient, dict[str, int]]]:
    base = tmp_path_factory.mktemp("schema")
    settings = Settings(home=base / "home")
    ids = _seed(settings, base)
    _, secret = create_token(settings, "schema-admin", "admin", actor="test")
    with TestClient(create_app(settings, run_jobs=False), base_url="http://localhost",
                    headers={"Authorization": f"Bearer {secret}"}) as client:
        yield settings, client, ids


def test_every_api_operation_documents_its_success_response(
        world: tuple[Settings, TestClient, dict[str, int]]) -> None:
    _, client, _ = world
    paths = client.get("/openapi.json").json()["paths"]
    operations = [(path, method, op) for path, ops in paths.items() if path.startswith("/api/")
                  for method, op in ops.items()]
    assert len(operations) >= 16
    for path, method, op in operations:
        (status,) = [s for s in op["responses"] if s.startswith("2")]
        if status == "204":  # no content, so no schema
            assert "content" not in op["responses"][status], (method, path)
            continue
        if path == "/api/blobs/{sha256}":  # the bytes of a blob, not JSON
            assert list(op["responses"][status]["content"]) == ["application/octet-stream"]
            continue
        schema = op["responses"][status]["content"]["application/json"]["schema"]
        # a named model, or a list of one: never the untyped `{}` / `object` of a bare dict
        assert "$ref" in schema or "$ref" in schema.get("items", {}), (method, path, schema)


def _declared(path: str, method: str) -> Any:
    """The model a route declares (the router's routes carry the /api prefix)."""
    (route,) = [r for r in api.router.routes if isinstance(r, APIRoute) and r.path == path
                and method.upper() in r.methods]
    return route.response_model


def _undeclared_keys(value: Any, where: str = "") -> list[str]:
    """Keys a response carried that its model does not declare (they pass through as
    extras): each is a schema that drifted from the service dict."""
    if isinstance(value, BaseModel):
        found = [f"{where}.{key}" for key in value.model_extra or {}]
        for name in type(value).model_fields:
            found += _undeclared_keys(getattr(value, name), f"{where}.{name}")
        return found
    if isinstance(value, list):
        return [key for item in value for key in _undeclared_keys(item, f"{where}[]")]
    return []


def test_responses_validate_against_their_models(
        world: tuple[Settings, TestClient, dict[str, int]]) -> None:
    _, client, ids = world
    urls = {"/api/devices": "/api/devices", "/api/devices/{name}": "/api/devices/pi-a",
            "/api/bundles": "/api/bundles", "/api/bundles/{ref}": "/api/bundles/first-crack",
            "/api/runs": "/api/runs", "/api/runs/{run_id}": f"/api/runs/{ids['eval']}?raw=true",
            "/api/compare": f"/api/compare?a={ids['bench']}&b={ids['bench']}",
            "/api/regressions": "/api/regressions",
            "/api/jobs": "/api/jobs", "/api/jobs/{job_id}": "/api/jobs/1",
            "/api/schedules": "/api/schedules", "/api/audit": "/api/audit"}
    for path, url in urls.items():
        response = client.get(url)
        assert response.status_code == 200, (url, response.text)
        body = response.json()
        assert body, url  # the seed makes every listing non-empty
        validated = TypeAdapter(_declared(path, "get")).validate_python(body)
        assert _undeclared_keys(validated) == [], url


def test_responses_are_the_service_dicts_byte_for_byte(
        world: tuple[Settings, TestClient, dict[str, int]]) -> None:
    """Models may reorder, coerce (1 -> 1.0), drop or add (null) keys; none of that
    happens: each body is the service's dict rendered exactly as before."""
    settings, client, ids = world
    with session_scope(settings) as session:
        expected = {
            "/api/devices": [device_public(d) for d in all_devices(session)],
            "/api/bundles": [bundle_public(b) for b in list_bundles(session)],
            "/api/runs": [run_public(r) for r in list_runs(session)],
            "/api/jobs/1": queue.job_public(queue.get_job(session, 1)),
            "/api/schedules": [schedules.schedule_public(s)
                               for s in schedules.list_schedules(session)],
            "/api/audit": [event_public(e) for e in list_events(session, 200)],
        }
        found = regressions_public(regressions(session))
        assert found["change_points"]  # the seed's step is found
        device = get_device(session, "pi-a")
        detail = device_public(device) | {"facts": device.facts, "deployments": [
            d.model_dump(mode="json") for d in session.exec(select(Deployment)).all()]}
        for run_id in ids.values():
            run = get_run(session, run_id)
            expected[f"/api/runs/{run_id}"] = run_public(run, run_results(session, run_id))
            expected[f"/api/runs/{run_id}?raw=true"] = run_public(
                run, run_results(session, run_id, latencies=True, samples=True), raw=True)
    bench = expected[f"/api/runs/{ids['bench']}"]
    assert "agreement" not in bench and "eval" not in bench["results"][0]
    assert "latencies_ms" not in bench["results"][0]
    assert "eval" in expected[f"/api/runs/{ids['eval']}"]["results"][0]
    for url, content in expected.items():
        assert client.get(url).content == _rendered(content), url
    # Change points carry p-values like 7.85e-08, which pydantic writes as 7.85e-8: the same
    # number, so this one is compared as JSON (values and key order), not byte for byte.
    got_found = client.get("/api/regressions").json()
    assert got_found == found and list(got_found["change_points"][0]) == \
        list(found["change_points"][0])
    # A loaded row's model_dump follows the order SQLAlchemy set its attributes in, which
    # varies between processes (hash randomization): before the model, a deployment's keys
    # came in no fixed order; now they come in the table's column order. Same keys and values.
    got = client.get("/api/devices/pi-a")
    assert got.json() == detail and list(got.json()) == list(detail)
    assert list(got.json()["deployments"][0]) == list(DeploymentRow.model_fields)


def test_write_responses_validate_against_their_models(
        world: tuple[Settings, TestClient, dict[str, int]]) -> None:
    _, client, _ = world
    created = client.post("/api/jobs", json={"kind": "telemetry", "targets": "pis"})
    schedule = client.post("/api/schedules", json={"kind": "telemetry", "targets": "pis",
                                                   "cron": "0 4 * * *"})
    cancelled = client.post(f"/api/jobs/{created.json()['id']}/cancel")
    for path, response in (("/api/jobs", created), ("/api/schedules", schedule),
                           ("/api/jobs/{job_id}/cancel", cancelled)):
        assert response.status_code in (200, 201), (path, response.text)
        validated = TypeAdapter(_declared(path, "post")).validate_python(response.json())
        assert _undeclared_keys(validated) == [], path
