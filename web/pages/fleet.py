"""Fleet and device pages: what each Pi runs and how it is doing (heat, power, throttling)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from orchestrator.core.db import MAX_ROW_ID
from orchestrator.core.errors import EdgeFleetError, NotFoundError
from orchestrator.core.utc import as_utc
from orchestrator.fleet.summary import fleet_summary
from orchestrator.fleet.telemetry import device_history
from orchestrator.inventory.devices import (
    DEVICE_SORTS,
    device_order,
    device_public,
    devices_window,
    get_device,
    recent_deployments,
)
from orchestrator.measure.reports import flag_notes, report_rows
from orchestrator.measure.runs import device_results
from orchestrator.present.output import human_bytes
from web.deps import SessionDep, Viewer
from web.pages.common import not_found, render
from web.pages.view import device_row, telemetry_series

router = APIRouter()


PAGE_SIZE = 100
"""Devices per Fleet page: a screenful an operator scans; at 1,000 devices rendering all of
them took most of the request (bench/fleet_scale.py measures the page's p95)."""


FLEET_COLUMNS: tuple[tuple[str, str | None], ...] = (
    ("device", "name"), ("status", "status"), ("Pi model", "model"), ("temp", "temp"),
    ("throttle state", "throttle"), ("active bundle", "bundle"), ("agent", "agent"),
    ("labels", None))
"""The Fleet table's headers and the DEVICE_SORTS key each sorts by (None: not sortable)."""


@router.get("/", response_class=HTMLResponse)
def fleet_page(request: Request, principal: Viewer, session: SessionDep,
               pattern: str = "",
               page: int = Query(1, ge=1, le=MAX_ROW_ID // PAGE_SIZE),
               sort: str = "name", order: str = "") -> HTMLResponse:
    """Devices PAGE_SIZE a page (``?page=N``), sorted across the whole fleet by ``?sort=`` a
    column (``&order=asc|desc``; headers are links that toggle it, no JavaScript needed);
    ``?pattern=`` narrows it with the CLI's target patterns. Every link and the 15 s refresh
    keep all three. A bad pattern is shown as the CLI would say it, above the whole fleet (so
    the names to fix it are there); a bad sort or order is said the same way (422) over the
    fleet by name."""
    pattern = pattern.strip()
    errors = []
    try:
        sort, order = device_order(sort, order)
    except EdgeFleetError as exc:
        errors.append(str(exc))
        sort, order = device_order()
    offset = (page - 1) * PAGE_SIZE
    try:
        shown = devices_window(session, pattern or None, offset, PAGE_SIZE, sort, order)
        keep = pattern
    except EdgeFleetError as exc:
        errors.insert(0, f"pattern {pattern!r}: {exc}")
        shown, keep = devices_window(session, None, offset, PAGE_SIZE, sort, order), ""
    rows = [device_row(device_public(d)) for d in shown.devices]
    pages = max(1, -(-shown.matched // PAGE_SIZE))
    template = "partials/fleet_table.html" \
        if request.headers.get("HX-Target") == "fleet-live" else "fleet.html"
    status = 400 if keep != pattern else 422 if errors else 200
    return render(request, template, {
        "summary": fleet_summary(session), "live_url": _page_href(keep, page, sort, order),
        "section": "fleet", "devices": rows, "pattern": pattern,
        "error": "; ".join(errors) or None, "total": shown.total, "matched": shown.matched,
        "filtered": bool(keep), "columns": _columns(keep, sort, order),
        "sort": sort, "order": order, "default_order": (sort, order) == device_order(),
        "clear_href": _page_href("", 1, sort, order),
        "page": page, "pages": pages, "first": offset + 1, "last": offset + len(rows),
        "prev_href": _page_href(keep, page - 1, sort, order) if page > 1 else None,
        "next_href": _page_href(keep, page + 1, sort, order) if page < pages else None,
    }, principal, status_code=status)


def _page_href(pattern: str, page: int, sort: str = "name", order: str = "asc") -> str:
    """The Fleet page's link to ``page``, keeping the filter the operator typed and the sort
    (left out when it is the default, by name, so plain links stay plain)."""
    query: dict[str, Any] = {"pattern": pattern} if pattern else {}
    if (sort, order) != device_order():
        query |= {"sort": sort, "order": order}
    return "/?" + urlencode(query | {"page": page})


def _columns(pattern: str, sort: str, order: str) -> list[dict[str, Any]]:
    """Each header's label, link and ``aria-sort``: the sorted column's link reverses its
    order, another column's asks for that column's first order; both go back to page 1 (the
    rows of page N change meaning with the order) and keep the pattern."""
    out = []
    for label, key in FLEET_COLUMNS:
        current = key == sort
        flip = "desc" if order == "asc" else "asc"
        following = flip if current else DEVICE_SORTS.get(key or "", "asc")
        out.append({"label": label, "key": key, "num": key == "temp",
                    "href": _page_href(pattern, 1, key, following) if key else None,
                    "aria_sort": ("ascending" if order == "asc" else "descending")
                    if current else None})
    return out


def _facts(public: dict[str, Any], facts: dict[str, Any]) -> list[tuple[str, Any]]:
    """(label, value) rows for the facts table; what an operator checks when a Pi misbehaves."""
    python = facts.get("python") or {}
    ram = public.get("ram_mb")
    return [
        ("address", f"{public['address']}:{public['port']} ({public['connection']})"),
        ("groups", ", ".join(public.get("groups") or []) or None),
        ("Pi model", public.get("pi_model")), ("arch", public.get("arch")),
        ("cores", public.get("cores")), ("RAM", f"{ram} MB" if ram else None),
        ("OS", facts.get("os")), ("kernel", facts.get("kernel")),
        ("Python", python.get("version") if isinstance(python, dict) else python),
        ("onnxruntime", public.get("onnxruntime")), ("numpy", facts.get("numpy")),
        ("disk free", human_bytes(facts["disk_free_bytes"])
         if facts.get("disk_free_bytes") is not None else None),
        ("agent", public.get("agent_version")),
        ("active bundle", public.get("active_bundle")),
        ("inventory", public.get("source")),
    ]


TELEMETRY_RANGES = {"1h": timedelta(hours=1), "24h": timedelta(hours=24),
                    "7d": timedelta(days=7)}
DEPLOYMENT_OPERATIONS = ("push", "rollback", "recover")
DEPLOYMENT_STATES = ("active", "unchanged", "failed", "interrupted", "pending", "reverted",
                     "repaired")


def _utc_input(text: str, what: str) -> datetime:
    """A datetime-local field's ``YYYY-MM-DDTHH:MM``, read as UTC like every time on these
    pages."""
    try:
        return as_utc(datetime.fromisoformat(text.strip()))
    except ValueError:
        raise EdgeFleetError(f"{what} {text!r} is not a time: use YYYY-MM-DD HH:MM (UTC)") \
            from None


def _time_range(span: str, since: str, until: str) -> tuple[datetime | None, datetime | None]:
    """The telemetry chart's window: the latest snapshots (""), the last 1 h / 24 h / 7 d, or
    ``custom`` between two UTC times (either end may be open)."""
    if span in TELEMETRY_RANGES:
        return datetime.now(UTC) - TELEMETRY_RANGES[span], None
    if span != "custom":
        return None, None
    start = _utc_input(since, "from") if since.strip() else None
    end = _utc_input(until, "to") if until.strip() else None
    if start and end and end <= start:
        raise EdgeFleetError(f"the time range ends ({end:%Y-%m-%d %H:%M}) before it starts "
                             f"({start:%Y-%m-%d %H:%M})")
    return start, end


@router.get("/devices/{name}", response_class=HTMLResponse)
def device_page(request: Request, name: str, principal: Viewer, session: SessionDep,
                range: str = "", since: str = "", until: str = "", operation: str = "",
                state: str = "", bundle: str = "") -> HTMLResponse:
    """Facts, telemetry over a chosen time range, the deployment history (filtered by
    operation, state, bundle) and results; operators get Verify, Rollback and "Read telemetry
    now" (web.pages.device_actions). A bad range is said on the page over the latest
    snapshots."""
    try:
        device = get_device(session, name)
    except NotFoundError as exc:
        return not_found(request, str(exc), principal)
    public = device_public(device)
    facts = _facts(public, device.facts or {})
    error = None
    try:
        start, end = _time_range(range, since, until)
    except EdgeFleetError as exc:
        error, start, end = str(exc), None, None
    telemetry = telemetry_series(device_history(session, name, since=start, until=end))
    wanted = {"operation": operation if operation in DEPLOYMENT_OPERATIONS else "",
              "state": state if state in DEPLOYMENT_STATES else "", "bundle": bundle.strip()}
    deployments = recent_deployments(session, name, **{k: v or None for k, v in wanted.items()})
    results = device_results(session, name)
    rows = [row | {"run_id": r["run_id"], "reasons": r.get("reasons") or []}
            for row, r in zip(report_rows(results), results, strict=True)]
    return render(request, "device.html", {
        "section": "fleet", "device": device_row(public), "facts": facts,
        "telemetry": telemetry, "deployments": deployments, "results": rows,
        "notes": flag_notes(results), "error": error,
        "range": range if range in (*TELEMETRY_RANGES, "custom") else "",
        "since": since, "until": until, "ranges": list(TELEMETRY_RANGES),
        "deploy_filter": wanted, "deploy_filtered": any(wanted.values()),
        "operations": DEPLOYMENT_OPERATIONS, "deploy_states": DEPLOYMENT_STATES,
    }, principal, status_code=400 if error else 200)
