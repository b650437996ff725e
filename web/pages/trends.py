"""Trends page: p50 over time per device and bundle, with the change points found flagged.

The series and their change points come from ``orchestrator.measure.regressions`` (the service of
``edgefleet runs regressions`` and ``/api/regressions``; SQL aggregates over the Result/Run
columns of benchmark runs, raw latencies never loaded); this route only reads the filters,
shapes the charts (``charts``) and renders.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from orchestrator.measure import regressions, trends
from web.deps import SessionDep, Viewer
from web.pages.charts import trend_charts
from web.pages.common import filter_int, render

router = APIRouter()


@router.get("/trends", response_class=HTMLResponse)
def trends_page(request: Request, principal: Viewer, session: SessionDep, bundle: str = "",
                threads: str = "") -> HTMLResponse:
    """``?bundle=NAME`` and ``?threads=N`` narrow it; an unknown value simply matches nothing
    (the selects only offer what exists)."""
    bundle = bundle.strip()
    thread_count = filter_int(threads)
    found = regressions.regressions(session, bundle or None, thread_count)
    names = trends.bundle_names(session)
    counts = trends.thread_counts(session)
    return render(request, "trends.html", {
        "section": "trends", "charts": trend_charts(found.points, found.change_points),
        "changes": [regressions.display_row(c) for c in found.change_points],
        "found": found, "caption": regressions.caption(found.detector),
        "bundle": bundle, "threads": thread_count, "bundle_names": names,
        "thread_counts": counts, "max_runs": trends.MAX_RUNS,
    }, principal)
