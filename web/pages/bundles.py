"""Bundle pages: versions, files and signature, and the push, benchmark and evaluate forms
(each queues a job)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session

from orchestrator.artifacts.bundles import bundle_public, get_bundle, list_bundles
from orchestrator.artifacts.datasets import list_datasets, manifest_of_dataset
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError
from orchestrator.inventory.devices import all_devices
from orchestrator.measure.reports import flag_notes, report_rows
from orchestrator.measure.runlist import bundle_results
from web.deps import Csrf, Operator, SessionDep, SettingsDep, Viewer
from web.pages.bench import schedule_or_submit
from web.pages.common import form_fields, not_found, render

router = APIRouter()


def _running(devices: list[Any]) -> dict[str, list[str]]:
    """digest -> names of the devices whose active bundle it is."""
    out: dict[str, list[str]] = {}
    for device in devices:
        if device.active_digest:
            out.setdefault(device.active_digest, []).append(device.name)
    return out


@router.get("/bundles", response_class=HTMLResponse)
def bundles_page(request: Request, principal: Viewer, session: SessionDep) -> HTMLResponse:
    running = _running(all_devices(session))
    groups: dict[str, list[dict[str, Any]]] = {}
    for bundle in list_bundles(session):
        groups.setdefault(bundle.name, []).append({
            "version": bundle.version, "digest": bundle.digest,
            "size_bytes": bundle.size_bytes, "precision": bundle.precision,
            "created_at": bundle.created_at, "devices": running.get(bundle.digest, [])})
    for versions in groups.values():
        versions.reverse()  # newest first
    return render(request, "bundles.html", {"section": "bundles", "groups": groups}, principal)


def _datasets(session: Session, bundle_name: str) -> tuple[list[dict[str, Any]], str]:
    """The eval form's dataset choices (newest first) and the one preselected: the newest
    built ``--for`` this bundle's name, else the newest of all."""
    rows = sorted(list_datasets(session), key=lambda d: d.created_at, reverse=True)
    choices = [{"ref": f"{d.name}@{d.version}", "samples": d.samples, "format": d.format,
                "labels": list(d.labels),
                "for": (manifest_of_dataset(d).get("for") or {}).get("name")} for d in rows]
    chosen = next((c["ref"] for c in choices if c["for"] == bundle_name),
                  choices[0]["ref"] if choices else "")
    return choices, chosen


def _bundle_context(settings: Settings, session: Session, ref: str) -> dict[str, Any]:
    """Everything bundle.html shows; raises NotFoundError / BundleError for a bad ref."""
    bundle = get_bundle(session, ref)
    public = bundle_public(bundle)
    siblings = [b.version for b in list_bundles(session) if b.name == bundle.name]
    running = _running(all_devices(session)).get(bundle.digest, [])
    datasets, dataset = _datasets(session, bundle.name)
    return {"section": "bundles", "bundle": public, "versions": siblings[::-1],
            "running": running, "ref": f"{public['name']}@{public['version']}",
            "datasets": datasets,
            "form": {"targets": "", "forks": str(settings.forks), "threads": "1,2,4",
                     "runs": "30", "warmup": "5", "dataset": dataset, "eval_threads": "1",
                     "threshold": "0.5", "when": "now", "cron": "0 3 * * *", "at": ""}}


@router.get("/bundles/{ref}", response_class=HTMLResponse)
def bundle_page(request: Request, ref: str, principal: Viewer, settings: SettingsDep,
                session: SessionDep) -> HTMLResponse:
    """``/bundles/NAME@VERSION``, or ``/bundles/NAME`` for the latest version."""
    try:
        context = _bundle_context(settings, session, ref)
    except EdgeFleetError as exc:
        return not_found(request, str(exc), principal)
    return render(request, "bundle.html", context | _history(session, context["bundle"]["name"]),
                  principal)


HISTORY_LIMIT = 60  # results (device x threads) of the bundle's newest runs on its page


def _history(session: Session, name: str) -> dict[str, Any]:
    """The bundle's result history across its versions (newest run first), as the device page
    shows a device's: the published table, with each result's run."""
    results = bundle_results(session, name, HISTORY_LIMIT)
    rows = [row | {"run_id": r["run_id"], "reasons": r.get("reasons") or []}
            for row, r in zip(report_rows(results), results, strict=True)]
    return {"history": rows, "history_notes": flag_notes(results),
            "history_full": len(results) >= HISTORY_LIMIT}


def _int_or_text(text: str) -> int | str:
    """A form number as an int; anything else is passed on as typed, so ``jobs.submit``
    names the bad value in its error (``isdigit`` is no test: ``int("²")`` fails)."""
    try:
        return int(text.strip())
    except ValueError:
        return text


def _float_or_text(text: str) -> float | str:
    """A form number as a float; anything else as typed, for ``jobs.submit`` to name."""
    try:
        return float(text.strip())
    except ValueError:
        return text


ROLLOUT_TEXT = ("canary", "batch", "max_fail")
ROLLOUT_FLAGS = ("health_bench", "rollback_on_fail")


def _rollout_fields(fields: dict[str, str]) -> dict[str, Any] | None:
    """The push form's staged-rollout fields as the job's ``rollout`` parameter (None when
    all are empty: a plain push). Passed on as typed: ``jobs.params`` checks them and names
    a bad value."""
    text = {key: fields.get(key, "").strip() or None for key in ROLLOUT_TEXT}
    flags = {key: fields.get(key) == "true" for key in ROLLOUT_FLAGS}
    if not any(text.values()) and not any(flags.values()):
        return None
    return text | flags


async def _queue(request: Request, settings: Settings, ref: str, principal: Any, kind: str
                 ) -> Response:
    """Queue a push, bench or eval job from the bundle page's forms and go to the job's page;
    bad input re-renders the page with the reason (and queues nothing). The page's data is read
    in a session of its own, closed before the service queues the job in its transaction."""
    fields = await form_fields(request)
    try:
        with session_scope(settings) as session:
            context = _bundle_context(settings, session, ref)
    except EdgeFleetError as exc:
        return not_found(request, str(exc), principal)
    targets = fields.get("targets", "").strip()
    params: dict[str, Any] = {"bundle": context["ref"]}
    if kind == "push":
        params["forks"] = _int_or_text(fields.get("forks", "") or str(context["form"]["forks"]))
        staged = _rollout_fields(fields)
        if staged is not None:
            params["rollout"] = staged
    elif kind == "eval":
        params.update(dataset=fields.get("dataset", ""),
                      threads=fields.get("eval_threads", "") or "1",
                      threshold=_float_or_text(fields.get("threshold", "") or "0.5"))
    else:
        params.update(threads=fields.get("threads", "1"),
                      runs=_int_or_text(fields.get("runs", "") or "30"),
                      warmup=_int_or_text(fields.get("warmup", "") or "5"))
    context["form"] = context["form"] | {k: str(v) for k, v in fields.items()
                                         if k != "csrf_token"}
    try:  # bench and eval forms can also schedule (partials/when.html); a push runs now
        return schedule_or_submit(settings, principal, kind, params, targets, context["form"])
    except EdgeFleetError as exc:
        return render(request, "bundle.html", context | {"error": str(exc), "failed_form": kind},
                      principal, status_code=400)


@router.post("/bundles/{ref}/push", dependencies=[Csrf])
async def push_bundle(request: Request, ref: str, principal: Operator, settings: SettingsDep
                      ) -> Response:
    """Queue a push: only missing blobs travel, each device verifies, then activates."""
    return await _queue(request, settings, ref, principal, "push")


@router.post("/bundles/{ref}/bench", dependencies=[Csrf])
async def bench_bundle(request: Request, ref: str, principal: Operator, settings: SettingsDep
                       ) -> Response:
    """Queue a benchmark of this bundle (it must already be on the devices)."""
    return await _queue(request, settings, ref, principal, "bench")


@router.post("/bundles/{ref}/eval", dependencies=[Csrf])
async def eval_bundle(request: Request, ref: str, principal: Operator, settings: SettingsDep
                      ) -> Response:
    """Queue an evaluation of this bundle (already on the devices) on a dataset."""
    return await _queue(request, settings, ref, principal, "eval")
