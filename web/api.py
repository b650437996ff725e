"""JSON API under /api. Thin: each route calls one service function, which also records the
audit event (routes pass who is acting); read routes get their DB session as a dependency
(``SessionDep``), write routes the settings (their service owns the transaction); both, and
the role aliases, come from web.deps, shared with the pages. OpenAPI at /docs. The services
build the response dicts; each route declares their shape (``response_model``, web/schemas.py)
so /docs and /openapi.json show every response's schema and the shape cannot drift
unnoticed."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field, field_validator

from orchestrator.access.audit import event_public, list_events
from orchestrator.artifacts.blobfetch import served_blob
from orchestrator.artifacts.bundles import bundle_public, get_bundle, list_bundles
from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError
from orchestrator.fleet import alerts as alert_service
from orchestrator.inventory import sync as inventory_service
from orchestrator.inventory.devices import (
    DEVICE_SORTS,
    device_public,
    devices_window,
    get_device,
    recent_deployments,
    select_devices,
)
from orchestrator.jobs import queue as job_service
from orchestrator.jobs import schedules as schedule_service
from orchestrator.jobs.schedules import parse_time
from orchestrator.measure import regressions as regression_service
from orchestrator.measure.comparisons import comparison
from orchestrator.measure.runs import get_run, list_runs, run_public, run_results
from web.deps import Admin, Csrf, Operator, SessionDep, SettingsDep, Viewer
from web.inputs import RowId, RowOffset, StrictJsonRoute
from web.schemas import (
    AlertPublic,
    AuditEventPublic,
    BundlePublic,
    CompareRow,
    DeviceDetail,
    DevicePublic,
    InventorySyncOut,
    JobPublic,
    RegressionsPublic,
    RunDetail,
    RunPublic,
    SchedulePublic,
)

# StrictJsonRoute: a JSON string that is not valid Unicode is a 422 for every route, before it
# can reach the DB or an error message (web/inputs.py).
router = APIRouter(prefix="/api", tags=["api"], route_class=StrictJsonRoute)

# What the services return; ``response_model`` on each route says (and checks) its shape.
Json = dict[str, Any]


class JobIn(BaseModel):
    """A job to queue. ``params`` by kind (unknown keys are refused):

    - push: ``bundle`` (N or N@V), ``forks``, ``timeout``; staged with ``rollout``:
      ``{"canary": PATTERN, "batch": "2" or "25%", "max_fail": percent 0-100 (0),
      "health_bench": false, "rollback_on_fail": false}`` (the job's ``progress.rollout`` /
      ``result.rollout`` hold its batches: devices, state ok / failed / not started)
    - bench: ``bundle``, ``threads`` ([1, 2, 4]), ``warmup``, ``runs``, ``min_seconds``,
      ``shapes``, ``constants``, ``providers``, ``graph_optimization``, ``baseline``,
      ``rounds`` (fresh processes per thread count: 1; 5 with a baseline), ``forks``,
      ``timeout``; with a baseline, the gate: ``max_regression`` (a
      fraction, 0.05 default: the job fails when the candidate is significantly slower by
      more) and ``include_invalid`` (compare throttled results too; false)
    - eval: ``bundle`` (already pushed to the targets), ``dataset`` (D or D@V),
      ``threads`` ([1] default), ``warmup`` (1), ``positive`` (a class label; binary default:
      class 1), ``threshold`` (0.5, within [0, 1]), ``forks``, ``timeout``
    - rollback: ``forks``, ``timeout`` (each device back to the version it ran before)
    - verify: ``forks``, ``timeout`` (re-hash the active bundle, re-run its golden outputs)
    - telemetry: ``forks``, ``timeout`` (targets default to all)
    """

    model_config = {"json_schema_extra": {"examples": [
        {"kind": "eval", "targets": "roastery",
         "params": {"bundle": "first-crack@3", "dataset": "roaster-eval@1", "threads": [1, 2],
                    "positive": "crack", "threshold": 0.5}},
        {"kind": "bench", "targets": "pi5-*",
         "params": {"bundle": "first-crack", "threads": [1, 2, 4]}},
    ]}}

    kind: str = Field(description="push | bench | eval | rollback | verify | telemetry")
    targets: str = Field("all", description="Target pattern, e.g. roastery:!pi5-b")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="The kind's parameters, see above")


class ScheduleIn(JobIn):
    cron: str | None = Field(None, description="Cron expression, e.g. '0 3 * * *'")
    run_at: datetime | None = Field(None, description="ISO 8601 time for a one-off run, e.g. "
                                    "2030-01-01T03:00:00Z (no offset: UTC)")

    @field_validator("run_at", mode="before")
    @classmethod
    def _iso_time(cls, value: Any) -> Any:
        """Read as the pages read it (``schedules.parse_time``), not as pydantic would: no
        numbers as Unix times (a ``0`` here is a mistake, not 1970). A bad time is a 422
        naming it, never an error in the route."""
        if value is None or isinstance(value, datetime):
            return value
        if not isinstance(value, str):
            raise ValueError(f"run_at {value!r}: give an ISO time as a string, e.g. "
                             "2030-01-01T03:00:00Z")
        try:
            return parse_time(value)
        except EdgeFleetError as exc:
            raise ValueError(str(exc)) from None


class InventorySyncIn(BaseModel):
    path: str
    dry_run: bool = False


DEVICES_LIMIT = 1000
"""Default and largest ``limit`` of GET /api/devices. The answer stays a plain JSON list (what
every client already parses) and a fleet of up to 1,000 devices still comes whole in one
request; beyond that, or with a smaller ``limit``, ``X-Total-Count`` and an RFC 8288 ``Link:
<...>; rel="next"`` header say there is more."""


@router.get("/devices", response_model=list[DevicePublic])
def devices(_: Viewer, session: SessionDep, request: Request, response: Response,
            pattern: str | None = None,
            limit: int = Query(DEVICES_LIMIT, ge=1, le=DEVICES_LIMIT),
            offset: RowOffset = 0,
            sort: str = Query("name", pattern=f"^({'|'.join(DEVICE_SORTS)})$",
                              description="the column to sort by, across all pages"),
            order: str | None = Query(None, pattern="^(asc|desc)$",
                                      description="default: the column's first order "
                                                  "(worst first for status, temp, throttle)"),
            ) -> list[Json]:
    """Devices in ``sort`` ``order`` (the Fleet page's columns; anything else is a 422), cut
    after sorting, so ``?sort=temp&limit=10`` is the ten hottest of the fleet."""
    found = devices_window(session, pattern, offset, limit, sort, order)
    response.headers["X-Total-Count"] = str(found.matched)
    if found.next_offset is not None:
        following = request.url.include_query_params(offset=found.next_offset, limit=limit)
        response.headers["Link"] = f'<{following}>; rel="next"'
    return [device_public(d) for d in found.devices]


@router.get("/devices/{name}", response_model=DeviceDetail)
def device(name: str, _: Viewer, session: SessionDep) -> Json:
    row = get_device(session, name)
    out = device_public(row) | {"facts": row.facts}
    deployments = recent_deployments(session, name)
    out["deployments"] = [d.model_dump(mode="json") for d in deployments]
    return out


@router.get("/bundles", response_model=list[BundlePublic])
def bundles(_: Viewer, session: SessionDep) -> list[Json]:
    return [bundle_public(b) for b in list_bundles(session)]


@router.get("/bundles/{ref}", response_model=BundlePublic)
def bundle(ref: str, _: Viewer, session: SessionDep) -> Json:
    return bundle_public(get_bundle(session, ref))


@router.get("/blobs/{sha256}", response_class=FileResponse, responses={
    200: {"content": {"application/octet-stream": {}},
          "description": "The blob's bytes (content-addressed: its name is its sha256)"},
    404: {"description": "No blob of that hash on this control plane"}})
def blob(sha256: Annotated[str, PathParam(pattern="^[0-9a-f]{64}$")],
         _: Operator, settings: SettingsDep) -> FileResponse:
    """A blob for a worker on another host (orchestrator.artifacts.blobfetch), streamed from
    this host's store. Operator tokens only: it serves the models themselves. The worker
    verifies the hash; no audit event (a read)."""
    path = served_blob(settings, sha256)
    if path is None:
        raise HTTPException(404, f"no blob {sha256} on this control plane")
    return FileResponse(path, media_type="application/octet-stream")


@router.get("/runs", response_model=list[RunPublic])
def runs(_: Viewer, session: SessionDep, limit: int = Query(50, ge=1, le=500)) -> list[Json]:
    return [run_public(r) for r in list_runs(session, limit)]


# exclude_unset: a bench run has no "agreement", a result no "eval" or "latencies_ms"
# unless asked for; absent keys stay absent rather than becoming nulls.
@router.get("/runs/{run_id}", response_model=RunDetail, response_model_exclude_unset=True)
def run(run_id: RowId, _: Viewer, session: SessionDep, raw: bool = False) -> Json:
    return run_public(get_run(session, run_id),
                      run_results(session, run_id, latencies=raw, samples=raw), raw=raw)


@router.get("/compare", response_model=list[CompareRow], responses={
    400: {"description": "The two runs are of different kinds (a benchmark and an eval): "
                         "not compared; ``detail`` says so"}})
def compare(a: RowId, b: RowId, _: Viewer, session: SessionDep,
            include_invalid: bool = False) -> list[Json]:
    """B against A per device and thread count; both runs of one kind."""
    return comparison(session, a, b, include_invalid)[1]


@router.get("/regressions", response_model=RegressionsPublic)
def regressions(_: Viewer, session: SessionDep, targets: str | None = None,
                bundle: str | None = None, threads: int | None = Query(None, ge=1, le=1024),
                ) -> Json:
    """Change points of the benchmark p50 series (device x bundle name x precision x
    threads; throttled or invalid results left out), newest first; optionally of the devices
    a target pattern selects, one bundle name, one thread count."""
    devices = [d.name for d in select_devices(session, targets)] if targets else None
    return regression_service.regressions_public(
        regression_service.regressions(session, bundle or None, threads, devices))


@router.get("/jobs", response_model=list[JobPublic])
def jobs(_: Viewer, session: SessionDep, state: str | None = None,
         kind: str | None = None) -> list[Json]:
    return [job_service.job_public(j)
            for j in job_service.list_jobs(session, 100, state=state, kind=kind)]


@router.get("/jobs/{job_id}", response_model=JobPublic)
def job(job_id: RowId, _: Viewer, session: SessionDep) -> Json:
    return job_service.job_public(job_service.get_job(session, job_id))


@router.post("/jobs", status_code=201, dependencies=[Csrf], response_model=JobPublic, responses={
    422: {"description": "The job was refused and nothing was queued; ``detail`` names the "
                         "problem (unknown kind or parameter, a bundle, dataset or target "
                         "pattern that does not exist, labels the model lacks)"}})
def submit_job(body: JobIn, request: Request, settings: SettingsDep,
               principal: Operator) -> Json:
    """Queue a push, bench, eval or telemetry job; workers start it at once. Its progress
    is ``GET /api/jobs/{id}``; a bench or eval job links its results as ``run_id``."""
    try:
        created = job_service.submit(settings, body.kind, body.params, body.targets,
                                     actor=principal.name)
    except EdgeFleetError as exc:  # the request's content, not a missing URL: 422 even for
        raise HTTPException(422, str(exc)) from None  # a bundle or dataset that is not there
    runner = getattr(request.app.state, "runner", None)
    if runner is not None:
        runner.wake()
    return job_service.job_public(created)


@router.post("/jobs/{job_id}/cancel", dependencies=[Csrf], response_model=JobPublic)
def cancel_job(job_id: RowId, settings: SettingsDep, principal: Operator) -> Json:
    return job_service.job_public(job_service.cancel(settings, job_id, actor=principal.name))


@router.get("/schedules", response_model=list[SchedulePublic])
def schedules(_: Viewer, session: SessionDep) -> list[Json]:
    return [schedule_service.schedule_public(s)
            for s in schedule_service.list_schedules(session)]


@router.post("/schedules", status_code=201, dependencies=[Csrf],
             response_model=SchedulePublic)
def create_schedule(body: ScheduleIn, settings: SettingsDep, principal: Operator) -> Json:
    created = schedule_service.create(settings, body.kind, body.params, body.targets,
                                      actor=principal.name, cron=body.cron, run_at=body.run_at)
    return schedule_service.schedule_public(created)


@router.delete("/schedules/{schedule_id}", status_code=204, dependencies=[Csrf])
def delete_schedule(schedule_id: RowId, settings: SettingsDep, principal: Operator) -> None:
    schedule_service.delete(settings, schedule_id, actor=principal.name)


@router.post("/inventory/sync", dependencies=[Csrf], response_model=InventorySyncOut)
def inventory_sync(body: InventorySyncIn, settings: SettingsDep, principal: Admin) -> Json:
    """Only files under EDGEFLEET_INVENTORY_DIR (default EDGEFLEET_HOME) or already synced by
    the CLI are read (``inventory.sync.readable_path``)."""
    if body.dry_run:
        with session_scope(settings) as session:
            report = inventory_service.preview(settings, session, body.path).report
    else:
        report = inventory_service.apply(settings, body.path, None, principal.name)
    return report.as_dict() | {"applied": not body.dry_run}


@router.get("/audit", response_model=list[AuditEventPublic])
def audit_log(_: Admin, session: SessionDep,
              limit: int = Query(200, ge=1, le=1000)) -> list[Json]:
    return [event_public(e) for e in list_events(session, limit)]


@router.get("/alerts", response_model=list[AlertPublic])
def alerts(session: SessionDep, _: Viewer, kind: str | None = None,
           limit: int = Query(100, ge=1, le=1000)) -> list[Json]:
    """Recent alerts, newest first, with their webhook delivery state."""
    return [alert_service.alert_public(a)
            for a in alert_service.list_alerts(session, limit, kind=kind)]
