"""Benchmarks page: one form to benchmark a bundle now, on a cron expression (UTC) or once at a
given time, and the schedules (benchmarks, and evaluations from a bundle's page, which shares
``schedule_or_submit``) with their delete buttons.

Everything goes through the services the API uses, which also audit: "now" is ``jobs.submit``
(through ``submit_job``), "cron"/"at" is ``schedules.create``. Both validate the params
and the targets before storing anything, so a bad form queues nothing and comes back with the
reason (400). The form fields mirror ``edgefleet bench``: shapes are ``NAME=1x512`` lines
(``--shape``), inputs ``NAME=VALUE`` lines (``--input``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session

from orchestrator.access.auth import role_allows
from orchestrator.artifacts.bundles import list_bundles
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError, NotFoundError
from orchestrator.jobs import schedules
from orchestrator.present.cliparse import parse_constants, parse_shapes
from web.deps import Csrf, Operator, SessionDep, SettingsDep, Viewer
from web.inputs import RowId
from web.pages.common import form_fields, not_found, render, submit_job

router = APIRouter()

WHEN = ("now", "cron", "at")
FORM_DEFAULTS = {"bundle": "", "baseline": "", "targets": "", "threads": "1,2,4",
                 "warmup": "5", "runs": "30", "min_seconds": "", "shapes": "", "inputs": "",
                 "when": "now", "cron": "0 3 * * *", "at": ""}


def _lines(text: str, what: str, example: str,
           parse: Callable[[list[str]], dict[str, Any]]) -> dict[str, Any]:
    """One ``NAME=...`` per line (blank lines and ``#`` comments skipped); an error names the
    field and line, as a user reading the form would count them."""
    out: dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            out.update(parse([line]))
        except EdgeFleetError:
            raise EdgeFleetError(f"{what}, line {number}: {line!r}: use {example}") from None
    return out


def _number(text: str, kind: type[int] | type[float]) -> int | float | str:
    """A form number; anything unparseable is passed on as typed, so the job validation names
    the bad value in its own words."""
    try:
        return kind(text)
    except ValueError:
        return text


def parse_at(text: str) -> datetime:
    """A ``datetime-local`` value (or ISO time) read as UTC unless it carries an offset, and
    not already past (``schedules.parse_future``)."""
    return schedules.parse_future(text)


def bench_request(form: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """(targets, bench job params) from the form; EdgeFleetError for what only the form can
    get wrong (shape and input lines). Empty optional fields take the job defaults."""
    params: dict[str, Any] = {"bundle": form["bundle"].strip(),
                              "threads": form["threads"].strip() or "1"}
    if form["baseline"].strip():
        params["baseline"] = form["baseline"].strip()
    for key, kind in (("warmup", int), ("runs", int), ("min_seconds", float)):
        if form[key].strip():
            params[key] = _number(form[key].strip(), kind)
    params["shapes"] = _lines(form["shapes"], "shapes", "NAME=1x512", parse_shapes)
    params["constants"] = _lines(form["inputs"], "inputs", "NAME=VALUE, e.g. sampling_rate=16000",
                                 parse_constants)
    return form["targets"].strip(), params


def shown_params(params: dict[str, Any]) -> list[tuple[str, str]]:
    """A schedule's parameters as the list shows them (``threads 1,2,4``, ``shapes
    audio=1x16000``): everything but the bundle, which has its own column, and empty values."""
    out = []
    for key, value in sorted(params.items()):
        if key == "bundle" or value is None or value == {} or value == []:
            continue
        if isinstance(value, list):
            text = ",".join(map(str, value))
        elif isinstance(value, dict):
            text = " ".join(f"{k}={'x'.join(map(str, v)) if isinstance(v, list) else v}"
                            for k, v in value.items())
        else:
            text = str(value)
        out.append((key, text))
    return out


def _context(session: Session, principal: Any, form: dict[str, str]) -> dict[str, Any]:
    refs = [f"{b.name}@{b.version}" for b in reversed(list_bundles(session))]
    rows = [schedules.schedule_public(s) | {"state": schedules.schedule_state(s),
                                            "shown_params": shown_params(s.params)}
            for s in schedules.list_schedules(session)]
    return {"section": "benchmarks", "bundles": refs, "schedules": rows, "form": form,
            "when_choices": WHEN,
            "can_operate": principal is not None and role_allows(principal.role, "operator")}


@router.get("/benchmarks", response_class=HTMLResponse)
def benchmarks_page(request: Request, principal: Viewer, session: SessionDep) -> HTMLResponse:
    return render(request, "benchmarks.html", _context(session, principal, dict(FORM_DEFAULTS)),
                  principal)


def schedule_or_submit(settings: Settings, principal: Any, kind: str, params: dict[str, Any],
                       targets: str, form: dict[str, str]) -> Response:
    """The "When" of a job form (partials/when.html): queue the job now (-> its page), or
    create a cron / one-off schedule (-> this page, which lists them all). Raises
    EdgeFleetError, with nothing stored, for a bad time or what the job validation refuses."""
    when = form.get("when", "now")
    when = when if when in WHEN else "now"
    if when == "now":
        job = submit_job(settings, kind, params, targets, principal)
        return RedirectResponse(f"/jobs/{job.id}?notice=queued", status_code=303)
    cron = form.get("cron", "").strip() if when == "cron" else None
    run_at = parse_at(form.get("at", "")) if when == "at" else None
    if when == "cron" and not cron:
        raise EdgeFleetError("give a cron expression (five fields, UTC), e.g. '0 3 * * *'")
    schedules.create(settings, kind, params, targets, actor=principal.name,
                     cron=cron, run_at=run_at)
    return RedirectResponse("/benchmarks?notice=schedule_created", status_code=303)


@router.post("/benchmarks", dependencies=[Csrf])
async def schedule_benchmark(request: Request, principal: Operator, settings: SettingsDep
                             ) -> Response:
    """Run now (-> the job's page), or create a cron / one-off schedule (-> this page). A
    refused form comes back with the reason; the page around it is read after the attempt, in
    a session of its own (the services own the write's transaction)."""
    fields = await form_fields(request)
    form = FORM_DEFAULTS | {key: fields[key] for key in FORM_DEFAULTS if key in fields}
    try:
        targets, params = bench_request(form)
        return schedule_or_submit(settings, principal, "bench", params, targets, form)
    except EdgeFleetError as exc:
        with session_scope(settings) as session:
            context = _context(session, principal, form)
        return render(request, "benchmarks.html", context | {"error": str(exc)}, principal,
                      status_code=400)


@router.post("/benchmarks/schedules/{schedule_id}/delete", dependencies=[Csrf])
def delete_schedule(request: Request, schedule_id: RowId, principal: Operator,
                    settings: SettingsDep) -> Response:
    try:
        schedules.delete(settings, schedule_id, actor=principal.name)
    except NotFoundError as exc:
        return not_found(request, str(exc), principal)
    return RedirectResponse("/benchmarks?notice=schedule_deleted", status_code=303)
