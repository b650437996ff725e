"""Which results of two runs to compare, the comparison of each pair, and the CI gate.

Split from ``stats`` (the statistics themselves: the bootstrap, the rank tests, rounds): what
lives here is the bookkeeping around them that ``runs compare``, ``/api/compare``, the Compare
page, ``bench --baseline`` and JUnit share. A pair is one (device, thread count) in runs A and
B; invalid (throttled) results are left out unless asked for, with the reason kept per row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.measure.stats import (
    Result,
    compare_rounds,
    compare_samples,
    median_of,
    split_rounds,
)


@dataclass
class Pair:
    """The results of one (device, threads) in runs A and B, or why they are not compared.

    ``excluded`` names the reason ("only in A", "B throttled (under_voltage)", "A failed: ...");
    ``note`` records what a reader must know about an included pair (an invalid result that was
    included on request).
    """

    device: str
    threads: int | None
    a: Result | None
    b: Result | None
    excluded: str | None = None
    note: str | None = None


def _key(result: Result) -> tuple[str, int | None]:
    return str(result.get("device")), result.get("threads")


def _sort_key(key: tuple[str, int | None]) -> tuple[str, bool, int]:
    return key[0], key[1] is None, key[1] or 0


def _invalid_reason(side: str, result: Result) -> str:
    flags = ", ".join(str(f) for f in result.get("flags") or [])
    status = (result.get("telemetry") or {}).get("status")
    what = "throttled" if status == "throttled" else "invalid"
    return f"{side} {what} ({flags})" if flags else f"{side} {what}"


def _index(results: Sequence[Result]) -> tuple[dict, set]:
    index: dict[tuple[str, int | None], Result] = {}
    duplicates = set()
    for result in results:
        key = _key(result)
        if key in index:
            duplicates.add(key)
        index[key] = result
    return index, duplicates


def pair_results(run_a: Sequence[Result], run_b: Sequence[Result],
                 include_invalid: bool = False) -> list[Pair]:
    """Pair results by (device, threads), sorted; every key of either run appears once.

    A failed result, an invalid one (throttled, under-volted: unless ``include_invalid``), a key
    present in only one run, or a key present twice in one run (which measurement would count?)
    makes the pair ``excluded`` with the reason, so a report can say what was not compared.
    """
    index_a, dup_a = _index(run_a)
    index_b, dup_b = _index(run_b)
    pairs = []
    for key in sorted(index_a.keys() | index_b.keys(), key=_sort_key):
        a, b = index_a.get(key), index_b.get(key)
        pair = Pair(key[0], key[1], a, b)
        if a is None or b is None:
            pair.excluded = "only in A" if b is None else "only in B"
            pairs.append(pair)
            continue
        reasons, notes = [], []
        for side, result, dups in (("A", a, dup_a), ("B", b, dup_b)):
            if key in dups:
                reasons.append(f"{side} has several results for this device and thread count")
            elif not result.get("ok"):
                reasons.append(f"{side} failed: {result.get('error') or 'unknown error'}")
            elif result.get("valid") is False:
                reason = _invalid_reason(side, result)
                if include_invalid:
                    notes.append(f"{reason} included")
                else:
                    reasons.append(reason)
        pair.excluded = "; ".join(reasons) or None
        pair.note = "; ".join(notes) or None
        pairs.append(pair)
    return pairs


def bundle_label(result: Result | None) -> str | None:
    """``name@version`` of a result's bundle, as users type it (``edgefleet bench N@V``)."""
    if result is None:
        return None
    bundle = result.get("bundle") or {}
    return f"{bundle.get('name', '?')}@{bundle.get('version', '?')}"


def _p50(result: Result | None) -> float | None:
    if result is None or not result.get("ok"):
        return None
    samples = result.get("latencies_ms")
    if samples:
        return median_of(samples)
    return (result.get("latency_ms") or {}).get("p50")


def compare_runs(run_a: Sequence[Result], run_b: Sequence[Result],
                 include_invalid: bool = False) -> list[dict[str, Any]]:
    """One row per (device, threads): B against A, or the reason the pair was not compared.

    Rows carry device, threads, simulated, bundle_a, bundle_b, p50_a, p50_b (ms), ratio,
    ci_low, ci_high, p_value, verdict (None when excluded), excluded, note, n_a, n_b. The raw
    per-inference latencies are needed on both sides: summaries alone cannot give a CI.
    """
    rows = []
    for pair in pair_results(run_a, run_b, include_invalid):
        row: dict[str, Any] = {
            "device": pair.device, "threads": pair.threads,
            "simulated": any(bool(r and r.get("simulated")) for r in (pair.a, pair.b)),
            "bundle_a": bundle_label(pair.a), "bundle_b": bundle_label(pair.b),
            "p50_a": _p50(pair.a), "p50_b": _p50(pair.b),
            "ratio": None, "ci_low": None, "ci_high": None, "p_value": None, "verdict": None,
            "excluded": pair.excluded, "note": pair.note, "n_a": None, "n_b": None,
        }
        if pair.excluded is None:
            missing = [side for side, r in (("A", pair.a), ("B", pair.b))
                       if not (r or {}).get("latencies_ms")]
            if missing:
                row["excluded"] = " and ".join(missing) + " without per-inference latencies"
            else:
                try:
                    rounds_a, rounds_b = split_rounds(pair.a), split_rounds(pair.b)
                    if rounds_a and rounds_b:
                        c = compare_rounds(rounds_a, rounds_b)
                    else:
                        c = compare_samples(pair.a["latencies_ms"], pair.b["latencies_ms"])
                except ValueError as exc:
                    row["excluded"] = str(exc)
                else:
                    row.update(ratio=c.ratio, ci_low=c.ci_low, ci_high=c.ci_high,
                               p_value=c.p_value, verdict=c.verdict, n_a=c.n_a, n_b=c.n_b,
                               note="; ".join(n for n in (pair.note, c.note) if n) or None)
        rows.append(row)
    return rows


def gate(rows: Sequence[dict[str, Any]], max_regression: float) -> list[dict[str, Any]]:
    """The rows that fail a CI gate: significantly slower *and* by more than the bound.

    Both conditions, because a significant 1% slowdown on a quiet machine is real but not worth
    failing a build for, and a 30% point estimate with a CI straddling 1 is not evidence.
    ``max_regression`` is a fraction (0.05 = 5%; see ``parse_percent``).
    """
    if not (math.isfinite(max_regression) and max_regression >= 0):
        raise ValueError(f"max regression must be a non-negative fraction, got {max_regression}")
    return [row for row in rows
            if row.get("verdict") == "slower" and row.get("ratio") is not None
            and row["ratio"] > 1 + max_regression]


def parse_percent(text: str) -> float:
    """``"5%"`` -> 0.05, ``"0.05"`` -> 0.05, ``"5"`` -> 0.05.

    Without a ``%`` sign a value below 1 is read as a fraction and 1 or more as percent: nobody
    means "allow a 500% regression" by ``5``, and ``0.05`` reads as a fraction everywhere.
    """
    raw = str(text).strip()
    number = raw[:-1].strip() if raw.endswith("%") else raw
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or not number:
        raise ValueError(f"not a regression bound: {text!r} (use e.g. 5%, 5 or 0.05)")
    if raw.endswith("%") or value >= 1:
        return value / 100
    return value
