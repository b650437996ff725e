"""Benchmark pages: the runs list, and one run as the published table with its charts. The
comparison of runs and of a bundle's versions is in ``compare``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse

from orchestrator.core.errors import EdgeFleetError, NotFoundError
from orchestrator.core.models import Job
from orchestrator.measure.reports import flag_notes, format_number, input_notes, report_rows
from orchestrator.measure.runlist import KINDS, STATES, RunFilter, filter_choices, runs_window
from orchestrator.measure.runs import get_run, result_raw, run_public, run_results
from web.deps import SessionDep, Viewer
from web.inputs import RowId
from web.pages.common import not_found, render
from web.pages.evals import eval_context, verdict_context
from web.pages.jobs import job_view
from web.pages.paging import pager
from web.pages.view import latency_cdf, latency_histogram, sample_series

router = APIRouter()

RUNS_PAGE = 50
"""Runs per page of the Runs list (it was the newest 200 and nothing older)."""


@router.get("/runs", response_class=HTMLResponse)
def runs_page(request: Request, principal: Viewer, session: SessionDep,
              bundle: str = "", device: str = "", kind: str = "", state: str = "",
              since: str = "", until: str = "", page: int = Query(1, ge=1, le=10**6)
              ) -> HTMLResponse:
    """Newest first, RUNS_PAGE a page, filtered by bundle (NAME or NAME@VERSION), device,
    kind, state and a date range (UTC days, inclusive). A bad filter is said above the
    unfiltered list, as the Fleet page does with a bad pattern."""
    wanted = RunFilter(bundle=bundle.strip(), device=device.strip(), kind=kind, state=state,
                       since=since.strip(), until=until.strip())
    error = None
    offset = (page - 1) * RUNS_PAGE
    try:
        shown = runs_window(session, wanted, offset, RUNS_PAGE)
        kept = wanted
    except EdgeFleetError as exc:
        error, kept = str(exc), RunFilter()
        shown = runs_window(session, kept, offset, RUNS_PAGE)
    runs = [run_public(r) | {"devices": shown.devices.get(int(r.id or 0), [])}
            for r in shown.runs]
    return render(request, "runs.html", {
        "section": "runs", "runs": runs, "filter": wanted, "error": error,
        "filtered": bool(kept.active()), "kinds": KINDS, "states": STATES,
        "pager": pager("/runs", kept.active(), page, shown.matched, RUNS_PAGE, len(runs)),
        "choices": filter_choices(session),
    }, principal, status_code=400 if error else 200)


def _chart_data(result: dict[str, Any]) -> dict[str, Any]:
    """What the run page draws for one result; built from ``result_public(raw=True)``.
    ``hist.note`` is the histogram caption's tail clause, worded here (numbers as the pages
    format them) so the script only places the text."""
    latencies = result.get("latencies_ms") or []
    hist = latency_histogram(latencies)
    overflow = hist["overflow"]
    hist["note"] = (f"; {overflow} run{'s' if overflow != 1 else ''} beyond "
                    f"{format_number(hist['upper'])} ms (the tail) not drawn: see the CDF"
                    if overflow else "")
    return {"hist": hist, "cdf": latency_cdf(latencies),
            "telemetry": sample_series((result.get("telemetry") or {}).get("samples"))}


@router.get("/runs/{run_id}/results/{result_id}/charts")
def result_charts(run_id: RowId, result_id: RowId, principal: Viewer,
                  session: SessionDep) -> JSONResponse:
    """One result's chart data (histogram, CDF, sampler series), fetched by the run page's
    script when the result scrolls near the view: decoding and binning every result's raw
    latencies and sampler rows into the page made a 150-result run 775 kB and its slowest
    page; a result's raw data never changes once stored, so the browser may keep it."""
    try:
        result = result_raw(session, run_id, result_id)
    except NotFoundError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=404)
    return JSONResponse(_chart_data(result), headers={
        "Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"})


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: RowId, principal: Viewer,
             session: SessionDep) -> HTMLResponse:
    try:
        run = get_run(session, run_id)
    except NotFoundError as exc:
        return not_found(request, str(exc), principal)
    stored = run_results(session, run_id)  # summaries: the charts fetch their raw data
    public = run_public(run, stored)
    verdict = (verdict_context(session, run_id) if public["kind"] in ("eval", "bench")
               else None)
    # While it is measured, the run page shows its job's live progress (the job page's
    # partial, polling itself until the job ends).
    live = (session.get(Job, run.job_id)
            if run.state == "running" and run.job_id is not None else None)
    job = job_view(live) if live is not None else None
    results = public.pop("results")
    evaluation = eval_context(public, results) if public["kind"] == "eval" else None
    rows = []
    for index, (row, result, record) in enumerate(zip(report_rows(results), results, stored,
                                                      strict=True)):
        rows.append(row | {"index": index, "reasons": result.get("reasons") or [],
                           "device_name": result["device"], "error": result.get("error"),
                           "telemetry_status": (result.get("telemetry") or {}).get("status"),
                           "n": (result.get("latency_ms") or {}).get("n"),
                           "charts_url": f"/runs/{run_id}/results/{record.id}/charts"})
    return render(request, "run.html", {
        "section": "runs", "run": public, "rows": rows,
        "notes": flag_notes(results) + input_notes(results),
        "invalid": any(row["status"] == "invalid" for row in rows),
        "failed": any(row["status"] == "failed" for row in rows),
        "evaluation": evaluation, "verdict": verdict, "job": job,
    }, principal)
