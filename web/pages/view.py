"""Presentation helpers for the pages: plain functions from service data to what a page shows.

Why a module of its own: the routes stay thin (read, call these, render), the templates stay free
of arithmetic, and each rule a user relies on ("online" = seen in the last 3 minutes, which
throttle bit means which fix, how a histogram is binned) is written once and tested without HTTP.
Nothing here touches the database or the fleet.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from orchestrator.core.numbers import finite
from orchestrator.core.utc import as_utc, parse_utc
from orchestrator.present import advice

ONLINE_WINDOW = timedelta(minutes=3)
TEMP_LIMIT_C = 80.0  # where Pi firmware starts soft throttling (agent/sampler.py TEMP_LIMIT_C)
NOW_MASK = 0xF  # get_throttled "now" bits (DESIGN: bits 0-3)
MAX_CDF_POINTS = 1000  # a CDF line is drawn from at most this many quantiles
TERMINAL_JOB_STATES = frozenset({"succeeded", "failed", "cancelled", "interrupted"})

# get_throttled words (agent/sensors.py THROTTLE_BITS) -> badge text; the fix in plain words
# depends on the board (orchestrator.present.advice: a Pi 4 needs 5V/3A, a Pi 5 5V/5A).
THROTTLE_WORDS: dict[str, str] = {
    "under_voltage": "under-voltage",
    "soft_temp_limit": "soft temp limit",
    "frequency_capped": "frequency capped",
    "throttled": "throttled",
}
HOT_HINT = advice.COOLING


def _moment(value: datetime | str | None) -> datetime | None:
    """A template's time as an aware UTC datetime. Rows' datetimes are aware already
    (models.UTCDateTime); these filters also take ISO text from JSON shapes such as
    ``device_public``, and read any naive input as UTC by the one rule (orchestrator.core.utc)."""
    if value is None:
        return None
    return parse_utc(value) if isinstance(value, str) else as_utc(value)


def ago(value: datetime | str | None, now: datetime | None = None) -> str:
    """"5 min ago": people compare last-seen times at a glance, not timestamps."""
    when = _moment(value)
    if when is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    if seconds < 0:
        return "just now"
    if seconds < 60:
        return f"{int(seconds)} s ago"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} d ago"


def when(value: datetime | str | None) -> str:
    """A timestamp to the minute, in UTC, labelled: what a log or a colleague would quote."""
    moment = _moment(value)
    return "–" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def is_online(last_seen: datetime | str | None, now: datetime | None = None) -> bool:
    when = _moment(last_seen)
    return when is not None and (now or datetime.now(UTC)) - when <= ONLINE_WINDOW


def throttle_badges(flags: dict[str, Any] | None, temp_c: float | None,
                    model: str | None = None) -> list[dict[str, str]]:
    """Badges for the throttle state: "now" bits (happening) before "since boot" (history),
    each with the fix for this board ``model`` (the device's ``pi_model`` fact).

    A sticky bit alone still deserves its hint: a Pi that under-volted once since boot has a
    weak supply even if it is idle now.
    """
    # Rows stored before answers were checked (fleet.answers) may hold anything a device sent.
    flags = flags if isinstance(flags, dict) else {}
    temp_c = finite(temp_c)
    badges: list[dict[str, str]] = []
    now_words = _words(flags.get("now"))
    for when in ("now", "since_boot"):
        for word in _words(flags.get(when)):
            if when == "since_boot" and word in now_words:
                continue
            label = THROTTLE_WORDS.get(word, str(word).replace("_", " "))
            hint = advice.fix_for(str(word), model)
            badges.append({"word": str(word), "label": label, "hint": hint,
                           "when": "now" if when == "now" else "since boot"})
    if temp_c is not None and temp_c >= TEMP_LIMIT_C:
        badges.append({"word": "temp_over_80c", "label": f"over {TEMP_LIMIT_C:.0f} °C",
                       "hint": HOT_HINT, "when": "now"})
    return badges


def _words(value: object) -> list[str]:
    return [w for w in value if isinstance(w, str)] if isinstance(value, list) else []


def hints(badges: Iterable[dict[str, str]]) -> list[str]:
    """The distinct fixes, in badge order."""
    seen: list[str] = []
    for badge in badges:
        if badge["hint"] and badge["hint"] not in seen:
            seen.append(badge["hint"])
    return seen


def device_row(public: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """``devices.device_public`` plus what the fleet table derives from it."""
    badges = throttle_badges(public.get("throttle_flags"), public.get("temp_c"),
                             public.get("pi_model"))
    return public | {"online": is_online(public.get("last_seen"), now),
                     "seen_ago": ago(public.get("last_seen"), now),
                     "badges": badges, "hints": hints(badges),
                     "hot": public.get("temp_c") is not None
                     and public["temp_c"] >= TEMP_LIMIT_C}


def _epoch(value: datetime | str | None) -> float | None:
    when = _moment(value)
    return None if when is None else when.timestamp()


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def telemetry_series(snapshots: Sequence[Any]) -> dict[str, list[Any]]:
    """Columns for a time chart from TelemetrySnapshot rows (oldest first): x in epoch seconds;
    ``throttled`` holds the temperature where a "now" throttle bit was set, else None, so the
    chart marks the event on the temperature line."""
    series: dict[str, list[Any]] = {"x": [], "temp_c": [], "freq_mhz": [], "throttled": []}
    for snap in snapshots:
        temp = _finite(snap.temp_c)
        bits = snap.throttled_bits
        series["x"].append(_epoch(snap.taken_at))
        series["temp_c"].append(temp)
        series["freq_mhz"].append(_finite(snap.freq_mhz))
        series["throttled"].append(temp if bits is not None and bits & NOW_MASK else None)
    return series


def sample_series(samples: Sequence[Sequence[Any]] | None) -> dict[str, list[Any]]:
    """The same columns from a benchmark's sampler rows ``[t_s, temp_c, freq_mhz, throttled]``
    (x in seconds since the sampler started)."""
    series: dict[str, list[Any]] = {"x": [], "temp_c": [], "freq_mhz": [], "throttled": []}
    for sample in samples or []:
        t, temp, freq, bits = (list(sample) + [None] * 4)[:4]
        temp = _finite(temp)
        series["x"].append(_finite(t))
        series["temp_c"].append(temp)
        series["freq_mhz"].append(_finite(freq))
        series["throttled"].append(temp if isinstance(bits, int) and bits & NOW_MASK else None)
    return series


def _finite_values(values: Sequence[Any] | None) -> np.ndarray:
    """The finite numbers among ``values`` as a float array, in order (what ``_finite`` keeps),
    converted in one step when they are plain numbers (a result's latencies always are)."""
    if values is None or len(values) == 0:
        return np.empty(0)
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim != 1:
        array = np.asarray([v for v in values if _finite(v) is not None], dtype=float)
    return array[np.isfinite(array)]


def _percentile(ordered: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear method, numpy's own arithmetic) of an already
    sorted array, without numpy's per-call overhead: a run page bins hundreds of results."""
    n = ordered.size
    virtual = (n - 1) * (q / 100)
    below = math.floor(virtual)
    a, b = float(ordered[below]), float(ordered[min(below + 1, n - 1)])
    t = virtual - below
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def latency_histogram(latencies: Sequence[float] | None) -> dict[str, Any]:
    """Bins by the Freedman-Diaconis rule (robust to the long right tail of Pi latencies),
    capped to 10-60 bins so a 30-run benchmark and a 10^4-run one both read well.

    A few runs far out in the tail (a GC pause, another process on the cores) would squeeze the
    whole body into one bar, so the bins stop at a fence, q3 + 5 IQR (but never below the p90),
    and ``overflow`` counts the runs beyond ``upper``; the CDF next to it shows every run."""
    values = np.sort(_finite_values(latencies))
    if values.size == 0:
        return {"edges": [], "counts": [], "overflow": 0, "upper": None}
    low, high = float(values[0]), float(values[-1])
    q25, q75, p90 = (_percentile(values, q) for q in (25, 75, 90))
    fence = q75 + 5 * (q75 - q25)
    upper = high if fence >= high else max(fence, p90)
    if upper <= low:
        upper = high
    inside = int(np.searchsorted(values, upper, side="right"))  # sorted: the body is a prefix
    overflow = int(values.size - inside)
    if upper <= low:
        return {"edges": [low, low + max(abs(low) * 1e-3, 1e-6)], "counts": [int(values.size)],
                "overflow": 0, "upper": None}
    if not math.isfinite(upper - low):  # a span past the largest float: no bins can cover it
        return {"edges": [], "counts": [], "overflow": 0, "upper": None}
    body = values[:inside]
    q75, q25 = _percentile(body, 75), _percentile(body, 25)
    width = 2 * (q75 - q25) / body.size ** (1 / 3)
    bins = int(np.clip(math.ceil((upper - low) / width) if width > 0 else 10, 10, 60))
    counts, edges = np.histogram(body, bins=bins, range=(low, upper))
    return {"edges": edges.tolist(), "counts": counts.tolist(),
            "overflow": overflow, "upper": upper if overflow else None}


def latency_cdf(latencies: Sequence[float] | None) -> dict[str, list[float]]:
    """Empirical CDF (x = latency ms, y = fraction at or below), thinned to quantiles so a
    10^4-run result embeds a few kB, not every point."""
    values = np.sort(_finite_values(latencies))
    if values.size == 0:
        return {"x": [], "y": []}
    fractions = np.arange(1, values.size + 1) / values.size
    if values.size > MAX_CDF_POINTS:
        index = np.unique(np.linspace(0, values.size - 1, MAX_CDF_POINTS).round().astype(int))
        values, fractions = values[index], fractions[index]
    return {"x": values.tolist(), "y": fractions.tolist()}
