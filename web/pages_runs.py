"""Benchmark pages: the runs list, one run as the published table with its charts, and the
comparison of two runs (the same statistics as ``edgefleet runs compare``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from orchestrator.db import session_scope
from orchestrator.errors import NotFoundError
from orchestrator.reports import (
    COMPARISON_CAPTION,
    flag_notes,
    format_ci,
    format_number,
    format_p,
    format_ratio,
    report_rows,
)
from orchestrator.runs import get_run, list_runs, run_public, run_results
from orchestrator.stats import compare_runs
from web.pages_common import Viewer, not_found, render, settings_of
from web.pages_view import latency_cdf, latency_histogram, sample_series

router = APIRouter()

RUNS_LIMIT = 200


@router.get("/runs", response_class=HTMLResponse)
def runs_page(request: Request, principal: Viewer) -> HTMLResponse:
    with session_scope(settings_of(request)) as session:
        runs = [run_public(r) for r in list_runs(session, RUNS_LIMIT)]
    return render(request, "runs.html", {"section": "runs", "runs": runs}, principal)


def _chart_data(result: dict[str, Any]) -> dict[str, Any]:
    """What the run page draws for one result; built from ``result_public(raw=True)``."""
    latencies = result.get("latencies_ms") or []
    return {"hist": latency_histogram(latencies), "cdf": latency_cdf(latencies),
            "telemetry": sample_series((result.get("telemetry") or {}).get("samples"))}


@router.get("/runs/compare", response_class=HTMLResponse)
def compare_page(request: Request, principal: Viewer, a: int | None = None,
                 b: int | None = None, include_invalid: bool = False) -> HTMLResponse:
    """B against A per device and thread count; needs raw latencies, so loads them."""
    rows: list[dict[str, Any]] = []
    runs: dict[str, Any] = {}
    error = None
    if a is not None and b is not None:
        with session_scope(settings_of(request)) as session:
            try:
                for key, run_id in (("a", a), ("b", b)):
                    runs[key] = run_public(get_run(session, run_id),
                                           run_results(session, run_id), raw=True)
            except NotFoundError as exc:
                error = str(exc)
        if error is None:
            for row in compare_runs(runs["a"]["results"], runs["b"]["results"],
                                    include_invalid=include_invalid):
                rows.append(row | {
                    "p50_a_text": format_number(row["p50_a"]),
                    "p50_b_text": format_number(row["p50_b"]),
                    "ratio_text": format_ratio(row["ratio"]),
                    "ci_text": format_ci(row["ci_low"], row["ci_high"]),
                    "p_text": format_p(row["p_value"])})
    with session_scope(settings_of(request)) as session:
        choices = [run_public(r) for r in list_runs(session, RUNS_LIMIT)]
    return render(request, "compare.html", {
        "section": "runs", "rows": rows, "a": a, "b": b, "include_invalid": include_invalid,
        "runs": {k: {kk: v for kk, v in r.items() if kk != "results"} for k, r in runs.items()},
        "choices": choices, "caption": COMPARISON_CAPTION, "error": error,
    }, principal, status_code=404 if error else 200)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: int, principal: Viewer) -> HTMLResponse:
    with session_scope(settings_of(request)) as session:
        try:
            run = get_run(session, run_id)
        except NotFoundError as exc:
            return not_found(request, str(exc), principal)
        public = run_public(run, run_results(session, run_id), raw=True)
    results = public.pop("results")
    rows = []
    for index, (row, result) in enumerate(zip(report_rows(results), results, strict=True)):
        rows.append(row | {"index": index, "reasons": result.get("reasons") or [],
                           "device_name": result["device"], "error": result.get("error"),
                           "telemetry_status": (result.get("telemetry") or {}).get("status"),
                           "n": (result.get("latency_ms") or {}).get("n")})
    charts = [_chart_data(r) | {"title": f"{row['device']} · {row['threads']} threads"}
              for row, r in zip(rows, results, strict=True)]
    return render(request, "run.html", {
        "section": "runs", "run": public, "rows": rows, "charts": charts,
        "notes": flag_notes(results),
        "invalid": any(row["status"] == "invalid" for row in rows),
        "failed": any(row["status"] == "failed" for row in rows),
    }, principal)
