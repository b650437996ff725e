"""Is run B slower than run A? Ratio of medians, a bootstrap CI, a rank test, and a CI gate.

Why these statistics: per-inference latencies on a Pi are right-skewed (GC pauses, a scheduler
tick, a thermal blip), so means chase outliers; the median is what a write-up reports as p50, and
a *ratio* of medians ("B takes 1.2x as long") reads the same for a 3 ms and a 300 ms model.

- The confidence interval comes from ``scipy.stats.bootstrap`` resampling A and B independently
  (a benchmark's runs are not paired) with the statistic median(B) / median(A), using the
  **percentile** method, not BCa: BCa's acceleration term is a jackknife estimate, and the
  jackknife is known to be inconsistent for the median (leave-one-out medians take only two
  values), so its "correction" is noise at n = 30; with timer-quantised, tied latencies most
  resamples equal the observed median, which skews BCa's bias term and makes scipy return NaN
  for degenerate data. The percentile interval needs neither, and it respects monotone
  transforms, so the interval of the ratio is exactly the exp of the interval of the log-ratio.
  It can run a little narrow at small n; that is why a verdict needs a rank test as well.
- p comes from a two-sided Mann-Whitney U test (no normality assumption, ties handled).
- A verdict needs both: p < alpha *and* a CI that excludes 1. Everything is seeded, so the same
  two runs always give the same numbers (a CI gate must not flap).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

MIN_SAMPLES = 3
# Elements per bootstrap batch and sample: bounds memory for long runs (--min-seconds can give
# 10^4+ latencies; 2000 resamples of 10^4 floats would be 160 MB per sample at once).
_BATCH_ELEMENTS = 2_000_000
# scipy >= 1.15 takes ``rng``; 1.11–1.14 only ``random_state`` (pyproject allows >= 1.11).
_RNG_KW = "rng" if "rng" in inspect.signature(sps.bootstrap).parameters else "random_state"

Result = dict[str, Any]


@dataclass(frozen=True)
class Comparison:
    """B against A. ``ratio`` = median(B) / median(A): above 1 means B is slower.

    ``ci_low``/``ci_high``/``p_value`` are None when they cannot be computed (too few samples);
    ``note`` then says why, and the verdict is "no significant change".
    """

    ratio: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    verdict: str
    n_a: int
    n_b: int
    median_a: float | None
    median_b: float | None
    note: str | None = None


def _ratio_of_medians(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Vectorised statistic for ``scipy.stats.bootstrap`` (resamples along ``axis``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.median(b, axis=axis) / np.median(a, axis=axis)


def _as_sample(values: Sequence[float], label: str) -> np.ndarray:
    sample = np.asarray(values, dtype=float).ravel()
    if not np.all(np.isfinite(sample)) or np.any(sample < 0):
        raise ValueError(f"latency samples of {label} must be finite and non-negative")
    return sample


def compare_samples(a: Sequence[float], b: Sequence[float], *, n_resamples: int = 2000,
                    confidence: float = 0.95, alpha: float = 0.05, seed: int = 0) -> Comparison:
    """Compare two latency samples (ms); see the module docstring for the method.

    Degenerate inputs (fewer than 3 samples, a zero median, two identical constant samples) give
    "no significant change" with a ``note``, never an exception: one odd device must not break
    the comparison of a whole fleet. Non-finite or negative latencies are malformed data and
    raise ValueError.
    """
    xa, xb = _as_sample(a, "A"), _as_sample(b, "B")
    n_a, n_b = len(xa), len(xb)
    med_a = float(np.median(xa)) if n_a else None
    med_b = float(np.median(xb)) if n_b else None
    ratio = med_b / med_a if med_a and med_b is not None else None

    def inconclusive(note: str, p_value: float | None = None, ci: tuple | None = None,
                     ) -> Comparison:
        low, high = ci if ci else (None, None)
        return Comparison(ratio, low, high, p_value, "no significant change", n_a, n_b,
                          med_a, med_b, note)

    if n_a < MIN_SAMPLES or n_b < MIN_SAMPLES:
        return inconclusive(f"too few samples (A: {n_a}, B: {n_b}; need {MIN_SAMPLES} each)")
    if not med_a:
        return inconclusive("median of A is 0 ms: the ratio is undefined")
    if np.ptp(xa) == 0 and np.ptp(xb) == 0 and med_a == med_b:
        return inconclusive("both samples are the same constant", 1.0, (1.0, 1.0))

    p_value = float(sps.mannwhitneyu(xa, xb, alternative="two-sided").pvalue)
    batch = max(1, _BATCH_ELEMENTS // max(n_a, n_b))
    with warnings.catch_warnings():
        # Infinite resampled ratios (A with 0 ms readings) warn; they are checked for below.
        warnings.simplefilter("ignore", RuntimeWarning)
        boot = sps.bootstrap((xa, xb), _ratio_of_medians, n_resamples=n_resamples,
                             batch=batch, vectorized=True, paired=False, axis=-1,
                             confidence_level=confidence, method="percentile",
                             **{_RNG_KW: np.random.default_rng(seed)})
    low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        # Resamples of A with a zero median (a sample with many 0 ms readings).
        return inconclusive("the bootstrap interval is unbounded (A has 0 ms readings)",
                            p_value)

    if p_value < alpha and low > 1:
        verdict = "slower"
    elif p_value < alpha and high < 1:
        verdict = "faster"
    else:
        verdict = "no significant change"
    return Comparison(ratio, low, high, p_value, verdict, n_a, n_b, med_a, med_b)


def compare_rounds(rounds_a: Sequence[Sequence[float]], rounds_b: Sequence[Sequence[float]], *,
                   n_resamples: int = 2000, confidence: float = 0.95, alpha: float = 0.05,
                   seed: int = 0) -> Comparison:
    """Compare two interleaved benchmarks whose samples come in rounds (one process each).

    Why not pool the samples: a fresh process has its own speed (memory placement, huge pages,
    a VM's neighbours) — on the test machines p50 varied 2.1-3.5 ms between processes of the
    same model while varying ~5% within one. Pooled samples are then far from independent and
    Mann-Whitney on them calls noise significant. The round is the unit of replication here:
    Mann-Whitney U on per-round medians, and a cluster bootstrap (resample whole rounds) for
    the CI of the ratio of pooled medians.
    """
    xa = [_as_sample(r, "A") for r in rounds_a if len(r)]
    xb = [_as_sample(r, "B") for r in rounds_b if len(r)]
    pooled_a, pooled_b = np.concatenate(xa), np.concatenate(xb)
    med_a, med_b = float(np.median(pooled_a)), float(np.median(pooled_b))
    ratio = med_b / med_a if med_a else None
    n_a, n_b = len(pooled_a), len(pooled_b)
    note = f"compared per round ({len(xa)} vs {len(xb)} rounds)"
    if len(xa) < 2 or len(xb) < 2 or not med_a:
        return Comparison(ratio, None, None, None, "no significant change", n_a, n_b, med_a,
                          med_b, note + "; too few rounds for a verdict")
    p_value = float(sps.mannwhitneyu([np.median(r) for r in xa], [np.median(r) for r in xb],
                                     alternative="two-sided").pvalue)
    rng = np.random.default_rng(seed)
    ratios = np.empty(n_resamples)
    for i in range(n_resamples):
        pick_a = rng.integers(0, len(xa), len(xa))
        pick_b = rng.integers(0, len(xb), len(xb))
        boot_a = np.median(np.concatenate([xa[j] for j in pick_a]))
        boot_b = np.median(np.concatenate([xb[j] for j in pick_b]))
        ratios[i] = boot_b / boot_a if boot_a else np.inf
    tail = (1 - confidence) / 2 * 100
    low, high = (float(v) for v in np.percentile(ratios, [tail, 100 - tail]))
    if p_value < alpha and low > 1:
        verdict = "slower"
    elif p_value < alpha and high < 1:
        verdict = "faster"
    else:
        verdict = "no significant change"
    return Comparison(ratio, low, high, p_value, verdict, n_a, n_b, med_a, med_b, note)


def split_rounds(result: Result) -> list[list[float]] | None:
    """The result's latencies per round, when it was measured in several rounds."""
    sizes = result.get("round_sizes") or []
    latencies = result.get("latencies_ms") or []
    if len(sizes) < 2 or sum(sizes) != len(latencies):
        return None
    bounds = np.cumsum(sizes)[:-1]
    return [list(part) for part in np.split(np.asarray(latencies, dtype=float), bounds)]


# -- pairing two runs ------------------------------------------------------------------------
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
        return float(np.median(np.asarray(samples, dtype=float)))
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
