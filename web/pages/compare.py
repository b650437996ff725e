"""Compare page, two ways (moved here from runs when it grew):

* two runs (``?a=&b=``) of one kind: B against A per device and thread count — the
  statistics of ``edgefleet runs compare`` (they need raw latencies, so those two runs' are
  loaded, once per pair of finished runs: ``comparisons.comparison``; a benchmark and an eval
  are refused, ``runs.compared_runs``) — with
  ``&format=csv`` / ``&format=md`` exports of the same rows (``reports.comparison_csv`` /
  ``comparison_markdown``, as attachments);
* a bundle across its versions and precisions (``?bundle=NAME``): a device x version heatmap
  of p50 and a thread-count sweep, from SQL aggregates (``trends.version_matrix``; no raw
  latencies).

Registered before ``runs``: ``/runs/{run_id}`` would otherwise claim ``/runs/compare``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from orchestrator.core.errors import EdgeFleetError, NotFoundError
from orchestrator.measure import trends
from orchestrator.measure.comparisons import comparison
from orchestrator.measure.reports import (
    COMPARISON_CAPTION,
    comparison_csv,
    comparison_markdown,
    format_ci,
    format_number,
    format_p,
    format_ratio,
)
from orchestrator.measure.runs import list_runs, run_public
from web.deps import SessionDep, Viewer
from web.inputs import RowId
from web.pages.charts import heatmap, sweep_charts
from web.pages.common import filter_int, render
from web.pages.paired import paired_chart

router = APIRouter()

RUNS_LIMIT = 200
EXPORTS = {"csv": ("text/csv; charset=utf-8", comparison_csv),
           "md": ("text/markdown; charset=utf-8", comparison_markdown)}


def _display(row: dict[str, Any]) -> dict[str, Any]:
    return row | {"p50_a_text": format_number(row["p50_a"]),
                  "p50_b_text": format_number(row["p50_b"]),
                  "ratio_text": format_ratio(row["ratio"]),
                  "ci_text": format_ci(row["ci_low"], row["ci_high"]),
                  "p_text": format_p(row["p_value"])}


def _export(fmt: str, a: int, b: int, rows: list[dict[str, Any]]) -> Response:
    media_type, render_rows = EXPORTS[fmt]
    return Response(render_rows(rows), media_type=media_type, headers={
        "Content-Disposition": f'attachment; filename="compare-{a}-{b}.{fmt}"',
        "X-Content-Type-Options": "nosniff"})


@router.get("/runs/compare", response_class=HTMLResponse)
def compare_page(request: Request, principal: Viewer, session: SessionDep,
                 a: RowId | None = None,
                 b: RowId | None = None, include_invalid: bool = False, bundle: str = "",
                 threads: str = "",
                 fmt: Annotated[str, Query(alias="format")] = "") -> Response:
    """Runs mode when ``a`` and ``b`` are given, bundle mode when ``bundle`` is; both forms are
    always on the page. ``format`` exports the runs comparison instead of rendering it."""
    context: dict[str, Any] = {"section": "compare", "a": a, "b": b, "rows": [], "runs": {},
                               "include_invalid": include_invalid, "bundle": bundle.strip(),
                               "caption": COMPARISON_CAPTION, "error": None}
    status = 200
    if fmt and (fmt not in EXPORTS or a is None or b is None):
        context["error"] = (f"export format {fmt!r}: choose csv or md"
                            if fmt not in EXPORTS else "pick runs A and B to export")
        status = 400
    elif a is not None and b is not None:
        try:
            runs, rows = comparison(session, a, b, include_invalid)
        except NotFoundError as exc:
            context["error"], status = str(exc), 404
        except EdgeFleetError as exc:  # runs of different kinds
            context["error"], status = str(exc), 400
        else:
            if fmt:
                return _export(fmt, a, b, rows)
            context |= {"runs": runs, "rows": [_display(row) for row in rows],
                        "paired": paired_chart(runs, rows)}
    thread_count = filter_int(threads)
    context["choices"] = [run_public(r) for r in list_runs(session, RUNS_LIMIT)]
    context["bundle_names"] = trends.bundle_names(session)
    context["thread_counts"] = trends.thread_counts(session)
    cells = (trends.version_matrix(session, context["bundle"], thread_count)
             if context["bundle"] else [])
    context |= {"threads": thread_count, "heatmap": heatmap(cells),
                "sweeps": sweep_charts(cells)}
    return render(request, "compare.html", context, principal, status_code=status)
