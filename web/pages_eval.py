"""What the run page shows for an evaluation run: the metrics table, a confusion matrix and a
threshold sweep per device x thread count, and the cross-device agreement in words.

The rows and sentences come from orchestrator.evalreport, so the page says exactly what
``edgefleet runs show`` prints.
"""

from __future__ import annotations

from typing import Any

from orchestrator.evalreport import COLUMNS, agreement_lines, eval_rows, recommendation


def eval_context(run: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Template data for ``partials/eval_metrics.html`` from ``run_public`` of an eval run."""
    rows = eval_rows(results)
    details = []
    for index, row in enumerate(rows):
        m = row["metrics"]
        if not m:
            continue
        cm = m["confusion_matrix"]
        details.append({
            "index": index, "title": f"{row['device']} · {row['threads']} thread(s)",
            "classes": m["classes"],
            "matrix": [{"label": cls, "counts": counts,
                        "correct": cm[i][i]} for i, (cls, counts) in
                       enumerate(zip(m["classes"], cm, strict=True))],
            "sweep": m.get("sweep") or [], "recommendation": recommendation(m),
            "positive": (m.get("positive") or {}).get("name"),
            "per_class": m.get("per_class") or {},
        })
    agreement = run.get("agreement")
    lines = agreement_lines(agreement)
    return {"columns": COLUMNS, "rows": rows, "details": details,
            "agreement": {"headline": lines[0], "samples": [line.strip() for line in lines[1:]],
                          "same": bool(agreement) and not agreement.get("differing")},
            "dataset": (run.get("params") or {}).get("dataset") or {},
            "threshold": (run.get("params") or {}).get("threshold"),
            "positive": (run.get("params") or {}).get("positive")}
