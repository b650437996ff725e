"""Presentation for the Trends and Compare pages: service rows (``orchestrator.measure.trends``) to
the
JSON the line charts draw (``static/lines.js``) and to heatmap table rows.

Plain functions without the database or HTTP, so each display rule — one chart per bundle and
device, a line per precision x thread count, invalid results as separate hollow points outside
the line, change points as filled markers, heatmap shading per device row — is written once and
tested directly.

Chart JSON (read by lines.js from a ``<script type="application/json">`` block)::

    {"title": str, "x": [number], "x_time": bool, "x_log2": bool, "x_label": str,
     "y_label": str, "series": [{"label": str, "values": [number|null], "color": str,
                                 "kind": "line" | "invalid" | "regression" | "faster"}]}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from orchestrator.measure.regressions import ChangePoint
from orchestrator.measure.reports import format_number
from orchestrator.measure.trends import MatrixCell, TrendPoint, versions_in_order
from orchestrator.present.wording import plural

PALETTE = ("#1f5fa8", "#2e7d32", "#8e24aa", "#00838f", "#6d4c41", "#c2185b", "#5c6bc0",
           "#455a64")
REGRESSION_COLOR = "#b3261e"
FASTER_COLOR = "#0a8f3c"
HEAT_LEVELS = 10  # heat-0 (fastest on that row) .. heat-9 (slowest), classes in app.css


def _threads_label(threads: int | None) -> str:
    if threads is None:
        return "threads ?"
    return f"{threads} thread" + ("" if threads == 1 else "s")


def _sort_threads(values: Iterable[int | None]) -> list[int | None]:
    return sorted(set(values), key=lambda t: (t is None, t or 0))


def _line_label(precision: str | None, threads: int | None, several: bool) -> str:
    label = _threads_label(threads)
    return f"{precision or 'precision ?'}, {label}" if several else label


def trend_charts(points: Sequence[TrendPoint], change_points: Sequence[ChangePoint] = (),
                 ) -> list[dict[str, Any]]:
    """One time chart per (bundle name, device): a line per precision x thread count through
    its valid points, its invalid points as hollow markers off the line, and the first point of
    each new level a change point found as a filled marker (red: slower, green: faster)."""
    groups: dict[tuple[str, str], list[TrendPoint]] = {}
    for point in points:
        groups.setdefault((point.bundle, point.device), []).append(point)
    starts = {(c.series, c.run_id): c for c in change_points}
    charts = []
    for (bundle, device), group in sorted(groups.items()):
        xs = sorted({p.at.timestamp() for p in group})
        where = {x: i for i, x in enumerate(xs)}
        lines = sorted({(p.precision, p.threads) for p in group},
                       key=lambda k: (k[0] or "", k[1] is None, k[1] or 0))
        several = len({precision for precision, _ in lines}) > 1
        series: list[dict[str, Any]] = []
        slower = faster = 0
        for n, (precision, threads) in enumerate(lines):
            color = PALETTE[n % len(PALETTE)]
            label = _line_label(precision, threads, several)
            kinds = {kind: [None] * len(xs) for kind in ("line", "invalid", "slower", "faster")}
            for p in group:
                if (p.precision, p.threads) != (precision, threads):
                    continue
                at = where[p.at.timestamp()]
                kinds["line" if p.valid else "invalid"][at] = p.p50_ms
                change = starts.get((p.series, p.run_id)) if p.valid else None
                if change is not None:
                    kinds["slower" if change.slower else "faster"][at] = p.p50_ms
            series.append({"label": label, "values": kinds["line"], "color": color,
                           "kind": "line"})
            if any(v is not None for v in kinds["invalid"]):
                series.append({"label": f"{label}, invalid", "values": kinds["invalid"],
                               "color": color, "kind": "invalid"})
            for kind, color_of, word in (("slower", REGRESSION_COLOR, "regression"),
                                         ("faster", FASTER_COLOR, "faster")):
                marks = sum(v is not None for v in kinds[kind])
                if marks:
                    series.append({"label": f"{label}, {word}", "values": kinds[kind],
                                   "color": color_of,
                                   "kind": "regression" if kind == "slower" else "faster"})
                slower += marks if kind == "slower" else 0
                faster += marks if kind == "faster" else 0
        charts.append({
            "title": f"{bundle} on {device}", "bundle": bundle, "device": device,
            "x": xs, "x_time": True, "x_log2": False, "x_label": "", "y_label": "p50 ms",
            "series": series, "points": len(group),
            "invalid": sum(not p.valid for p in group),
            "regressions": slower, "faster": faster,
        })
    return charts


def trend_figures(points: Sequence[TrendPoint], change_points: Sequence[ChangePoint] = (),
                  ) -> list[dict[str, Any]]:
    """What the Trends page lists of each ``trend_charts`` chart without its data (fetched per
    chart when it comes into view): title, bundle, device and the counts of its caption.
    Same order and counts as ``trend_charts``."""
    counts: dict[tuple[str, str], list[int]] = {}
    for point in points:
        count = counts.setdefault((point.bundle, point.device), [0, 0, 0, 0])
        count[0] += 1
        count[1] += not point.valid
    for change in change_points:
        count = counts.get((change.bundle, change.device))
        if count is not None:
            count[2 if change.slower else 3] += 1
    return [{"title": f"{bundle} on {device}", "bundle": bundle, "device": device,
             "points": n, "invalid": invalid, "regressions": slower, "faster": faster}
            for (bundle, device), (n, invalid, slower, faster) in sorted(counts.items())]


def sweep_charts(cells: Sequence[MatrixCell]) -> list[dict[str, Any]]:
    """One chart per device: p50 against the thread count (log2 axis), a line per version
    through its valid cells; cells with only invalid results as hollow markers."""
    versions = versions_in_order(cells)
    by_device: dict[str, list[MatrixCell]] = {}
    for cell in cells:
        if cell.threads is not None:
            by_device.setdefault(cell.device, []).append(cell)
    charts = []
    for device, group in sorted(by_device.items()):
        xs = sorted({c.threads for c in group if c.threads is not None})
        series: list[dict[str, Any]] = []
        for n, version in enumerate(versions):
            mine = {c.threads: c for c in group if c.version == version}
            if not mine:
                continue
            color = PALETTE[n % len(PALETTE)]
            label = f"v{version}"
            series.append({"label": label, "color": color, "kind": "line",
                           "values": [mine[t].p50_ms if t in mine else None for t in xs]})
            invalid = [mine[t].invalid_ms if t in mine and mine[t].p50_ms is None else None
                       for t in xs]
            if any(v is not None for v in invalid):
                series.append({"label": f"{label}, invalid", "color": color,
                               "kind": "invalid", "values": invalid})
        charts.append({"title": device, "device": device, "x": xs, "x_time": False,
                       "x_log2": True, "x_label": "threads", "y_label": "p50 ms",
                       "series": series})
    return charts


def _level(value: float, low: float, high: float) -> int:
    if high <= low:
        return 0
    return min(HEAT_LEVELS - 1, int((value - low) / (high - low) * HEAT_LEVELS))


def heatmap(cells: Sequence[MatrixCell]) -> dict[str, Any]:
    """Rows device x thread count, columns versions (build order). Each valid cell gets a
    shade ``level`` scaled within its row — lightest = that device's fastest version — since
    a Pi 4 and a Pi 5 differ far more than two versions do. Cells measured only while
    throttled show their p50 marked invalid, unshaded; the number is always printed."""
    versions = versions_in_order(cells)
    precision: dict[str, str | None] = {}
    rows: dict[tuple[str, int | None], dict[str, MatrixCell]] = {}
    for cell in cells:
        precision[cell.version] = precision.get(cell.version) or cell.precision
        rows.setdefault((cell.device, cell.threads), {})[cell.version] = cell
    out_rows = []
    for (device, threads), mine in sorted(rows.items(),
                                          key=lambda kv: (kv[0][0], kv[0][1] is None,
                                                          kv[0][1] or 0)):
        valid = [c.p50_ms for c in mine.values() if c.p50_ms is not None]
        low, high = (min(valid), max(valid)) if valid else (0.0, 0.0)
        out_cells = []
        for version in versions:
            cell = mine.get(version)
            if cell is None:
                out_cells.append({"text": None, "level": None, "invalid": False, "title": ""})
            elif cell.p50_ms is not None:
                out_cells.append({
                    "text": format_number(cell.p50_ms), "level": _level(cell.p50_ms, low, high),
                    "invalid": False,
                    "title": f"mean p50 of {plural(cell.valid_runs, 'valid run')}"
                             + (f"; {plural(cell.invalid_runs, 'invalid run')} left out"
                                if cell.invalid_runs else "")})
            else:
                out_cells.append({"text": format_number(cell.invalid_ms), "level": None,
                                  "invalid": True,
                                  "title": f"only invalid (throttled) runs: {cell.invalid_runs}"})
        out_rows.append({"device": device, "threads": threads, "cells": out_cells})
    return {"versions": [{"version": v, "precision": precision.get(v)} for v in versions],
            "rows": out_rows}
