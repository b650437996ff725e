"""The Compare page's paired chart: for each device x thread count compared, A's and B's p50
side by side, and B/A (ratio of medians) with its 95% confidence interval against 1, so a
slower or faster pair stands out without reading the table. Built from ``compare_runs`` rows
(what the table shows); drawn by static/paired.js.

Shape: {"labels": ["pi5-cool · 1t", ...], "a": [ms|null], "b": [ms|null],
"ratio": [x|null], "lo": [x|null], "hi": [x|null], "verdict": [str|null],
"a_label": "A #1 first-crack@1", "b_label": "B #2 first-crack@2"}. Excluded pairs (throttled,
missing) are left out: they have no ratio to draw."""

from __future__ import annotations

from typing import Any


def paired_chart(runs: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    shown = [r for r in rows if not r.get("excluded") and r.get("ratio") is not None]
    keys = ("labels", "a", "b", "ratio", "lo", "hi", "verdict")
    chart: dict[str, Any] = {key: [] for key in keys}
    for row in shown:
        threads = row.get("threads")
        chart["labels"].append(f"{row['device']} · {threads}t" if threads is not None
                               else str(row["device"]))
        chart["a"].append(row.get("p50_a"))
        chart["b"].append(row.get("p50_b"))
        chart["ratio"].append(row.get("ratio"))
        chart["lo"].append(row.get("ci_low"))
        chart["hi"].append(row.get("ci_high"))
        chart["verdict"].append(row.get("verdict"))

    def label(side: str) -> str:
        run = runs.get(side) or {}
        bundle = run.get("bundle") or {}
        return f"{side.upper()} #{run.get('id')} {bundle.get('name')}@{bundle.get('version')}"

    chart["a_label"], chart["b_label"] = label("a"), label("b")
    return chart
