"""What the run page shows for an evaluation run: the metrics table, one confusion matrix and
threshold sweep per distinct result (a fleet that agrees gets one, titled "all N results"), the
cross-device agreement in words, and, for eval and benchmark runs, the deployment verdicts.

The rows and sentences come from orchestrator.measure.evalreport, orchestrator.measure.verdicts and
orchestrator.measure.reports, so the page says exactly what ``edgefleet runs show`` and ``edgefleet
runs
verdict`` print.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from orchestrator.measure.evalreport import (
    COLUMNS,
    agreement_lines,
    eval_rows,
    metric_groups,
    per_class_rows,
    recommendation,
)
from orchestrator.measure.runs import get_run
from orchestrator.measure.verdictreport import (
    VERDICT_HEADINGS,
    VERDICT_RIGHT,
    verdict_caption,
    verdict_values,
)
from orchestrator.measure.verdicts import (
    ProfileError,
    UnfinishedRunError,
    check_finished,
    stored_profile,
    verdicts_for_run,
)

# Sweep chart series (web/static/lines.js shape): what an operator picks a threshold from.
SWEEP_SERIES = (("precision", "#1f77b4"), ("recall", "#ff7f0e"), ("f1", "#2ca02c"))


def sweep_chart(sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """Precision, recall and F1 against the threshold; a metric that is undefined at a
    threshold (nothing predicted positive) is a gap, not a zero."""
    return {"x": [s["threshold"] for s in sweep], "x_label": "threshold", "x_pad": 0.025,
            "y_label": "", "series": [
                {"label": "F1" if key == "f1" else key, "color": color, "kind": "line",
                 "values": [s.get(key) for s in sweep]} for key, color in SWEEP_SERIES]}


def eval_context(run: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Template data for ``partials/eval_metrics.html`` from ``run_public`` of an eval run."""
    rows = eval_rows(results)
    details = []
    for index, (whose, m) in enumerate(metric_groups(rows, sweep=True)):
        cm = m["confusion_matrix"]
        details.append({
            "index": index, "title": whose,
            "classes": m["classes"],
            "matrix": [{"label": cls, "counts": counts,
                        "correct": cm[i][i]} for i, (cls, counts) in
                       enumerate(zip(m["classes"], cm, strict=True))],
            "sweep": m.get("sweep") or [], "recommendation": recommendation(m),
            "positive": (m.get("positive") or {}).get("name"),
            "per_class": m.get("per_class") or {},
            "per_class_rows": per_class_rows(m),
        })
    agreement = run.get("agreement")
    lines = agreement_lines(agreement)
    return {"columns": COLUMNS, "rows": rows, "details": details,
            "sweep_charts": [sweep_chart(d["sweep"]) for d in details],
            "agreement": {"headline": lines[0], "samples": [line.strip() for line in lines[1:]],
                          "same": bool(agreement) and not agreement.get("differing")},
            "dataset": (run.get("params") or {}).get("dataset") or {},
            "threshold": (run.get("params") or {}).get("threshold"),
            "positive": (run.get("params") or {}).get("positive")
            or next((d["positive"] for d in details if d["positive"]), None)}


def _row_status(row: dict[str, Any]) -> str:
    if not row.get("ok") or not row.get("keeps_up"):
        return "failed"  # red, like the CLI: a detector that falls behind is no deployment
    return "invalid" if row.get("valid") is False else "ok"


def verdict_context(session: Session, run_id: int) -> dict[str, Any]:
    """Template data for ``partials/verdicts.html``: the table per device x threads, the
    recommendation per device in words and the caption, when the run or its bundle carries a
    streaming profile; otherwise the command that gives one (or why the stored one is
    unusable)."""
    run = get_run(session, run_id)
    try:
        check_finished(session, run)
    except UnfinishedRunError as exc:
        return {"unfinished": str(exc), "state": run.state}
    doc, _ = stored_profile(session, run)
    if doc is None:
        return {"hint": f"edgefleet runs verdict {run_id} --window S --hop S"}
    try:
        report = verdicts_for_run(session, run_id)
    except ProfileError as exc:
        return {"error": str(exc)}
    rows = [{"values": verdict_values(row), "status": _row_status(row)}
            for row in report["rows"]]
    recommended = [{"device": device, "threads": rec["threads"], "reason": rec["reason"]}
                   for device, rec in report["recommended"].items()]
    return {"headings": list(zip(VERDICT_HEADINGS, VERDICT_RIGHT, strict=True)),
            "rows": rows, "recommended": recommended, "caption": verdict_caption(report),
            "min_headroom_pct": report["min_headroom_pct"]}
