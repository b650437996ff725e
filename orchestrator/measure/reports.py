"""Benchmark results as the table edge-ML write-ups publish, for a terminal, Markdown and CSV.

One row per device x thread count: model | device | precision | threads | p50 | p95 | load |
peak RSS | temp max | flags. A number shown here was measured; a result measured while
throttled or under-volted is shown with its flags (yellow), a failed one with its error (red),
never mixed silently with clean ones (DESIGN "Principles").

Rounding (tables and Markdown): times and memory to three significant figures, but never
dropping integer digits (0.412, 3.46, 12.3, 346, 1235). Run-to-run noise on a Pi is a few
percent, so a fourth digit would be noise presented as precision, and fewer would hide the 5%
differences a thread-count choice turns on. Temperatures to 0.1 °C, the resolution of
``vcgencmd measure_temp``.

CSV is for scripts and spreadsheets, so it keeps every digit that was *measured* and none that
was not (``CSV_PRECISION``): latencies to 0.0001 ms (the agent records 0.1 µs), load times to
0.001 ms, memory to 0.01 MB, temperatures to 0.1 °C, power to 1 mW; ratios to 4 decimals and
p-values to 3 significant figures. Before, a percentile came out as 0.19388999999999995.

Everything user-controlled (device and bundle names, error messages, flags) goes into rich
tables as ``Text``, so a device called ``[red]x`` is shown as typed, not as markup.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from orchestrator.present.wording import significant

Result = dict[str, Any]

COLUMNS = [  # (key in report_rows, heading)
    ("model", "model"), ("device", "device"), ("precision", "precision"),
    ("threads", "threads"), ("p50", "p50 ms"), ("p95", "p95 ms"), ("load", "load ms"),
    ("peak_rss", "peak RSS MB"), ("temp_max", "temp max °C"), ("flags", "flags"),
]
_NUMERIC = {"threads", "p50", "p95", "load", "peak_rss", "temp_max", "watts", "mj"}
# Shown only when some result measured energy (a Pi 5): on a fleet without one, two columns of
# dashes would say nothing.
ENERGY_COLUMNS = [("watts", "W"), ("mj", "mJ/inf")]
ENERGY_CAPTION = ("W = mean board power during the timed runs (vcgencmd pmic_read_adc, Raspberry "
                  "Pi 5 only; '-' elsewhere); mJ/inf = W x timed seconds / runs.")
STATUS_STYLES = {"failed": "red", "invalid": "yellow", "ok": ""}
VERDICT_STYLES = {"slower": "red", "faster": "green"}
SENSORS_UNKNOWN = "sensors unknown"

# Why a row is flagged, in words (the agent's words: agent/sensors.py THROTTLE_BITS, the
# get_throttled bits of DESIGN, and agent/sampler.py's own checks).
FLAG_NOTES = {
    "under_voltage": "the supply voltage dropped too low (weak power supply or cable)",
    "frequency_capped": "the firmware capped the ARM clock",
    "throttled": "the firmware throttled the CPU",
    "soft_temp_limit": "the soft temperature limit lowered the clocks",
    "temp_over_80c": "the SoC reached 80 °C, where the firmware starts to throttle",
    "frequency_drop": "the CPU clock fell during the timed runs (capping under load)",
    SENSORS_UNKNOWN: "temperature and throttle state could not be read, so throttling cannot "
                     "be ruled out",
}


# -- formatting ----------------------------------------------------------------------------
def format_number(value: float | None) -> str | None:
    """Three significant figures without losing integer digits (see module docstring)."""
    return significant(value)


def format_rtf(value: float | None) -> str | None:
    """A real-time factor in plain decimals, three significant figures: 0.00217, 0.0000591
    (not 5.91e-05: a reader compares these at a glance, and an exponent hides the size)."""
    return significant(value, max_decimals=12)


def format_temp(value: float | None) -> str | None:
    return None if value is None else f"{value:.1f}"


# CSV columns -> decimals kept (module docstring): what was measured, nothing more.
CSV_PRECISION = {
    "p50_ms": 4, "p95_ms": 4, "first_inference_ms": 4, "load_ms": 3, "peak_rss_mb": 2,
    "temp_c_max": 1, "mean_w": 3, "mj_per_inference": 4,
    "p50_a": 4, "p50_b": 4, "ratio": 4, "ci_low": 4, "ci_high": 4,
    "accuracy": 4, "precision": 4, "recall": 4, "f1": 4, "roc_auc": 4,
    "p50_pre_ms": 4, "p50_infer_ms": 4,
}
CSV_SIGNIFICANT = {"p_value": 3}


def csv_number(key: str, value: Any) -> Any:
    """``value`` rounded for CSV column ``key`` (CSV_PRECISION / CSV_SIGNIFICANT); anything
    else (ints, text, None, a column with no rule) as it is."""
    if isinstance(value, bool) or not isinstance(value, float) or not math.isfinite(value):
        return value
    if key in CSV_PRECISION:
        rounded = round(value, CSV_PRECISION[key])
        return 0.0 if rounded == 0 else rounded  # no "-0.0"
    if key in CSV_SIGNIFICANT and value != 0:
        return float(f"{value:.{CSV_SIGNIFICANT[key]}g}")
    return value


def format_ratio(value: float | None) -> str | None:
    return None if value is None else f"{value:.3f}"


def format_ci(low: float | None, high: float | None) -> str | None:
    return None if low is None or high is None else f"{low:.3f}–{high:.3f}"


def format_p(value: float | None) -> str | None:
    """p below 0.001 as ``<0.001``: further digits only reflect the asymptotic approximation."""
    if value is None:
        return None
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _status(result: Result) -> str:
    if not result.get("ok"):
        return "failed"
    return "invalid" if result.get("valid") is False else "ok"


def _flag_words(result: Result) -> list[str]:
    """The flags a reader must see: the error, the throttle flags, unknown sensors."""
    if not result.get("ok"):
        return [f"failed: {result.get('error') or 'unknown error'}"]
    words = [str(flag) for flag in result.get("flags") or []]
    if (result.get("telemetry") or {}).get("status", "unknown") == "unknown":
        words.append(SENSORS_UNKNOWN)
    if result.get("valid") is False and not words:
        words.append("invalid")
    return words


def _model(result: Result) -> str:
    bundle = result.get("bundle") or {}
    return f"{bundle.get('name', '?')}@{bundle.get('version', '?')}"


def has_energy(results: Iterable[Result]) -> bool:
    """Whether any result carries a measured energy figure."""
    return any((r.get("energy") or {}).get("available") for r in results)


def _columns(results: Sequence[Result]) -> list[tuple[str, str]]:
    if not has_energy(results):
        return COLUMNS
    return COLUMNS[:-1] + ENERGY_COLUMNS + COLUMNS[-1:]


def report_rows(results: Iterable[Result]) -> list[dict[str, Any]]:
    """Display rows: the ``COLUMNS`` keys as strings (None = not measured) plus ``status``.

    ``status`` is "ok", "invalid" (measured, but throttled/under-volted) or "failed", for
    styling. Simulated devices read "pi5-a (sim)": their latencies are real measurements of the
    host they run on, not of a Pi.
    """
    results = list(results)
    energy = has_energy(results)
    rows = []
    for r in results:
        latency = r.get("latency_ms") or {}
        device = str(r.get("device")) + (" (sim)" if r.get("simulated") else "")
        rows.append({
            "model": _model(r), "device": device, "precision": r.get("precision"),
            "threads": None if r.get("threads") is None else str(r["threads"]),
            "p50": format_number(latency.get("p50")), "p95": format_number(latency.get("p95")),
            "load": format_number(r.get("load_ms")),
            "peak_rss": format_number(r.get("peak_rss_mb")),
            "temp_max": format_temp((r.get("telemetry") or {}).get("temp_c_max")),
            "flags": ", ".join(_flag_words(r)) or None,
            "status": _status(r),
        })
        if energy:
            measured = r.get("energy") or {}
            rows[-1]["watts"] = format_number(measured.get("mean_w"))
            rows[-1]["mj"] = format_number(measured.get("mj_per_inference"))
    return rows


def flag_notes(results: Iterable[Result]) -> list[str]:
    """One line per flag that occurs in ``results``, explaining it (the table's caption)."""
    seen: list[str] = []
    for r in results:
        if r.get("ok"):
            for word in _flag_words(r):
                if word not in seen:
                    seen.append(word)
    return [f"{w}: {FLAG_NOTES.get(w, 'reported by the device')}" for w in seen]


def input_notes(results: Iterable[Result]) -> list[str]:
    """One line per input whose size was assumed (no ``--shape``: a batch of 1, a
    preprocessor_config's feature dims), as the results' ``inputs`` say, e.g. "input
    input_values 1x1024x128: batch_size = 1 assumed (named like a batch dimension...)"."""
    seen: list[str] = []
    for r in results:
        for spec in r.get("inputs") or []:
            assumed = spec.get("assumed") if isinstance(spec, dict) else None
            if not assumed:
                continue
            shape = "x".join(str(d) for d in spec.get("shape") or []) or "scalar"
            said = "; ".join(f"{a.get('name') or 'dimension ' + str(a.get('dimension'))} = "
                             f"{a.get('size')} ({a.get('from')})" for a in assumed)
            line = f"input {spec.get('name')} {shape}, assumed: {said}"
            if line not in seen:
                seen.append(line)
    return seen


def state_note(run: dict[str, Any]) -> str | None:
    """The line an interrupted run's report carries (``runs.run_public``): why it stopped,
    what is kept, and that it gets no verdict; None for any other state."""
    if run.get("state") != "interrupted":
        return None
    return (f"interrupted: {run.get('state_reason') or 'it stopped before it finished'}. "
            "The results shown finished before that; an interrupted run gets no verdict.")


# -- rich ----------------------------------------------------------------------------------
def text_cell(value: Any, style: str = "") -> Text:
    """A table cell: user-controlled text never read as markup, "-" for nothing."""
    if value is None or value == "":
        return Text("-", style="dim")
    return Text(str(value), style=style)


def render_table(results: Sequence[Result], title: str | None) -> Table:
    """The report as a rich table; invalid rows yellow, failed rows red, flags explained."""
    rows = report_rows(results)
    caption = ["Latency per inference in ms (p50/p95 over the timed runs); load = model load "
               "time; peak RSS = the process's peak resident memory; temp max = hottest "
               "reading during the run."]
    if any(row["status"] == "invalid" for row in rows):
        caption.append("Yellow rows were measured while throttled or under-volted: "
                       "not comparable with clean ones, and left out of comparisons "
                       "unless included on request.")
    if any(row["status"] == "failed" for row in rows):
        caption.append("Red rows failed: the error is in the flags column.")
    columns = _columns(results)
    if columns is not COLUMNS:
        caption.append(ENERGY_CAPTION)
    caption.extend(flag_notes(results))
    caption.extend(input_notes(results))
    table = Table(title=None if title is None else Text(title), title_justify="left",
                  header_style="bold", box=None, pad_edge=False,
                  caption=Text("\n".join(caption), style="dim"), caption_justify="left")
    for key, heading in columns:
        table.add_column(heading, justify="right" if key in _NUMERIC else "left")
    for row in rows:
        table.add_row(*(text_cell(row[key]) for key, _ in columns),
                      style=STATUS_STYLES[row["status"]])
    return table


# -- Markdown and CSV ----------------------------------------------------------------------
def _md_escape(value: Any) -> str:
    """A GitHub table cell: backslashes and pipes escaped, line breaks flattened."""
    if value is None or value == "":
        return "-"
    text = str(value).replace("\\", "\\\\").replace("|", "\\|")
    return " ".join(text.splitlines())


def markdown_table(headings: Sequence[str], right: Sequence[bool],
                   rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (``right``: right-align that column), cells escaped;
    shared by the bench, comparison and eval reports (orchestrator.measure.evalreport) so all export
    the same way."""
    lines = ["| " + " | ".join(_md_escape(h) for h in headings) + " |",
             "| " + " | ".join("---:" if r else "---" for r in right) + " |"]
    lines += ["| " + " | ".join(_md_escape(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_markdown(results: Sequence[Result]) -> str:
    """The report as a GitHub-flavoured Markdown table (numbers right-aligned)."""
    columns = _columns(results)
    table = markdown_table([h for _, h in columns], [k in _NUMERIC for k, _ in columns],
                           ([row[k] for k, _ in columns] for row in report_rows(results)))
    notes = input_notes(results)
    return table + ("\n" + "\n".join(f"- {n}" for n in notes) + "\n" if notes else "")


CSV_FIELDS = ["run_id", "model", "device", "simulated", "precision", "threads", "status",
              "p50_ms", "p95_ms", "load_ms", "first_inference_ms", "peak_rss_mb", "temp_c_max",
              "telemetry", "flags", "error"]


def csv_text(fields: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    """Header row, then rows; None is empty, booleans lowercase, ``\\n`` line ends. Shared by
    every CSV export (bench, comparison, eval) so spreadsheets read them alike."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("true" if v else "false") if isinstance(v, bool)
                         else "" if v is None else csv_number(k, v) for k, v in row.items()})
    return out.getvalue()


ENERGY_CSV_FIELDS = ["mean_w", "mj_per_inference"]


def to_csv(results: Sequence[Result]) -> str:
    """The report for spreadsheets and scripts: numbers to the precision they were measured
    at (CSV_PRECISION); flags joined by ";".
    ``mean_w`` and ``mj_per_inference`` columns are added when some result measured energy."""
    energy = has_energy(results)

    def row(r: Result) -> dict[str, Any]:
        latency = r.get("latency_ms") or {}
        telemetry = r.get("telemetry") or {}
        measured = {k: (r.get("energy") or {}).get(k) for k in ENERGY_CSV_FIELDS} if energy \
            else {}
        return {
            "run_id": r.get("run_id"), "model": _model(r), "device": r.get("device"),
            "simulated": bool(r.get("simulated")), "precision": r.get("precision"),
            "threads": r.get("threads"), "status": _status(r),
            "p50_ms": latency.get("p50"), "p95_ms": latency.get("p95"),
            "load_ms": r.get("load_ms"), "first_inference_ms": r.get("first_inference_ms"),
            "peak_rss_mb": r.get("peak_rss_mb"), "temp_c_max": telemetry.get("temp_c_max"),
            "telemetry": telemetry.get("status", "unknown"),
            "flags": ";".join(str(f) for f in r.get("flags") or []), "error": r.get("error"),
            **measured,
        }
    return csv_text(CSV_FIELDS + (ENERGY_CSV_FIELDS if energy else []), (row(r) for r in results))


# -- comparisons (rows from pairing.compare_runs) ----------------------------------------------
COMPARISON_HEADINGS = ["device", "threads", "A p50", "B p50", "B/A", "95% CI", "p", "verdict"]
_COMPARISON_RIGHT = [False, True, True, True, True, True, True, False]
COMPARISON_CAPTION = (
    "B/A = median latency of B / median of A: above 1 means B is slower. 95% CI: percentile "
    "bootstrap of that ratio; p: two-sided Mann-Whitney U. A verdict needs p < 0.05 and a CI "
    "that excludes 1; throttled, failed and one-sided results are excluded, with the reason.")


def _comparison_values(row: dict[str, Any]) -> list[Any]:
    device = str(row["device"]) + (" (sim)" if row.get("simulated") else "")
    p50s = [None if v is None else f"{format_number(v)} ms" for v in (row["p50_a"], row["p50_b"])]
    return [device, row["threads"], *p50s, format_ratio(row["ratio"]),
            format_ci(row["ci_low"], row["ci_high"]), format_p(row["p_value"])]


def _verdict_text(row: dict[str, Any]) -> str:
    if row.get("excluded"):
        return f"excluded: {row['excluded']}"
    verdict = row.get("verdict") or "-"
    return f"{verdict} ({row['note']})" if row.get("note") else verdict


def render_comparison(rows: Sequence[dict[str, Any]], title: str | None = None) -> Table:
    """``compare_runs`` rows as a rich table; slower in red, faster in green, excluded dim."""
    table = Table(title=None if title is None else Text(title), title_justify="left",
                  header_style="bold", box=None, pad_edge=False,
                  caption=Text(COMPARISON_CAPTION, style="dim"), caption_justify="left")
    for heading, right in zip(COMPARISON_HEADINGS, _COMPARISON_RIGHT, strict=True):
        table.add_column(heading, justify="right" if right else "left")
    for row in rows:
        style = "dim" if row.get("excluded") else VERDICT_STYLES.get(row.get("verdict"), "")
        table.add_row(*(text_cell(v) for v in _comparison_values(row)),
                      text_cell(_verdict_text(row), style))
    return table


def comparison_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """``compare_runs`` rows as a GitHub Markdown table."""
    return markdown_table(COMPARISON_HEADINGS, _COMPARISON_RIGHT,
                     ([*_comparison_values(row), _verdict_text(row)] for row in rows))


COMPARISON_FIELDS = ["device", "threads", "simulated", "bundle_a", "bundle_b", "p50_a", "p50_b",
                     "n_a", "n_b", "ratio", "ci_low", "ci_high", "p_value", "verdict",
                     "excluded", "note"]


def comparison_csv(rows: Sequence[dict[str, Any]]) -> str:
    """``compare_runs`` rows as CSV, numbers to their precision (CSV_PRECISION)."""
    return csv_text(COMPARISON_FIELDS, ({k: row.get(k) for k in COMPARISON_FIELDS} for row in rows))
