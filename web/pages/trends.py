"""Trends page: p50 over time per device and bundle, with regressions flagged.

The query and the regression rule live in ``orchestrator.measure.trends`` (SQL aggregates over the
Result/Run columns; raw latencies are never loaded); this route only reads the filters, shapes
the charts (``charts``) and renders.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from orchestrator.measure import trends
from web.deps import SessionDep, Viewer
from web.pages.charts import regression_rows, trend_charts
from web.pages.common import filter_int, render

router = APIRouter()


@router.get("/trends", response_class=HTMLResponse)
def trends_page(request: Request, principal: Viewer, session: SessionDep, bundle: str = "",
                threads: str = "") -> HTMLResponse:
    """``?bundle=NAME`` and ``?threads=N`` narrow it; an unknown value simply matches nothing
    (the selects only offer what exists)."""
    bundle = bundle.strip()
    thread_count = filter_int(threads)
    points = trends.trend_points(session, bundle or None, thread_count)
    names = trends.bundle_names(session)
    counts = trends.thread_counts(session)
    return render(request, "trends.html", {
        "section": "trends", "charts": trend_charts(points),
        "regressions": regression_rows(points), "bundle": bundle, "threads": thread_count,
        "bundle_names": names, "thread_counts": counts,
        "threshold": round(100 * trends.REGRESSION_THRESHOLD), "max_runs": trends.MAX_RUNS,
    }, principal)
