"""Benchmark pages: the runs list, and one run as the published table with its charts. The
comparison of runs and of a bundle's versions is in ``compare``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from orchestrator.core.errors import NotFoundError
from orchestrator.core.models import Job
from orchestrator.measure.reports import flag_notes, input_notes, report_rows
from orchestrator.measure.runs import get_run, list_runs, run_public, run_results
from web.deps import SessionDep, Viewer
from web.inputs import RowId
from web.pages.common import not_found, render
from web.pages.evals import eval_context, verdict_context
from web.pages.jobs import job_view
from web.pages.view import latency_cdf, latency_histogram, sample_series

router = APIRouter()

RUNS_LIMIT = 200


@router.get("/runs", response_class=HTMLResponse)
def runs_page(request: Request, principal: Viewer, session: SessionDep) -> HTMLResponse:
    runs = [run_public(r) for r in list_runs(session, RUNS_LIMIT)]
    return render(request, "runs.html", {"section": "runs", "runs": runs}, principal)


def _chart_data(result: dict[str, Any]) -> dict[str, Any]:
    """What the run page draws for one result; built from ``result_public(raw=True)``."""
    latencies = result.get("latencies_ms") or []
    return {"hist": latency_histogram(latencies), "cdf": latency_cdf(latencies),
            "telemetry": sample_series((result.get("telemetry") or {}).get("samples"))}


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: RowId, principal: Viewer,
             session: SessionDep) -> HTMLResponse:
    try:
        run = get_run(session, run_id)
    except NotFoundError as exc:
        return not_found(request, str(exc), principal)
    public = run_public(run, run_results(session, run_id, latencies=True, samples=True),
                        raw=True)
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
    for index, (row, result) in enumerate(zip(report_rows(results), results, strict=True)):
        rows.append(row | {"index": index, "reasons": result.get("reasons") or [],
                           "device_name": result["device"], "error": result.get("error"),
                           "telemetry_status": (result.get("telemetry") or {}).get("status"),
                           "n": (result.get("latency_ms") or {}).get("n")})
    charts = [_chart_data(r) | {"title": f"{row['device']} · {row['threads']} thread"
                                         + ("" if row["threads"] == "1" else "s")}
              for row, r in zip(rows, results, strict=True)]
    return render(request, "run.html", {
        "section": "runs", "run": public, "rows": rows, "charts": charts,
        "notes": flag_notes(results) + input_notes(results),
        "invalid": any(row["status"] == "invalid" for row in rows),
        "failed": any(row["status"] == "failed" for row in rows),
        "evaluation": evaluation, "verdict": verdict, "job": job,
    }, principal)
