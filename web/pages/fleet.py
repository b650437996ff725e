"""Fleet and device pages: what each Pi runs and how it is doing (heat, power, throttling)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from orchestrator.core.errors import EdgeFleetError, NotFoundError
from orchestrator.fleet.telemetry import device_history
from orchestrator.inventory.devices import (
    all_devices,
    device_public,
    get_device,
    recent_deployments,
    select_devices,
)
from orchestrator.measure.reports import flag_notes, report_rows
from orchestrator.measure.runs import device_results
from orchestrator.present.output import human_bytes
from web.deps import SessionDep, Viewer
from web.pages.common import not_found, render
from web.pages.view import device_row, telemetry_series

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def fleet_page(request: Request, principal: Viewer, session: SessionDep,
               pattern: str = "") -> HTMLResponse:
    """Every device; ``?pattern=`` narrows it with the CLI's target patterns. A bad pattern is
    shown as the CLI would say it, above the whole fleet (so the names to fix it are there)."""
    pattern = pattern.strip()
    error = None
    devices = all_devices(session)
    shown = devices
    if pattern and devices:
        try:
            shown = select_devices(session, pattern)
        except EdgeFleetError as exc:
            error = f"pattern {pattern!r}: {exc}"
    rows = [device_row(device_public(d)) for d in shown]
    return render(request, "fleet.html", {
        "section": "fleet", "devices": rows, "pattern": pattern, "error": error,
        "total": len(devices), "filtered": bool(pattern) and error is None,
    }, principal, status_code=400 if error else 200)


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


@router.get("/devices/{name}", response_class=HTMLResponse)
def device_page(request: Request, name: str, principal: Viewer,
                session: SessionDep) -> HTMLResponse:
    try:
        device = get_device(session, name)
    except NotFoundError as exc:
        return not_found(request, str(exc), principal)
    public = device_public(device)
    facts = _facts(public, device.facts or {})
    telemetry = telemetry_series(device_history(session, name))
    deployments = recent_deployments(session, name)
    results = device_results(session, name)
    rows = [row | {"run_id": r["run_id"], "reasons": r.get("reasons") or []}
            for row, r in zip(report_rows(results), results, strict=True)]
    return render(request, "device.html", {
        "section": "fleet", "device": device_row(public), "facts": facts,
        "telemetry": telemetry, "deployments": deployments, "results": rows,
        "notes": flag_notes(results),
    }, principal)
