"""Changing a schedule from the Benchmarks page: pause / resume, run now, edit.

Each goes through one service in ``orchestrator.jobs.schedules`` (``set_paused``, ``run_now``,
``update_schedule``), which checks what it is given like ``create`` does and writes its audit
event in its own transaction; routes only read the form and redirect. The edit form shows the
schedule's targets, its time (cron or once at) and its parameters as JSON, the shape the API
takes, so every job kind's parameters can be edited and every error names the parameter.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError, NotFoundError
from orchestrator.jobs import schedules
from web.deps import Csrf, Operator, SessionDep, SettingsDep
from web.inputs import RowId
from web.pages.bench import parse_at
from web.pages.common import form_fields, not_found, render

router = APIRouter()


def _form(schedule: Any) -> dict[str, str]:
    run_at = schedule.run_at
    return {"targets": schedule.targets, "when": "cron" if schedule.cron else "at",
            "cron": schedule.cron or "0 3 * * *",
            "at": run_at.strftime("%Y-%m-%dT%H:%M") if run_at else "",
            "params": json.dumps(schedule.params, indent=2, sort_keys=True)}


@router.get("/benchmarks/schedules/{schedule_id}/edit", response_class=HTMLResponse)
def edit_schedule_page(request: Request, schedule_id: RowId, principal: Operator,
                       session: SessionDep) -> HTMLResponse:
    try:
        schedule = schedules.get_schedule(session, schedule_id)
    except NotFoundError as exc:
        return not_found(request, str(exc), principal)
    return render(request, "schedule_edit.html", {
        "section": "benchmarks", "schedule": schedules.schedule_public(schedule),
        "state": schedules.schedule_state(schedule), "form": _form(schedule)}, principal)


def _params(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EdgeFleetError(f"parameters: not JSON at line {exc.lineno}, column {exc.colno}: "
                             f"{exc.msg}") from None
    if not isinstance(value, dict):
        raise EdgeFleetError('parameters: give a JSON object, e.g. {"bundle": "first-crack@2", '
                             '"threads": [1, 2]}')
    return value


@router.post("/benchmarks/schedules/{schedule_id}/edit", dependencies=[Csrf],
             response_model=None)
async def edit_schedule(request: Request, schedule_id: RowId, principal: Operator,
                        settings: SettingsDep) -> Response | HTMLResponse:
    """Save, or the form again with the reason (400) and nothing changed."""
    fields = await form_fields(request)
    form = {key: fields.get(key, "") for key in ("targets", "when", "cron", "at", "params")}
    try:
        params = _params(form["params"])
        cron = run_at = None
        if form["when"] == "cron":
            cron = form["cron"].strip()
            if not cron:
                raise EdgeFleetError("give a cron expression (five fields, UTC), e.g. "
                                     "'0 3 * * *'")
        else:
            run_at = parse_at(form["at"])
        schedules.update_schedule(settings, schedule_id, params, form["targets"],
                                  actor=principal.name, cron=cron, run_at=run_at)
    except NotFoundError as exc:
        return not_found(request, str(exc), principal)
    except EdgeFleetError as exc:
        with session_scope(settings) as session:
            try:
                schedule = schedules.get_schedule(session, schedule_id)
            except NotFoundError as gone:
                return not_found(request, str(gone), principal)
            context = {"section": "benchmarks", "schedule": schedules.schedule_public(schedule),
                       "state": schedules.schedule_state(schedule), "form": form}
        return render(request, "schedule_edit.html", context | {"error": str(exc)}, principal,
                      status_code=400)
    return RedirectResponse("/benchmarks?notice=schedule_updated", status_code=303)


# After the edit route: ``{verb}`` would otherwise claim ``/edit``.
@router.post("/benchmarks/schedules/{schedule_id}/{verb}", dependencies=[Csrf],
             response_model=None)
def change_schedule(request: Request, schedule_id: RowId, verb: str, principal: Operator,
                    settings: SettingsDep) -> Response | HTMLResponse:
    """``pause``, ``resume`` (back to the list) or ``run`` (to the job's page)."""
    if verb not in ("pause", "resume", "run"):
        return not_found(request, f"no schedule action {verb!r}: choose pause, resume, run "
                                  "or edit", principal)
    try:
        if verb == "run":
            job = schedules.run_now(settings, schedule_id, actor=principal.name)
            return RedirectResponse(f"/jobs/{job.id}?notice=queued", status_code=303)
        schedules.set_paused(settings, schedule_id, verb == "pause", actor=principal.name)
    except NotFoundError as exc:
        return not_found(request, str(exc), principal)
    except EdgeFleetError as exc:
        return render(request, "error.html", {"title": f"Schedule {schedule_id} not changed",
                                               "error": str(exc)}, principal, status_code=400)
    notice = "schedule_paused" if verb == "pause" else "schedule_resumed"
    return RedirectResponse(f"/benchmarks?notice={notice}", status_code=303)
