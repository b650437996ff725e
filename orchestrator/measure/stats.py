"""Is run B slower than run A? Ratio of medians, a bootstrap CI, a rank test, and a CI gate.

Why these statistics: per-inference latencies on a Pi are right-skewed (GC pauses, a scheduler
tick, a thermal blip), so means chase outliers; the median is what a write-up reports as p50, and
a *ratio* of medians ("B takes 1.2x as long") reads the same for a 3 ms and a 300 ms model.

- The confidence interval is a bootstrap resampling A and B independently (a benchmark's runs
  are not paired) with the statistic median(B) / median(A), using the **percentile** method,
  not BCa: BCa's acceleration term is a jackknife estimate, and the jackknife is known to be
  inconsistent for the median (leave-one-out medians take only two values), so its
  "correction" is noise at n = 30; with timer-quantised, tied latencies most resamples equal
  the observed median, which skews BCa's bias term and makes scipy return NaN for degenerate
  data. The percentile interval needs neither, and it respects monotone transforms, so the
  interval of the ratio is exactly the exp of the interval of the log-ratio. It can run a
  little narrow at small n; that is why a verdict needs a rank test as well.
- How it is resampled: only each resample's median is needed, and the median of n values drawn
  with replacement from the sorted sample x is x[floor(n * U)], U the middle order statistic of
  n uniforms, which is Beta distributed (two of them for even n). Drawing those instead of n
  indices and sorting gives the bootstrap distribution of resampling (``scipy.stats.bootstrap``,
  which this replaced: same interval up to Monte Carlo error, other random draws) at O(1)
  instead of O(n) work per resample, and the draws depend only on the sample sizes and the
  seed, so the device x thread count pairs of a comparison share them. Comparing two runs of
  150 results takes ~20 ms instead of ~1.2 s, and 10^4-run samples cost what 30 do. The
  cluster bootstrap of rounds is computed from how often each round is picked, likewise.
- p comes from a two-sided Mann-Whitney U test (no normality assumption, ties handled), computed
  as ``scipy.stats.mannwhitneyu`` does (exact U distribution for small untied samples, else the
  normal approximation with tie and continuity corrections) without its per-call overhead.
- A verdict needs both: p < alpha *and* a CI that excludes 1. Everything is seeded, so the same
  two runs always give the same numbers (a CI gate must not flap).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special
from scipy import stats as sps

MIN_SAMPLES = 3
# Elements per batch of the round-level (cluster) bootstrap: bounds memory for long runs
# (--min-seconds can give 10^4+ latencies; 2000 resamples x 10^4 would be 160 MB at once).
_BATCH_ELEMENTS = 2_000_000
_MWU_EXACT_MAX = 8  # scipy's "auto": exact U distribution when a sample has <= 8 values

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


def resampled_median_indices(n: int, n_resamples: int, rng: np.random.Generator,
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Where the median of each of ``n_resamples`` bootstrap resamples of n values lies in the
    sorted sample: (lower, upper) 0-based indices, equal for odd n. No resample is drawn.

    A resample is n indices drawn uniformly from the sorted sample, i.e. floor(n * U_i) for n
    uniforms U_i; floor is monotone, so its k-th smallest value is sorted[floor(n * U_(k))],
    and the k-th order statistic of n uniforms is Beta(k, n + 1 - k). For even n the median
    also needs the (k+1)-th: the least of the n - k uniforms above U_(k), U_(k) + (1 - U_(k)) *
    Beta(1, n - k). Same distribution as resampling and taking np.median, in O(1) per resample.
    """
    k = (n + 1) // 2  # the (lower) middle order statistic, 1-based
    low = rng.beta(k, n + 1 - k, n_resamples)
    lower = np.minimum((low * n).astype(np.intp), n - 1)
    if n % 2:
        return lower, lower
    high = low + (1 - low) * rng.beta(1, n - k, n_resamples)
    return lower, np.minimum((high * n).astype(np.intp), n - 1)


def bootstrap_medians(sample: np.ndarray, n_resamples: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Medians of ``n_resamples`` bootstrap resamples of ``sample`` (see
    ``resampled_median_indices``)."""
    ordered = np.sort(np.asarray(sample, dtype=float))
    lower, upper = resampled_median_indices(ordered.size, n_resamples, rng)
    return (ordered[lower] + ordered[upper]) / 2


@functools.lru_cache(maxsize=64)
def _pair_indices(n_a: int, n_b: int, n_resamples: int, seed: int,
                  ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``resampled_median_indices`` of A then B from one generator seeded ``seed``: they depend
    on the sample sizes only, and every device x thread count of a comparison has the same
    sizes and seed, so a 150-pair comparison draws them once. Read-only: they are shared."""
    rng = np.random.default_rng(seed)
    sides = (resampled_median_indices(n_a, n_resamples, rng),
             resampled_median_indices(n_b, n_resamples, rng))
    for side in sides:
        for array in side:
            array.flags.writeable = False
    return sides


def _sorted_percentile(ordered: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear method, numpy's arithmetic) of sorted finite values,
    without numpy's per-call overhead (a comparison takes one per device x thread count)."""
    virtual = (ordered.size - 1) * (q / 100)
    below = math.floor(virtual)
    a, b = float(ordered[below]), float(ordered[min(below + 1, ordered.size - 1)])
    t, diff = virtual - below, b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def _percentile_ci(ratios: np.ndarray, confidence: float) -> tuple[float, float]:
    """The percentile interval of a bootstrap distribution (linear interpolation, as
    ``scipy.stats.bootstrap`` computes it); NaN or inf when resampled ratios are."""
    tail = (1 - confidence) / 2 * 100
    if np.isfinite(ratios).all():
        ordered = np.sort(ratios)
        return _sorted_percentile(ordered, tail), _sorted_percentile(ordered, 100 - tail)
    with np.errstate(invalid="ignore"):
        low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def _ratios(boot_b: np.ndarray, boot_a: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return boot_b / boot_a


@functools.lru_cache(maxsize=128)
def _u_null_cdf(n1: int, n2: int) -> np.ndarray:
    """P(U <= u), u = 0..n1*n2, of the Mann-Whitney U statistic without ties under the null:
    the coefficients of the Gaussian binomial [n1 + n2, n1]_q = prod (1 - q^(n2+i)) / (1 - q^i),
    over binom(n1 + n2, n1). Exact integers for the small samples it is used for."""
    m, n = sorted((n1, n2))
    counts = np.zeros(m * n + 1)
    counts[0] = 1.0
    for i in range(1, m + 1):
        counts[n + i:] -= counts[:-(n + i)].copy()  # x (1 - q^(n+i)), truncated at q^(mn)
        for k in range(i, m * n + 1):  # / (1 - q^i): a power series, truncated the same way
            counts[k] += counts[k - i]
    return np.cumsum(counts / math.comb(m + n, m))


def mann_whitney_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Mann-Whitney U p-value, as ``scipy.stats.mannwhitneyu(a, b)`` gives it.

    Computed directly, without scipy's generic axis- and NaN-policy-handling wrapper (~10x
    faster; a comparison takes one per device x thread count, two runs of 150 results 150 of
    them): scipy's "auto" method, i.e. the exact U distribution when a sample has at most 8
    values and nothing is tied (per-round medians), else the normal approximation with average
    ranks, tie-corrected variance and continuity correction. A small sample against a large
    one, untied, is left to scipy.
    """
    n1, n2 = a.size, b.size
    values = np.concatenate([a, b])
    n = values.size
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ties = np.diff(np.r_[starts, n]).astype(float)
    ranks = np.empty(n)
    ranks[order] = np.repeat(starts + (ties + 1) / 2, ties.astype(np.intp))
    u1 = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    u = max(u1, n1 * n2 - u1)
    if min(n1, n2) <= _MWU_EXACT_MAX and ties.max() == 1:
        if max(n1, n2) > _MWU_EXACT_MAX:
            return float(sps.mannwhitneyu(a, b, alternative="two-sided").pvalue)
        # P(U >= u) = P(U <= n1*n2 - u): the distribution is symmetric.
        return float(min(1.0, 2 * _u_null_cdf(n1, n2)[int(n1 * n2 - u)]))
    spread = math.sqrt(n1 * n2 / 12 * ((n + 1) - float(np.sum(ties ** 3 - ties)) / (n * (n - 1))))
    if spread == 0:  # every value equal
        return 1.0
    z = (u - n1 * n2 / 2 - 0.5) / spread
    return float(min(1.0, max(0.0, 2 * special.ndtr(-z))))


def _sortedmedian_of(ordered: np.ndarray) -> float | None:
    """``np.median`` of a sorted sample (the same arithmetic: the mean of the middle two)."""
    n = ordered.size
    if n == 0:
        return None
    middle = n // 2
    return float(ordered[middle]) if n % 2 else float((ordered[middle - 1] + ordered[middle]) / 2)


def median_of(values: Sequence[float] | np.ndarray) -> float | None:
    """``np.median`` (the same arithmetic) at a tenth of its per-call cost: a comparison of two
    interleaved 150-result runs took ~1,500 of them, a third of its time in numpy's overhead."""
    return _sortedmedian_of(np.sort(np.asarray(values, dtype=float)))


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
    xa, xb = np.sort(_as_sample(a, "A")), np.sort(_as_sample(b, "B"))  # ranks don't care
    n_a, n_b = len(xa), len(xb)
    med_a, med_b = _sortedmedian_of(xa), _sortedmedian_of(xb)
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
    if xa[0] == xa[-1] and xb[0] == xb[-1] and med_a == med_b:
        return inconclusive("both samples are the same constant", 1.0, (1.0, 1.0))

    p_value = mann_whitney_p(xa, xb)
    (low_a, high_a), (low_b, high_b) = _pair_indices(n_a, n_b, n_resamples, seed)
    boot_a = (xa[low_a] + xa[high_a]) / 2
    boot_b = (xb[low_b] + xb[high_b]) / 2
    low, high = _percentile_ci(_ratios(boot_b, boot_a), confidence)
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


def _cluster_picks(k: int, n_resamples: int, rng: np.random.Generator,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """How often each of ``k`` rounds is picked by each of ``n_resamples`` cluster-bootstrap
    resamples (k picks with replacement): (the distinct count vectors, which one each resample
    has). A handful of rounds has few distinct vectors (35 for 4 rounds)."""
    picks = rng.integers(0, k, (n_resamples, k))
    counts = np.bincount((picks + k * np.arange(n_resamples)[:, None]).ravel(),
                         minlength=n_resamples * k).reshape(n_resamples, k)
    distinct, inverse = np.unique(counts, axis=0, return_inverse=True)
    return distinct, inverse.ravel()


@functools.lru_cache(maxsize=64)
def _pair_picks(k_a: int, k_b: int, n_resamples: int, seed: int,
                ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``_cluster_picks`` of A then B from one generator seeded ``seed``: they depend on the
    round counts only, so a comparison of many interleaved results draws them once (as
    ``_pair_indices``). Read-only: they are shared."""
    rng = np.random.default_rng(seed)
    sides = (_cluster_picks(k_a, n_resamples, rng), _cluster_picks(k_b, n_resamples, rng))
    for side in sides:
        for array in side:
            array.flags.writeable = False
    return sides


def _pooled_medians(rounds: Sequence[np.ndarray], distinct: np.ndarray,
                    inverse: np.ndarray) -> np.ndarray:
    """The median of each resample's pooled latencies, from its pick counts: the pooled,
    sorted latencies weighted by their round's count give the median's rank directly, without
    concatenating. Each distinct count vector is evaluated once."""
    values = np.concatenate(rounds)
    labels = np.repeat(np.arange(len(rounds)), [len(r) for r in rounds])
    order = np.argsort(values, kind="stable")
    values, labels = values[order], labels[order]
    totals = distinct @ np.array([len(r) for r in rounds])
    lower, upper = (totals + 1) // 2, totals // 2 + 1  # 1-based ranks of the middle value(s)
    medians = np.empty(len(distinct))
    step = max(1, _BATCH_ELEMENTS // values.size)
    for start in range(0, len(distinct), step):
        part = slice(start, start + step)
        weight = np.cumsum(distinct[part][:, labels], axis=1)
        low = (weight < lower[part, None]).sum(axis=1)
        high = (weight < upper[part, None]).sum(axis=1)
        medians[part] = (values[low] + values[high]) / 2
    return medians[inverse]


def cluster_bootstrap_medians(rounds: Sequence[np.ndarray], n_resamples: int,
                              rng: np.random.Generator) -> np.ndarray:
    """Pooled medians of ``n_resamples`` cluster-bootstrap resamples: each picks as many whole
    rounds as there are, with replacement, and pools their latencies."""
    return _pooled_medians(rounds, *_cluster_picks(len(rounds), n_resamples, rng))


def compare_rounds(rounds_a: Sequence[Sequence[float]], rounds_b: Sequence[Sequence[float]], *,
                   n_resamples: int = 2000, confidence: float = 0.95, alpha: float = 0.05,
                   seed: int = 0) -> Comparison:
    """Compare two interleaved benchmarks whose samples come in rounds (one process each).

    Why not pool the samples: a fresh process has its own speed (memory placement, huge pages,
    a VM's neighbours) — on the test machines p50 varied 2.1-3.5 ms between processes of the
    same model while varying ~5% within one. Pooled samples are then far from independent and
    Mann-Whitney on them calls noise significant. The round is the unit of replication here:
    Mann-Whitney U on per-round medians (Welch's t on their logs when there are too few rounds
    for U to reach ``alpha``: ``round_medians_p``), and a cluster bootstrap (resample whole
    rounds) for the CI of the ratio of pooled medians.
    """
    xa = [_as_sample(r, "A") for r in rounds_a if len(r)]
    xb = [_as_sample(r, "B") for r in rounds_b if len(r)]
    pooled_a, pooled_b = np.concatenate(xa), np.concatenate(xb)
    med_a, med_b = median_of(pooled_a), median_of(pooled_b)
    ratio = med_b / med_a if med_a and med_b is not None else None
    n_a, n_b = len(pooled_a), len(pooled_b)
    note = f"compared per round ({len(xa)} vs {len(xb)} rounds)"
    if len(xa) < 2 or len(xb) < 2 or not med_a:
        return Comparison(ratio, None, None, None, "no significant change", n_a, n_b, med_a,
                          med_b, note + "; too few rounds for a verdict")
    p_value, test = round_medians_p(np.array([median_of(r) for r in xa]),
                                    np.array([median_of(r) for r in xb]), alpha)
    note += f", {test}"
    picks_a, picks_b = _pair_picks(len(xa), len(xb), n_resamples, seed)
    boot_a, boot_b = _pooled_medians(xa, *picks_a), _pooled_medians(xb, *picks_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(boot_a == 0, np.inf, boot_b / boot_a)
    low, high = _percentile_ci(ratios, confidence)
    if p_value < alpha and low > 1:
        verdict = "slower"
    elif p_value < alpha and high < 1:
        verdict = "faster"
    else:
        verdict = "no significant change"
    return Comparison(ratio, low, high, p_value, verdict, n_a, n_b, med_a, med_b, note)


def round_medians_p(a: np.ndarray, b: np.ndarray, alpha: float) -> tuple[float, str]:
    """(two-sided p, the test's name) for two sets of per-round medians.

    Mann-Whitney U when the round counts let it reach ``alpha`` at all: with 3 rounds a side
    (two ``bench --rounds 3`` runs) its smallest p is 2/20 = 0.1 however
    far apart they are, so two benchmarks could never differ. There, Welch's t-test on the
    log medians (a ratio is what differs; a process's speed varies by a factor)."""
    if (2 / math.comb(a.size + b.size, a.size) < alpha or min(a.size, b.size) < 3
            or (a <= 0).any() or (b <= 0).any()):
        # Fewer than 3 rounds a side: no test of 1-2 processes' medians is evidence (a t-test
        # on 2 vs 2 called A/A noise "slower" in CI); U then simply cannot reach alpha.
        return mann_whitney_p(a, b), "Mann-Whitney U"
    la, lb = np.log(a), np.log(b)
    if la.var() == 0 and lb.var() == 0:  # identical rounds: t is undefined
        return (1.0 if la.mean() == lb.mean() else 0.0), "Welch's t-test on log medians"
    return float(sps.ttest_ind(la, lb, equal_var=False).pvalue), "Welch's t-test on log medians"


def split_rounds(result: Result) -> list[np.ndarray] | None:
    """The result's latencies per round, when it was measured in several rounds (arrays:
    ``compare_rounds`` works on arrays, so no round goes through a list and back)."""
    sizes = result.get("round_sizes") or []
    latencies = result.get("latencies_ms") or []
    if len(sizes) < 2 or sum(sizes) != len(latencies):
        return None
    bounds = np.cumsum(sizes)[:-1]
    return np.split(np.asarray(latencies, dtype=float), bounds)
