"""No input may make the server answer 5xx: the JSON API fuzzed by schemathesis, plus two
deterministic sweeps over every route (pages included) for the inputs that did.

Why schemathesis and not more hand-written cases: it derives inputs from the OpenAPI schema
itself (boundary values past each declared limit, missing and extra fields, odd strings, wrong
types), so a route added tomorrow is fuzzed too without anyone writing a test for it.

Why the sweeps as well: random generation only sometimes draws an integer past 2^63 for an
unbounded ``int`` parameter (30 examples of ``/api/runs/{run_id}`` drew none), and it draws lone
surrogates rarely. Those two are exactly what produced the 500s (an OverflowError binding the
id in SQLite; a string that can be neither stored nor echoed as UTF-8), so every int path/query
parameter of every route, and every JSON body, gets them on every run.

The app is the real one (``create_app``, migrations, the real auth with an admin bearer token)
over an isolated EDGEFLEET_HOME seeded with a device, a bundle, a run with a result, a queued job
and a schedule, so ids and names sometimes resolve and requests get past the 404s. Nothing can
reach a device: ``run_jobs=False`` means submitted jobs are only queued, and the one device is a
local simulated one. Examples are bounded per operation and derandomized, so CI runs the same
cases every time.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastapi.routing
import pytest
import schemathesis
import yaml
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from orchestrator.access.auth import create_token
from orchestrator.artifacts.bundles import build_bundle
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Result, Run
from orchestrator.demo.model import make_demo_classifier
from orchestrator.demo.simulate import create_simulated_device
from orchestrator.inventory.devices import sync_inventory
from orchestrator.inventory.reader import load_inventory
from orchestrator.jobs import queue, schedules
from web.app import create_app

MAX_EXAMPLES = 30  # per operation; ~25 s for the 16 operations on a 2-core CI VM
HUGE = ("9223372036854775808", "99999999999999999999", "-9223372036854775809")


@dataclass
class Fuzzed:
    app: FastAPI
    headers: dict[str, str]
    schema: schemathesis.BaseSchema


def _seed(settings: Settings, base: Path) -> None:
    """One of everything a route can look up, so some generated ids and names resolve."""
    sim = create_simulated_device(base / "pi-fuzz" / "hw", temp_c=50.0)
    inventory = base / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"pis": {"hosts": {
        "pi-fuzz": sim.local_host_vars(base / "pi-fuzz" / "root")}}}}}))
    make_demo_classifier(base / "model" / "model.onnx")
    now = datetime.now(UTC)
    with session_scope(settings) as session:
        sync_inventory(session, load_inventory(inventory))
        bundle = build_bundle(session, settings, base / "model", "first-crack",
                              input_shapes={"log_mel": [1, 1, 98, 40]}).bundle
        run = Run(bundle_name=bundle.name, bundle_version=bundle.version,
                  bundle_digest=bundle.digest, targets="all", params={"threads": [1]},
                  created_by="fuzz", state="succeeded", created_at=now, finished_at=now)
        session.add(run)
        session.flush()
        assert run.id is not None
        session.add(Result(run_id=run.id, device_name="pi-fuzz", threads=1, ok=True,
                           simulated=True, n=30, p50_ms=1.0, valid=True,
                           telemetry_status="clean", precision="fp32", created_at=now))
    queue.submit(settings, "telemetry", {}, "all", actor="fuzz")
    schedules.create(settings, "telemetry", {}, "all", cron="0 3 * * *", actor="fuzz")


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    base = tmp_path_factory.mktemp("fuzz")
    settings_ = Settings(home=base / "home")
    _seed(settings_, base)
    _, secret = create_token(settings_, "fuzz-admin", "admin", actor="fuzz")
    app = create_app(settings_, run_jobs=False)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    yield Fuzzed(app, {"Authorization": f"Bearer {secret}"}, schema)
    # schemathesis (4.3x) starts the app's lifespan on its first call and keeps it until the
    # process exits; stop it with this module, so the rest of the session runs without this app.
    from schemathesis.python import asgi

    shutdown = getattr(asgi, "shutdown_lifespans", None)
    if shutdown is not None:
        shutdown()


@pytest.fixture(scope="module")
def api_schema(fuzzed: Fuzzed) -> schemathesis.BaseSchema:
    return fuzzed.schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_server_error(case: schemathesis.Case, fuzzed: Fuzzed) -> None:
    response = case.call(headers=fuzzed.headers)
    case.validate_response(response, checks=[not_a_server_error])


# --- the deterministic sweeps ------------------------------------------------------------------


def _accepts_int(annotation: Any) -> bool:
    if annotation is int:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _accepts_int(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_accepts_int(arg) for arg in typing.get_args(annotation))
    return False


def _plain_value(annotation: Any) -> str:
    """A harmless valid-looking value for a parameter that is not under test."""
    if _accepts_int(annotation):
        return "1"
    return "false" if annotation is bool else "x"


def _api_routes(app: FastAPI) -> list[tuple[str, set[str], APIRoute]]:
    """(full path format, methods, route) of every APIRoute, pages and hidden ones included.
    FastAPI >= 0.16x keeps included routers nested (``iter_route_contexts`` resolves their
    prefixes); older versions copied their routes into ``app.routes`` with full paths."""
    iter_contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    contexts = iter_contexts(app.routes) if iter_contexts else app.routes
    found = []
    for context in contexts:
        route = getattr(context, "original_route", context)
        if isinstance(route, APIRoute):
            found.append((context.path_format, set(context.methods or ()) - {"HEAD"}, route))
    return found


def _parameters(dependant: Any) -> tuple[list[Any], list[Any]]:
    """(path, query) parameters of a route's dependant and its sub-dependencies (FastAPI's own
    flattening helpers are internal and change between versions)."""
    path, query = list(dependant.path_params), list(dependant.query_params)
    for sub in dependant.dependencies:
        sub_path, sub_query = _parameters(sub)
        path += sub_path
        query += sub_query
    return path, query


def _int_parameter_requests(app: FastAPI) -> Iterator[tuple[str, str, dict[str, str], str]]:
    """(method, url, query, parameter) for every int path/query parameter of every route,
    with that parameter left as ``{}`` to fill in and every other parameter plainly valid."""
    for path_format, methods, route in _api_routes(app):
        path_params, query_params = _parameters(route.dependant)
        params = [(p, "path") for p in path_params] + [(p, "query") for p in query_params]
        for field, where in params:
            if not _accepts_int(field.field_info.annotation):
                continue
            path = {p.name: _plain_value(p.field_info.annotation) for p in path_params}
            query = {p.alias: _plain_value(p.field_info.annotation) for p in query_params
                     if p.field_info.is_required()}
            if where == "path":
                path[field.name] = "{}"
            else:
                query[field.alias] = "{}"
            url = path_format.format(**path)
            for method in sorted(methods):
                yield method, url, query, f"{where} {field.alias}"


def test_integers_past_64_bits_are_refused_by_every_route(fuzzed: Fuzzed) -> None:
    """Every int path or query parameter of every route, pages included: an integer no SQL
    INTEGER can hold is a 4xx, never an OverflowError from the DB driver."""
    client = TestClient(fuzzed.app)
    swept = []
    for method, url, query, parameter in _int_parameter_requests(fuzzed.app):
        for value in HUGE:
            response = client.request(method, url.replace("{}", value), headers=fuzzed.headers,
                                      params={k: v.replace("{}", value) for k, v in query.items()},
                                      follow_redirects=False)
            assert response.status_code < 500, (method, url, parameter, value, response.text)
        swept.append(f"{method} {url} {parameter}")
    # the API's and the pages' id parameters at least (a route rename must not empty the sweep)
    assert {"GET /api/runs/{} path run_id", "GET /api/compare query a",
            "POST /jobs/{}/cancel path job_id", "GET /runs/compare query b"} <= set(swept)


def test_lone_surrogates_in_json_bodies_are_refused_by_every_route(fuzzed: Fuzzed) -> None:
    """Every route that takes a JSON body: a string that is not valid Unicode (JSON allows the
    escape ``\\ud800`` alone) anywhere in it is a 422 saying so, before it can reach the DB or
    an error message (both UTF-8, so either would fail with a 500)."""
    client = TestClient(fuzzed.app)
    headers = fuzzed.headers | {"Content-Type": "application/json"}
    swept = []
    for path_format, methods, route in _api_routes(fuzzed.app):
        if route.body_field is None:
            continue
        url = path_format.format(**{p.name: "1" for p in _parameters(route.dependant)[0]})
        for body in ('{"kind": "\\ud800", "path": "\\udfff"}',
                     '{"params": {"bundle": ["ok", "\\ud83d"]}}', '{"\\udc00": 1}'):
            for method in methods:
                response = client.request(method, url, content=body.encode(), headers=headers)
                assert response.status_code == 422, (method, url, body, response.text)
                assert "not valid Unicode" in response.json()["detail"], response.text
        swept.append(path_format)
    assert {"/api/jobs", "/api/schedules", "/api/inventory/sync"} <= set(swept)


@pytest.mark.parametrize("value", [*HUGE, "²", "", "x"])
def test_numbers_typed_into_page_forms_and_filters_never_fail(fuzzed: Fuzzed, value: str) -> None:
    """The pages read some numbers from free text (``?threads=`` filters, form fields):
    ``isdigit`` accepted "²", which ``int`` refuses, and a 20-digit number reached the query.
    A filter that is not a number SQL can hold filters nothing; a form number is the form's
    error (400), never a 500."""
    client = TestClient(fuzzed.app)
    for url in (f"/trends?bundle=first-crack&threads={value}",
                f"/runs/compare?bundle=first-crack&threads={value}"):
        assert client.get(url, headers=fuzzed.headers).status_code == 200, url
    for form in (f"targets=nope&forks={value}", f"targets=nope&runs={value}&warmup={value}"):
        kind = "push" if "forks" in form else "bench"
        response = client.post(f"/bundles/first-crack/{kind}", content=form.encode(),
                               headers=fuzzed.headers | {
                                   "Content-Type": "application/x-www-form-urlencoded"},
                               follow_redirects=False)
        assert response.status_code == 400, (kind, form, response.text[:300])
