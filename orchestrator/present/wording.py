"""Small rules of how EdgeFleet words things, written once: counts with the right plural ("1
device", "2 devices"), and times in the unit a reader compares them in (latencies in ms).

Light on purpose (no numpy, no rich): every command's output goes through it.
"""

from __future__ import annotations

import math


def plural(count: int | float | None, singular: str, plural_form: str | None = None) -> str:
    """``"1 device"``, ``"2 devices"``, ``"0 devices"``; ``plural_form`` for irregular
    words. A count of None reads "no" (``"no devices"``)."""
    many = plural_form or f"{singular}s"
    if count is None:
        return f"no {many}"
    shown = str(count) if isinstance(count, int) else f"{count:g}"
    return f"{shown} {singular if count == 1 else many}"


def verb(count: int | float | None, singular: str, plural_form: str) -> str:
    """The verb agreeing with ``count``: ``verb(1, "keeps", "keep")`` -> "keeps"."""
    return singular if count == 1 else plural_form


def significant(value: float | None, max_decimals: int = 3) -> str | None:
    """Three significant figures without dropping integer digits (0.412, 3.46, 12.3, 1235), at
    most ``max_decimals`` decimals; plain decimals, never an exponent. None for no value."""
    if value is None or not math.isfinite(value):
        return None
    if value == 0:
        return "0"
    decimals = min(max_decimals, max(0, 2 - math.floor(math.log10(abs(value)))))
    return f"{value:.{decimals}f}"


def ms(value: float | None) -> str | None:
    """A latency in milliseconds (0.412 ms, 3.46 ms, 12.3 ms, 1235 ms): the same rounding as
    the report tables."""
    text = significant(value)
    return None if text is None else f"{text} ms"
