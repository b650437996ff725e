"""Evaluation runs as edge-ML papers report them: one row per device x thread count (accuracy,
precision, recall, F1, ROC AUC, FP, FN, p50 preprocessing and inference), the confusion matrix
per result, the threshold sweep with its recommendation, and the cross-device agreement in words.

Input is ``runs.run_public`` of an eval run (results with their ``eval`` block, the run's
``agreement``). The CLI (``eval``, ``runs show``) and the web run page share these rows and
sentences, so both say the same thing. Rounding: metrics to 3 decimals (a 191-window set moves
in steps of 0.005), times as ``reports.format_number``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from orchestrator.measure.reports import csv_text, format_number, markdown_table
from orchestrator.present.wording import plural

COLUMNS = [("device", "device"), ("threads", "threads"), ("accuracy", "accuracy"),
           ("precision", "precision"), ("recall", "recall"), ("f1", "F1"),
           ("roc_auc", "ROC AUC"), ("fp", "FP"), ("fn", "FN"), ("p50_pre", "p50 pre ms"),
           ("p50_infer", "p50 infer ms"), ("valid", "valid")]
_LEFT = {"device", "valid"}
CAPTION = ("Metrics of the positive class (binary; threshold as shown) or macro averages "
           "(multi-class). FP/FN: false positives/negatives of the positive class (multi-class: "
           "misclassified samples). p50 pre / infer: median preprocessing and inference time per "
           "sample, timed apart on the device. valid: no throttling or under-voltage seen.")


def metric(value: float | None) -> str | None:
    return None if value is None else f"{value:.3f}"


def fp_fn(metrics: dict[str, Any]) -> tuple[int, int]:
    cm = metrics["confusion_matrix"]
    positive = metrics.get("positive")
    if metrics.get("mode") == "binary" and positive is not None:
        k = positive["index"]
        return (sum(row[k] for row in cm) - cm[k][k], sum(cm[k]) - cm[k][k])
    wrong = sum(map(sum, cm)) - sum(cm[i][i] for i in range(len(cm)))
    return wrong, wrong


def _median(values: Sequence[float | None] | None) -> float | None:
    import numpy as np

    clean = [v for v in values or [] if v is not None]
    return float(np.median(clean)) if clean else None


def eval_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Display rows (strings, None = not measured) plus ``status`` ok/invalid/failed."""
    rows = []
    for r in results:
        block = r.get("eval") or {}
        m = block.get("metrics") or {}
        device = str(r.get("device")) + (" (sim)" if r.get("simulated") else "")
        status = ("failed" if not r.get("ok") or not m
                  else "invalid" if r.get("valid") is False else "ok")
        fp, fn = fp_fn(m) if m else (None, None)
        rows.append({
            "device": device, "device_name": r.get("device"),
            "threads": None if r.get("threads") is None else str(r["threads"]),
            "accuracy": metric(m.get("accuracy")), "precision": metric(m.get("precision")),
            "recall": metric(m.get("recall")), "f1": metric(m.get("f1")),
            "roc_auc": metric(m.get("roc_auc")),
            "fp": None if fp is None else str(fp), "fn": None if fn is None else str(fn),
            "p50_pre": format_number(_median(block.get("preprocessing_ms"))),
            "p50_infer": format_number((r.get("latency_ms") or {}).get("p50")),
            "valid": {"ok": "yes", "invalid": "no: " + ", ".join(r.get("flags") or []),
                      "failed": f"failed: {r.get('error') or 'no scored predictions'}"}[status],
            "status": status, "metrics": m,
        })
    return rows


def agreement_lines(agreement: dict[str, Any] | None) -> list[str]:
    """The cross-device agreement in plain words: the verdict, then each differing sample with
    every device's prediction."""
    if not agreement:
        return ["agreement: no device produced scored predictions, nothing to compare"]
    keys = agreement["keys"]
    what = "results" if any("@T" in k for k in keys) else "devices"
    if len(keys) < 2:
        return [f"agreement: only one result ({', '.join(keys)}), nothing to compare"]
    differing = agreement["differing"]
    compared = agreement.get("compared")
    of = ("" if compared is None else " on its 1 sample" if compared == 1
          else f" on all {compared} samples")
    if not differing:
        return [f"all {len(keys)} {what} produced the same confusion matrix (and the same "
                f"prediction{of})"]
    head = (f"all {len(keys)} {what} produced the same confusion matrix, but"
            if agreement.get("same_confusion")
            else f"the {len(keys)} {what} did not all produce the same confusion matrix:")
    lines = [f"{head} predictions differ on {len(differing)} sample"
             f"{'s' if len(differing) != 1 else ''}:"]
    for entry in differing:
        label = f" (label {entry['label']})" if entry.get("label") is not None else ""
        preds = ", ".join(f"{k} -> {v}" for k, v in entry["predictions"].items())
        lines.append(f"  {entry['id']}{label}: {preds}")
    return lines


def sweep_rows(metrics: dict[str, Any]) -> list[list[str]]:
    return [[f"{r['threshold']:.2f}", metric(r["precision"]) or "-", metric(r["recall"]) or "-",
             metric(r["f1"]) or "-", str(r["tp"]), str(r["fp"]), str(r["tn"]), str(r["fn"])]
            for r in metrics.get("sweep") or []]


PER_CLASS_HEADINGS = ["class", "precision", "recall", "F1", "support"]


def per_class_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """The per-class report (precision, recall, F1, support of every class)."""
    per_class = metrics.get("per_class") or {}
    return [[name, metric(s.get("precision")) or "-", metric(s.get("recall")) or "-",
             metric(s.get("f1")) or "-", str(s.get("support", "-"))]
            for name in metrics.get("classes") or per_class
            for s in [per_class.get(name) or {}]]


SWEEP_HEADINGS = ["threshold", "precision", "recall", "F1", "TP", "FP", "TN", "FN"]


def recommendation(metrics: dict[str, Any]) -> str | None:
    rec = metrics.get("recommended")
    if not rec:
        return None
    return f"recommended threshold {rec['threshold']:.2f} ({rec['rule']})"


def _title(run: dict[str, Any]) -> str:
    data = (run.get("params") or {}).get("dataset") or {}
    return (f"run {run['id']}: {run['bundle']['name']}@{run['bundle']['version']} on "
            f"{data.get('name')}@{data.get('version')} ({run['state']})")


def metric_groups(rows: list[dict[str, Any]], sweep: bool) -> list[tuple[str, dict[str, Any]]]:
    """(whose, metrics) with results that share the same confusion matrix (and sweep, when it
    is shown) merged: a fleet that agrees gets one matrix, not one per device x threads."""
    groups: dict[str, tuple[list[str], dict[str, Any]]] = {}
    for row in rows:
        m = row["metrics"]
        if not m:
            continue
        key = json.dumps([m["classes"], m["confusion_matrix"],
                          sweep_rows(m) if sweep else None, recommendation(m) if sweep else None])
        groups.setdefault(key, ([], m))[0].append(
            f"{row['device']} · {plural(row['threads'], 'thread')}"
            if isinstance(row["threads"], int) else f"{row['device']} · {row['threads']} "
            "threads")
    total = sum(1 for row in rows if row["metrics"])
    out = []
    for names, m in groups.values():
        whose = (names[0] if len(names) == 1 else
                 f"all {total} results" if len(names) == total and total > 1 else
                 ", ".join(names))
        out.append((whose, m))
    return out


def render_eval(run: dict[str, Any], sweep: bool = False) -> list[RenderableType]:
    """The CLI report: table, confusion matrices, sweeps (when asked), agreement."""
    rows = eval_rows(run.get("results") or [])
    table = Table(title=Text(_title(run)), title_justify="left", header_style="bold", box=None,
                  pad_edge=False, caption=Text(CAPTION, style="dim"), caption_justify="left")
    for key, heading in COLUMNS:
        table.add_column(heading, justify="left" if key in _LEFT else "right")
    styles = {"ok": "", "invalid": "yellow", "failed": "red"}
    for row in rows:
        table.add_row(*(Text(row[k] or "-") for k, _ in COLUMNS), style=styles[row["status"]])
    out: list[RenderableType] = [table]
    for name, m in metric_groups(rows, sweep):
        cm = Table(title=Text(f"confusion matrix: {name} (rows = true, columns = predicted)"),
                   title_justify="left", header_style="bold", box=None, pad_edge=False)
        cm.add_column("true \\ predicted")
        for cls in m["classes"]:
            cm.add_column(Text(cls), justify="right")
        for cls, counts in zip(m["classes"], m["confusion_matrix"], strict=True):
            cm.add_row(Text(cls), *(str(c) for c in counts))
        out.append(cm)
        pc = Table(title=Text(f"per-class report: {name}"), title_justify="left",
                   header_style="bold", box=None, pad_edge=False)
        for index, heading in enumerate(PER_CLASS_HEADINGS):
            pc.add_column(heading, justify="left" if index == 0 else "right")
        for values in per_class_rows(m):
            pc.add_row(Text(values[0]), *values[1:])
        out.append(pc)
        if sweep and m.get("sweep"):
            st = Table(title=Text(f"threshold sweep: {name}, positive = "
                                  f"{(m.get('positive') or {}).get('name')}"),
                       title_justify="left", header_style="bold", box=None, pad_edge=False,
                       caption=Text(recommendation(m) or "", style="bold"),
                       caption_justify="left")
            for heading in SWEEP_HEADINGS:
                st.add_column(heading, justify="right")
            for values in sweep_rows(m):
                st.add_row(*values)
            out.append(st)
    out.append(Text("\n".join(agreement_lines(run.get("agreement")))))
    return out


def eval_markdown(run: dict[str, Any], sweep: bool = False) -> str:
    rows = eval_rows(run.get("results") or [])
    parts = [f"**{_title(run)}**\n",
             markdown_table([h for _, h in COLUMNS], [k not in _LEFT for k, _ in COLUMNS],
                       ([row[k] for k, _ in COLUMNS] for row in rows))]
    for name, m in metric_groups(rows, sweep):
        parts.append(f"\nConfusion matrix, {name}:\n\n")
        parts.append(markdown_table(["true \\ predicted", *m["classes"]],
                               [False] + [True] * len(m["classes"]),
                               ([c, *counts] for c, counts in
                                zip(m["classes"], m["confusion_matrix"], strict=True))))
        parts.append(f"\nPer-class report, {name}:\n\n")
        parts.append(markdown_table(PER_CLASS_HEADINGS, [False, True, True, True, True],
                               per_class_rows(m)))
        if sweep and m.get("sweep"):
            parts.append(f"\nThreshold sweep, {name}: {recommendation(m)}\n\n")
            parts.append(markdown_table(SWEEP_HEADINGS, [True] * 8, sweep_rows(m)))
    parts.append("\n" + "\n".join(agreement_lines(run.get("agreement"))) + "\n")
    return "".join(parts)


CSV_FIELDS = ["run_id", "device", "threads", "status", "accuracy", "precision", "recall", "f1",
              "roc_auc", "fp", "fn", "p50_pre_ms", "p50_infer_ms", "valid", "error"]


def eval_csv(run: dict[str, Any]) -> str:
    """One line per device x threads, numbers to their precision (reports.CSV_PRECISION)."""
    out = []
    for r, row in zip(run.get("results") or [], eval_rows(run.get("results") or []),
                      strict=True):
        m = row["metrics"]
        fp, fn = fp_fn(m) if m else (None, None)
        out.append({"run_id": run["id"], "device": r.get("device"), "threads": r.get("threads"),
                    "status": row["status"], "accuracy": m.get("accuracy"),
                    "precision": m.get("precision"), "recall": m.get("recall"),
                    "f1": m.get("f1"), "roc_auc": m.get("roc_auc"), "fp": fp, "fn": fn,
                    "p50_pre_ms": _median((r.get("eval") or {}).get("preprocessing_ms")),
                    "p50_infer_ms": (r.get("latency_ms") or {}).get("p50"),
                    "valid": r.get("valid"), "error": r.get("error")})
    return csv_text(CSV_FIELDS, out)
