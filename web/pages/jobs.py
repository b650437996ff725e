"""Job pages: the queue, one job with live per-device progress (htmx polls a partial), cancel.

Polling stops by itself: the progress partial replaces its own element (``outerHTML``), and a
terminal job renders it without ``hx-trigger``, so the browser polls exactly until the job
ends, with no script of ours involved.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session

from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError, NotFoundError
from orchestrator.present.progress_words import device_rows, rollout_of
from web.deps import Csrf, Operator, SessionDep, SettingsDep, Viewer
from web.inputs import RowId
from web.pages.common import not_found, render
from web.pages.view import TERMINAL_JOB_STATES

router = APIRouter()

JOBS_LIMIT = 100
ACTIVE_JOB_STATES = ("queued", "running")  # the list polls while one of its jobs is in these
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")


def job_view(job: Any) -> dict[str, Any]:
    from orchestrator.jobs.queue import job_public

    public = job_public(job)
    return public | {"terminal": public.get("state") in TERMINAL_JOB_STATES,
                     "devices": device_rows(public.get("progress"),
                                            public.get("kind") or "bench"),
                     "rollout": rollout_of(public)}


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, principal: Viewer, session: SessionDep, state: str = "",
              kind: str = "") -> HTMLResponse:
    from orchestrator.jobs.queue import JOB_KINDS, list_jobs

    rows = [job_view(job) for job in list_jobs(
        session, JOBS_LIMIT, state=state if state in JOB_STATES else None,
        kind=kind if kind in JOB_KINDS else None)]
    query = urlencode({k: v for k, v in (("state", state), ("kind", kind)) if v})
    context = {"section": "jobs", "jobs": rows, "state": state, "kind": kind,
               "states": JOB_STATES, "kinds": JOB_KINDS,
               "live": any(j["state"] in ACTIVE_JOB_STATES for j in rows),
               "live_url": "/jobs" + (f"?{query}" if query else "")}
    # htmx polling the list (while a job is queued or running) gets the table alone.
    if request.headers.get("HX-Target") == "jobs-live":
        return render(request, "partials/jobs_table.html", context, principal)
    return render(request, "jobs.html", context, principal)


def _load(session: Session, job_id: int) -> dict[str, Any]:
    from orchestrator.jobs.queue import get_job

    return job_view(get_job(session, job_id))


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: RowId, principal: Viewer,
             session: SessionDep) -> HTMLResponse:
    try:
        job = _load(session, job_id)
    except NotFoundError as exc:
        return not_found(request, str(exc), principal)
    return render(request, "job.html", {"section": "jobs", "job": job}, principal)


@router.get("/jobs/{job_id}/progress", response_class=HTMLResponse)
def job_progress(request: Request, job_id: RowId, principal: Viewer,
                 session: SessionDep) -> HTMLResponse:
    """The live part of the job page, for htmx to swap in every second. ``live``: the page
    was opened with a notice ("Job queued"), which this response also replaces out of band
    (``hx-swap-oob``) with what the job is doing now, so it does not say "queued" after the
    job has finished."""
    try:
        job = _load(session, job_id)
    except NotFoundError as exc:
        return not_found(request, str(exc), principal)
    return render(request, "partials/progress.html", {"job": job, "live": True}, principal)


@router.post("/jobs/{job_id}/cancel", dependencies=[Csrf])
def cancel_job(request: Request, job_id: RowId, principal: Operator,
               settings: SettingsDep) -> Response:
    """``queue.cancel`` owns the transaction (the request to stop and its audit event); a job
    that cannot be cancelled is shown as it is now, read after the attempt."""
    from orchestrator.jobs import queue

    try:
        queue.cancel(settings, job_id, actor=principal.name)
    except NotFoundError as exc:
        return not_found(request, str(exc), principal)
    except EdgeFleetError as exc:
        with session_scope(settings) as session:
            job = _load(session, job_id)
        return render(request, "job.html", {"section": "jobs", "job": job, "error": str(exc)},
                      principal, status_code=409)
    return RedirectResponse(f"/jobs/{job_id}?notice=cancel_requested", status_code=303)
