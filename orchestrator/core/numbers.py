"""Numbers from untrusted JSON (a device's answer, a row it once wrote): a finite int or float,
or None. Why one place: ``True`` is an int and ``"95"`` compares with nothing, so a hostile
device's ``"temp_c": "95"`` stored as is made every Fleet page and /metrics fail with a 500."""

from __future__ import annotations

import math
from typing import Any


def finite(value: Any) -> int | float | None:
    """``value`` if it is a finite int or float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def count(value: Any, limit: int = 2**63 - 1) -> int | None:
    """``value`` if it is an int in [0, limit] (a byte count, a bit field), else None."""
    number = finite(value)
    return number if isinstance(number, int) and 0 <= number <= limit else None
