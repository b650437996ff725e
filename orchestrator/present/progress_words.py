"""How far a measurement is, in words and as a fraction: one rule for the CLI's bars
(output.MeasureProgress), ``edgefleet jobs show`` and the web's job pages (``device_rows``).

Why a rule of its own: the timed loop of a benchmark ends when *both* ``runs`` timed runs and
``min_seconds`` seconds are done, so with ``--min-seconds`` a small model makes thousands of
runs for a target of 30, and "timed 46378/300" or "6089 / 6" reads as a bug. Each condition
is shown against its own total, capped at it (``300/300 runs, 12/30 s``), and the fraction
done is that of the condition furthest from done: the loop ends when the slower one does.

Light on purpose (no numpy, no ORM): every CLI command that shows progress imports it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def fraction(entry: Mapping[str, Any]) -> float | None:
    """0..1 done of a progress entry (``done``/``total``, and ``seconds``/``min_seconds`` when
    the event has them), or None when nothing can be said (no total yet)."""
    done, total = _number(entry.get("done")), _number(entry.get("total"))
    parts = []
    if done is not None and total is not None and total > 0:
        parts.append(min(1.0, max(0.0, done / total)))
    seconds, min_seconds = _number(entry.get("seconds")), _number(entry.get("min_seconds"))
    if seconds is not None and min_seconds is not None and min_seconds > 0:
        parts.append(min(1.0, max(0.0, seconds / min_seconds)))
    return min(parts) if parts else None


def counts(entry: Mapping[str, Any], unit: str = "runs") -> str | None:
    """``"12/30 runs"``, or ``"300/300 runs, 12/30 s"`` when seconds decide too; never a count
    past its total (a count the agent reports beyond it is shown as the total: that condition
    is met). None when the entry has no total."""
    done, total = _number(entry.get("done")), _number(entry.get("total"))
    if total is None or total <= 0:
        return None
    shown = int(min(max(done or 0.0, 0.0), total))
    text = f"{shown}/{int(total)}" + (f" {unit}" if unit else "")
    seconds, min_seconds = _number(entry.get("seconds")), _number(entry.get("min_seconds"))
    if seconds is not None and min_seconds is not None and min_seconds > 0:
        text += f", {_seconds(min(max(seconds, 0.0), min_seconds))}/{_seconds(min_seconds)} s"
    return text


def unit_of(entry: Mapping[str, Any], kind: str = "bench") -> str:
    """What ``done`` counts in a phase, when the phase's name does not say it already: runs of
    the model (warmup, timed); nothing for a load (1/1) or an eval's "samples" phase."""
    phase = entry.get("phase")
    if phase in ("load", "samples") or (kind == "eval" and phase not in ("warmup", "timed")):
        return ""
    return "runs"


def device_rows(progress: dict[str, Any] | None, kind: str = "bench") -> list[dict[str, Any]]:
    """Per-device rows from a job's ``progress`` (push: state/bytes/total; bench and eval:
    threads/phase/done/total, plus seconds/min_seconds when --min-seconds decides the timed
    loop), with a percentage when one can be given and ``counts`` in words
    (``counts``: never a count past its total)."""
    rows = []
    for name, entry in sorted(((progress or {}).get("devices") or {}).items()):
        entry = dict(entry or {})
        is_bytes = "bytes" in entry
        if is_bytes:
            done, total = entry.get("bytes"), entry.get("total")
            percent = None
            if isinstance(done, int | float) and isinstance(total, int | float) and total > 0:
                percent = max(0.0, min(100.0, 100.0 * done / total))
            shown = None
        else:
            part = fraction(entry)
            percent = None if part is None else 100.0 * part
            shown = counts(entry, unit_of(entry, kind))
        rows.append(entry | {"device": name, "percent": percent, "is_bytes": is_bytes,
                             "counts": shown})
    return rows


def rollout_of(job: Mapping[str, Any]) -> dict[str, Any] | None:
    """A staged push's batches (``jobs.rollout``): final in the job's result, live (or as a
    killed one left them) in its progress; None for other jobs."""
    rollout = ((job.get("result") or {}).get("rollout")
               or (job.get("progress") or {}).get("rollout"))
    return rollout if isinstance(rollout, dict) else None
