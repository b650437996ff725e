"""Trends page: p50 over time per device and bundle, with the change points found flagged.

The series and their change points come from ``orchestrator.measure.regressions`` (the service of
``edgefleet runs regressions`` and ``/api/regressions``; SQL aggregates over the Result/Run
columns of benchmark runs, raw latencies never loaded); this route only reads the filters,
shapes the charts (``charts``) and renders.

Why each chart's data is its own request (``/trends/chart``, fetched by lines.js when the chart
comes near the view): at 10M latency samples the page showed 600 series of the newest 1,000
runs, and shaping and embedding their 50,000 points was most of its time and 2.3 MB of HTML.
The page now carries the change points, which need every series anyway, and one line per
chart; a chart reads one device's series.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

from orchestrator.measure import regressions, trends
from web.deps import SessionDep, Viewer
from web.pages.charts import trend_charts, trend_figures
from web.pages.common import filter_int, render

router = APIRouter()


def _window(runs: str) -> int:
    """``?runs=N``: one of ``trends.PAGE_RUNS``, else the default."""
    value = filter_int(runs)
    return value if value in trends.PAGE_RUNS else trends.PAGE_RUNS_DEFAULT


@router.get("/trends", response_class=HTMLResponse)
def trends_page(request: Request, principal: Viewer, session: SessionDep, bundle: str = "",
                threads: str = "", runs: str = "") -> HTMLResponse:
    """``?bundle=NAME`` and ``?threads=N`` narrow it; an unknown value simply matches nothing
    (the selects only offer what exists). ``?runs=N``: how many of the newest benchmark runs
    are read (``trends.PAGE_RUNS``; default ``PAGE_RUNS_DEFAULT``)."""
    bundle = bundle.strip()
    thread_count = filter_int(threads)
    window = _window(runs)
    found = regressions.regressions(session, bundle or None, thread_count, max_runs=window)
    figures = trend_figures(found.points, found.change_points)
    for figure in figures:
        figure["url"] = "/trends/chart?" + urlencode(
            {"bundle": bundle, "threads": "" if thread_count is None else thread_count,
             "runs": window, "of": figure["bundle"], "device": figure["device"]})
    return render(request, "trends.html", {
        "section": "trends", "charts": figures,
        "changes": [regressions.display_row(c) for c in found.change_points],
        "found": found, "caption": regressions.caption(found.detector),
        "bundle": bundle, "threads": thread_count,
        "bundle_names": trends.bundle_names(session),
        "thread_counts": trends.thread_counts(session), "window": window,
        "windows": trends.PAGE_RUNS,
    }, principal)


@router.get("/trends/chart")
def trend_chart(principal: Viewer, session: SessionDep, of: str, device: str,
                bundle: str = "", threads: str = "", runs: str = "") -> JSONResponse:
    """The chart of bundle ``of`` on ``device`` (``charts.trend_charts``' shape) under the
    page's filters (``bundle``, ``threads``, ``runs``: the same newest runs, so the same points
    and change points as the page counted). 404 when it has no point."""
    found = regressions.regressions(session, bundle.strip() or None, filter_int(threads),
                                    devices=[device], max_runs=_window(runs))
    points = [p for p in found.points if p.bundle == of]
    if not points:
        return JSONResponse({"detail": f"no benchmark points of {of} on {device}"},
                            status_code=404)
    (chart,) = trend_charts(points, [c for c in found.change_points if c.bundle == of])
    return JSONResponse(chart, headers={"X-Content-Type-Options": "nosniff"})
