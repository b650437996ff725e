"""What an operator can do from a device's page: Verify, Rollback, Read telemetry now.

Each button is a form (CSRF like every other) that queues the existing job kind for this one
device through ``jobs.queue.submit`` (its audit event included, as from the API or the CLI),
then shows the job's page, whose progress updates itself. No new service: the job kinds
``verify``, ``rollback`` and ``telemetry`` already run on the server's workers.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError, NotFoundError
from orchestrator.inventory.devices import get_device, select_devices
from web.deps import Csrf, Operator, SettingsDep
from web.pages.common import not_found, render, submit_job

router = APIRouter()

ACTIONS = {"verify": "verify", "rollback": "rollback", "telemetry": "telemetry"}


@router.post("/devices/{name}/{action}", dependencies=[Csrf], response_model=None)
def device_action(request: Request, name: str, action: str, principal: Operator,
                  settings: SettingsDep) -> Response | HTMLResponse:
    """Queue ``action`` for this device alone. The device's name is its target pattern, and
    it must select exactly this device (a name like ``pi-*`` would otherwise reach others)."""
    kind = ACTIONS.get(action)
    with session_scope(settings) as session:
        try:
            get_device(session, name)
            selected = [d.name for d in select_devices(session, name)]
        except NotFoundError as exc:
            return not_found(request, str(exc), principal)
        except EdgeFleetError:
            selected = []
    if kind is None:
        return not_found(request, f"no device action {action!r}: "
                                  f"choose one of {', '.join(ACTIONS)}", principal)
    if selected != [name]:
        return render(request, "error.html", {
            "title": "Cannot target this device alone",
            "error": f"device name {name!r} is also a target pattern selecting "
                     f"{len(selected)} devices; use the CLI with an exact pattern"},
            principal, status_code=400)
    try:
        job = submit_job(settings, kind, {}, name, principal)
    except EdgeFleetError as exc:
        return render(request, "error.html", {"title": f"{action} not queued",
                                               "error": str(exc)}, principal, status_code=400)
    return RedirectResponse(f"/jobs/{job.id}?notice=queued", status_code=303)
