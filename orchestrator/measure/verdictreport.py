"""Deployment verdicts as tables (rows from ``verdicts.verdicts_for_run``): can each device keep
up with the stream, at which thread count, with what headroom and energy per window; for the
terminal (``runs verdict``, the demo) and the eval page.

Split from ``reports`` (benchmark and comparison tables), whose number formatting and cells it
uses, so a verdict and a benchmark table round the same way.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from orchestrator.measure.reports import format_number, format_rtf, text_cell
from orchestrator.present.wording import plural

# In a verdict a "run" is a window: for an eval, reading the sample, preprocessing it and the
# inference (what the timed loop's energy was spent on); for a benchmark, the inference alone.
VERDICT_ENERGY_CAPTION = ("W = mean board power during the timed runs (vcgencmd pmic_read_adc, "
                          "Raspberry Pi 5 only; '-' elsewhere); mJ/window = W x timed seconds / "
                          "windows, the board's energy per window as its latency is measured "
                          "here.")

VERDICT_HEADINGS = ["device", "threads", "p50 ms", "p99 window ms", "hop s", "keeps up",
                    "headroom", "RTF", "worst-case delay s", "W", "mJ/window", "valid"]
# Which verdict columns are right-aligned (numbers), for the terminal table and the web page.
VERDICT_RIGHT = [False, True, True, True, True, False, True, True, True, True, True, False]


def verdict_values(row: dict[str, Any]) -> list[Any]:
    """One verdict row's cells in VERDICT_HEADINGS order, formatted; the terminal table and the
    web page (web.pages.evals) show the same cells."""
    device = str(row["device"]) + (" (sim)" if row.get("simulated") else "")
    energy = row.get("energy") or {}
    watts = format_number(energy.get("mean_w")) if energy.get("available") else None
    mj = format_number(energy.get("mj_per_inference")) if energy.get("available") else None
    if not row.get("ok"):
        return [device, row.get("threads"), *[None] * 7, watts, mj,
                f"failed: {row.get('error') or 'unknown error'}"]
    headroom = f"{format_number(row['headroom_s'] * 1000)} ms ({row['headroom_pct']:.0f}%)"
    valid = {True: "yes", False: "no: " + ", ".join(row.get("flags") or ["flagged"]),
             None: "unknown"}[row.get("valid")]
    return [device, row["threads"], format_number(row["p50_ms"]), format_number(row["p99_ms"]),
            f"{row['hop_s']:g}", "yes" if row["keeps_up"] else "NO", headroom,
            format_rtf(row["rtf"]), f"{row['worst_case_delay_s']:.3g}", watts, mj, valid]


def _profile_words(report: dict[str, Any]) -> str:
    p = report["profile"]
    return (f"Profile: {p['window_s']:g} s windows every {p['hop_s']:g} s (overlap "
            f"{p['overlap'] * 100:.0f}%), threshold {p['threshold']:g}, {p['min_positive']} "
            f"positive of {plural(p['confirm_windows'], 'window')}; from "
            f"{report['profile_source']}.")


def verdict_caption(report: dict[str, Any]) -> list[str]:
    """The profile, how the per-window latency was measured, and what the columns mean: one
    sentence each (the CLI's caption and the run page's share them)."""
    bases = sorted({row["basis"] for row in report["rows"] if row.get("basis")})
    caption = [_profile_words(report),
               "Window latency = " + "; ".join(bases) + "." if bases else "",
               "Keeps up: p99 window latency < hop. Headroom = hop - p99. RTF (real-time "
               "factor) = p50 / window: below 1 is faster than the audio arrives. Worst-case "
               "delay = window + min_positive x hop + p99.",
               VERDICT_ENERGY_CAPTION if any((r.get("energy") or {}).get("available")
                                             for r in report["rows"]) else ""]
    return [c for c in caption if c]


def render_verdicts(report: dict[str, Any]) -> Table:
    """A run's deployment verdicts as a rich table (falling behind in red, throttled in
    yellow), with the profile and how the per-window latency was measured in the caption."""
    caption = verdict_caption(report)
    title = (f"run {report['run_id']}: {report['bundle']['name']}@"
             f"{report['bundle']['version']} — deployment verdicts")
    table = Table(title=Text(title), title_justify="left", header_style="bold", box=None,
                  pad_edge=False, caption=Text("\n".join(caption), style="dim"),
                  caption_justify="left")
    for heading, right in zip(VERDICT_HEADINGS, VERDICT_RIGHT, strict=True):
        table.add_column(heading, justify="right" if right else "left")
    for row in report["rows"]:
        style = ("red" if not row.get("ok") or not row.get("keeps_up") else
                 "yellow" if row.get("valid") is False else "")
        table.add_row(*(text_cell(v) for v in verdict_values(row)), style=style)
    return table


def recommendation_lines(report: dict[str, Any]) -> list[Text]:
    """One line per device: the recommended thread count and why (or why none)."""
    lines = []
    for device, rec in report["recommended"].items():
        if rec["threads"] is None:
            lines.append(Text.assemble((f"{device}: ", "bold"), ("no recommendation", "red"),
                                       f" — {rec['reason']}"))
        else:
            lines.append(Text.assemble((f"{device}: ", "bold"),
                                       (plural(rec["threads"], "thread"), "green"),
                                       f" — {rec['reason']}"))
    return lines
