"""Admin pages: the audit log, and reloading the inventory (preview the diff, then apply).

Admin only, like the API's ``/api/audit`` and ``/api/inventory/sync``: the audit log names who
did what, and the inventory decides which machines the server will SSH into. The reload reads a
path *on the server*; the preview is a GET (it changes nothing), the apply a POST with CSRF that
carries the previewed file's digest (``orchestrator.inventory.sync``).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session

from orchestrator.access.audit import ACTIONS, event_public, events_window
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError
from orchestrator.inventory import sync
from orchestrator.inventory.devices import SyncReport
from web.deps import Admin, Csrf, SessionDep, SettingsDep
from web.pages.common import form_fields, render
from web.pages.paging import pager

router = APIRouter()

AUDIT_LIMIT = 100
"""Events per page of the audit log (``?limit=`` up to 1000)."""


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, principal: Admin, session: SessionDep,
               limit: int = Query(AUDIT_LIMIT, ge=1, le=1000),
               page: int = Query(1, ge=1, le=10**6), actor: str = "", action: str = "",
               target: str = "") -> HTMLResponse:
    """Newest first, a page at a time, filtered by actor, action (``token`` finds
    ``token.create``) and target (a substring). ``detail`` was scrubbed of secrets when
    recorded; shown as JSON text."""
    wanted = {"actor": actor.strip(), "action": action.strip(), "target": target.strip()}
    rows, matched = events_window(session, (page - 1) * limit, limit, **wanted)
    events = [event_public(e) for e in rows]
    for event in events:
        event["detail_text"] = json.dumps(event["detail"], sort_keys=True) \
            if event["detail"] else ""
    kept = {k: v for k, v in wanted.items() if v}
    if limit != AUDIT_LIMIT:
        kept["limit"] = str(limit)
    return render(request, "audit.html", {
        "section": "audit", "events": events, "limit": limit, "filter": wanted,
        "filtered": any(wanted.values()), "actions": sorted(ACTIONS),
        "pager": pager("/audit", kept, page, matched, limit, len(events))}, principal)


def _show(value: Any) -> str:
    """One side of a changed field, as the CLI's diff prints it (env values arrive redacted)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else repr(value)


def _diff_rows(report: SyncReport) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [{"device": n, "change": "added", "fields": []}
                                  for n in report.added]
    rows += [{"device": name, "change": "changed",
              "fields": [(key, _show(old), _show(new)) for key, (old, new) in diff.items()]}
             for name, diff in report.changed.items()]
    rows += [{"device": n, "change": "removed", "fields": []} for n in report.removed]
    return rows


def _inventory_page(request: Request, principal: Any, settings: Settings, session: Session,
                    path: str, error: str | None = None, status_code: int = 200
                    ) -> HTMLResponse:
    """The form, and the diff when ``path`` reads as an inventory (else its file:line error)."""
    context: dict[str, Any] = {"section": "fleet", "path": path, "preview": None, "rows": [],
                               "error": error}
    if path:
        try:
            preview = sync.preview(settings, session, path)
        except EdgeFleetError as exc:  # e.g. "inventory.yml:7: duplicate host ..."
            preview = None
            context["error"] = error or str(exc)
            status_code = status_code if error else 400
        if preview is not None:
            context |= {"preview": preview, "rows": _diff_rows(preview.report)}
    return render(request, "inventory.html", context, principal, status_code=status_code)


@router.get("/fleet/inventory", response_class=HTMLResponse)
def inventory_page(request: Request, principal: Admin, settings: SettingsDep,
                   session: SessionDep, path: str | None = None) -> HTMLResponse:
    """Without ``?path=`` the form starts at the default (``inventory.sync.default_path``) and
    previews nothing: reading a file is the admin's explicit choice."""
    if path is None:
        context = {"section": "fleet", "path": sync.default_path(session), "preview": None,
                   "rows": []}
        return render(request, "inventory.html", context, principal)
    return _inventory_page(request, principal, settings, session, path.strip())


@router.post("/fleet/inventory/apply", dependencies=[Csrf])
async def apply_inventory(request: Request, principal: Admin, settings: SettingsDep
                          ) -> Response:
    """``sync.apply`` owns the transaction (the devices and the audit event). When it refuses,
    the form comes back with a fresh preview, read in a session of its own after the attempt."""
    fields = await form_fields(request)
    path, digest = fields.get("path", "").strip(), fields.get("digest", "")
    try:
        sync.apply(settings, path, digest, principal.name)
    except EdgeFleetError as exc:
        status_code = 409 if isinstance(exc, sync.InventoryChanged) else 400
        with session_scope(settings) as session:
            return _inventory_page(request, principal, settings, session, path, str(exc),
                                   status_code=status_code)
    return RedirectResponse("/?notice=inventory_applied", status_code=303)
