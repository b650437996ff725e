"""Comparing two benchmark runs: real samples from seeded distributions, no mocks.

Latencies are drawn lognormal (right-skewed, like per-inference times on a Pi) around 10 ms with
a 5-10% spread, n = 30 (the default ``--runs``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from orchestrator.measure.pairing import compare_runs, gate, pair_results, parse_percent
from orchestrator.measure.stats import compare_samples


def sample(median_ms: float, seed: int, n: int = 30, sigma: float = 0.1) -> list[float]:
    return list(np.random.default_rng(seed).lognormal(math.log(median_ms), sigma, n))


def result(device: str, threads: int, latencies: list[float] | None, **overrides: Any,
           ) -> dict[str, Any]:
    """A result dict shaped like the CLI/DB produce it."""
    ok = latencies is not None
    out: dict[str, Any] = {
        "run_id": 1, "device": device, "bundle": {"name": "first-crack", "version": "1"},
        "precision": "int8", "threads": threads, "ok": ok, "error": None if ok else "boom",
        "latency_ms": {"p50": float(np.median(latencies))} if ok else None,
        "latencies_ms": latencies, "load_ms": 120.0, "first_inference_ms": 15.0,
        "peak_rss_mb": 90.0, "telemetry": {"status": "clean", "temp_c_max": 55.0},
        "valid": ok, "flags": [], "simulated": False,
    }
    out.update(overrides)
    return out


# -- compare_samples -------------------------------------------------------------------------
def test_identical_distributions_rarely_give_a_verdict() -> None:
    verdicts = [compare_samples(sample(10, seed), sample(10, seed + 1000)).verdict
                for seed in range(60)]
    false_positives = sum(v != "no significant change" for v in verdicts)
    # alpha = 0.05 and a CI excluding 1 are both required: at most ~5% expected.
    assert false_positives <= 4, verdicts


def test_twenty_percent_slower_is_slower_with_ci_above_one() -> None:
    a, b = sample(10, 1), sample(12, 2)
    c = compare_samples(a, b)
    assert c.verdict == "slower"
    assert c.p_value < 0.05
    assert 1 < c.ci_low < c.ratio < c.ci_high
    assert c.ratio == pytest.approx(np.median(b) / np.median(a))
    assert c.ratio == pytest.approx(1.2, abs=0.08)
    assert c.ci_high - c.ci_low < 0.25
    assert (c.n_a, c.n_b, c.note) == (30, 30, None)
    assert c.median_a == pytest.approx(np.median(a))


def test_faster_is_faster_with_ci_below_one() -> None:
    c = compare_samples(sample(10, 3), sample(8, 4))
    assert c.verdict == "faster"
    assert c.ci_low < c.ratio < c.ci_high < 1
    assert c.ratio == pytest.approx(0.8, abs=0.06)


def test_small_difference_with_wide_spread_is_rarely_a_verdict() -> None:
    """3% apart with a 30% spread: n = 30 cannot resolve it, and mostly says so."""
    comparisons = [compare_samples(sample(10, seed, sigma=0.3), sample(10.3, seed + 100, sigma=0.3))
                   for seed in range(10)]
    undecided = [c for c in comparisons if c.verdict == "no significant change"]
    assert len(undecided) >= 8
    assert all(c.ci_low < 1 < c.ci_high or c.p_value >= 0.05 for c in undecided)


def test_seeded_bootstrap_is_reproducible_and_confidence_widens_the_interval() -> None:
    a, b = sample(10, 7), sample(11, 8)
    assert compare_samples(a, b, seed=3) == compare_samples(a, b, seed=3)
    narrow = compare_samples(a, b, confidence=0.8)
    wide = compare_samples(a, b, confidence=0.99)
    assert wide.ci_low < narrow.ci_low and narrow.ci_high < wide.ci_high


def test_long_runs_are_fine() -> None:
    """--min-seconds can give thousands of samples: batched bootstrap, a tight interval."""
    c = compare_samples(sample(10, 9, n=5000), sample(10.2, 10, n=5000), n_resamples=500)
    assert c.verdict == "slower"
    assert 1 < c.ci_low < c.ci_high < 1.03 and c.ci_high - c.ci_low < 0.02


def test_identical_constant_samples() -> None:
    c = compare_samples([10.0] * 30, [10.0] * 30)
    assert c.verdict == "no significant change"
    assert (c.ratio, c.ci_low, c.ci_high, c.p_value) == (1.0, 1.0, 1.0, 1.0)
    assert c.note == "both samples are the same constant"


def test_different_constant_samples_are_a_real_difference() -> None:
    c = compare_samples([10.0] * 30, [12.0] * 30)
    assert c.verdict == "slower"
    assert c.ci_low == pytest.approx(1.2) and c.ci_high == pytest.approx(1.2)


@pytest.mark.parametrize(("a", "b"), [([10.0, 11.0], sample(10, 1)), (sample(10, 1), [9.0]),
                                      ([], [])])
def test_too_few_samples(a: list[float], b: list[float]) -> None:
    c = compare_samples(a, b)
    assert c.verdict == "no significant change"
    assert c.ci_low is None and c.ci_high is None and c.p_value is None
    assert c.note.startswith("too few samples")
    assert (c.n_a, c.n_b) == (len(a), len(b))


def test_zero_latencies() -> None:
    assert compare_samples([0.0] * 30, [1.0] * 30).note == (
        "median of A is 0 ms: the ratio is undefined")
    c = compare_samples([0.0] * 14 + [1.0] * 16, [1.0] * 14 + [2.0] * 16)
    assert c.verdict == "no significant change"
    assert c.ratio == 2.0 and c.ci_low is None
    assert "unbounded" in c.note


@pytest.mark.parametrize("bad", [[1.0, math.nan, 2.0], [1.0, math.inf, 2.0], [-1.0, 2.0, 3.0]])
def test_malformed_latencies_are_refused(bad: list[float]) -> None:
    with pytest.raises(ValueError, match="finite and non-negative"):
        compare_samples(bad, [1.0, 2.0, 3.0])


# -- pairing ---------------------------------------------------------------------------------
def test_pairing_and_exclusions() -> None:
    run_a = [
        result("pi5-a", 2, sample(10, 1)),
        result("pi5-a", 1, sample(10, 2)),
        result("pi4-lab", 1, None, error="onnxruntime too old"),
        result("pi5-b", 1, sample(10, 3)),
        result("only-a", 1, sample(10, 4)),
    ]
    run_b = [
        result("pi5-a", 1, sample(10, 5)),
        result("pi5-a", 2, sample(10, 6), valid=False, flags=["under_voltage", "throttled"],
               telemetry={"status": "throttled"}),
        result("pi4-lab", 1, sample(10, 7)),
        result("pi5-b", 1, sample(10, 8), valid=False, flags=[],
               telemetry={"status": "unknown"}),
        result("only-b", 4, sample(10, 9)),
    ]
    pairs = pair_results(run_a, run_b)
    assert [(p.device, p.threads, p.excluded) for p in pairs] == [
        ("only-a", 1, "only in A"),
        ("only-b", 4, "only in B"),
        ("pi4-lab", 1, "A failed: onnxruntime too old"),
        ("pi5-a", 1, None),
        ("pi5-a", 2, "B throttled (under_voltage, throttled)"),
        ("pi5-b", 1, "B invalid"),
    ]
    assert pairs[3].a is run_a[1] and pairs[3].b is run_b[0]
    assert pairs[0].b is None and pairs[1].a is None

    included = {(p.device, p.threads): p for p in pair_results(run_a, run_b, True)}
    assert included["pi5-a", 2].excluded is None
    assert included["pi5-a", 2].note == "B throttled (under_voltage, throttled) included"
    assert included["pi4-lab", 1].excluded == "A failed: onnxruntime too old"


def test_both_sides_excluded_and_duplicates() -> None:
    run_a = [result("pi", 1, None, error="timeout"),
             result("dup", 1, sample(10, 1)), result("dup", 1, sample(10, 2))]
    run_b = [result("pi", 1, sample(10, 3), valid=False, flags=["under_voltage"]),
             result("dup", 1, sample(10, 4))]
    excluded = {p.device: p.excluded for p in pair_results(run_a, run_b)}
    assert excluded == {
        "pi": "A failed: timeout; B invalid (under_voltage)",
        "dup": "A has several results for this device and thread count",
    }


def test_compare_runs_rows() -> None:
    a_lat, b_lat = sample(10, 11), sample(12, 12)
    run_a = [result("pi5-a", 2, a_lat), result("pi5-b", 2, sample(10, 13)),
             result("pi5-c", 2, sample(10, 14))]
    run_b = [result("pi5-a", 2, b_lat, bundle={"name": "first-crack", "version": "2"}),
             result("pi5-b", 2, None, latencies_ms=None, ok=True, valid=True,
                    latency_ms={"p50": 11.0}),
             result("pi5-c", 2, sample(10, 15), valid=False, flags=["soft_temp_limit"])]
    rows = compare_runs(run_a, run_b)
    assert [r["device"] for r in rows] == ["pi5-a", "pi5-b", "pi5-c"]
    slower = rows[0]
    assert slower["verdict"] == "slower" and slower["excluded"] is None
    assert (slower["bundle_a"], slower["bundle_b"]) == ("first-crack@1", "first-crack@2")
    assert slower["p50_a"] == pytest.approx(np.median(a_lat))
    assert slower["ratio"] == pytest.approx(np.median(b_lat) / np.median(a_lat))
    assert slower["ci_low"] > 1 and slower["p_value"] < 0.05 and slower["n_b"] == 30
    summary_only = rows[1]
    assert summary_only["excluded"] == "B without per-inference latencies"
    assert summary_only["verdict"] is None and summary_only["p50_b"] == 11.0
    assert rows[2]["excluded"] == "B invalid (soft_temp_limit)"

    included = compare_runs(run_a, run_b, include_invalid=True)[2]
    assert included["verdict"] == "no significant change"
    assert included["note"] == "B invalid (soft_temp_limit) included"


# -- gate ------------------------------------------------------------------------------------
def test_gate_on_measured_regressions() -> None:
    base = sample(10, 21, sigma=0.01)
    run_a = [result("pi5-a", 1, base), result("pi5-a", 2, base), result("pi5-a", 4, base)]
    run_b = [result("pi5-a", 1, sample(10.4, 22, sigma=0.01)),   # 4%: real, under the bound
             result("pi5-a", 2, sample(11.5, 23, sigma=0.01)),   # 15%: fails
             result("pi5-a", 4, sample(9.0, 24, sigma=0.01))]    # faster
    rows = compare_runs(run_a, run_b)
    assert [r["verdict"] for r in rows] == ["slower", "slower", "faster"]
    failing = gate(rows, 0.05)
    assert [(r["device"], r["threads"]) for r in failing] == [("pi5-a", 2)]
    assert [r["threads"] for r in gate(rows, 0.0)] == [1, 2]
    assert gate(rows, 0.2) == []


def test_gate_needs_a_significant_slowdown_beyond_the_bound() -> None:
    rows = [
        {"verdict": "slower", "ratio": 1.05},                  # exactly at the bound: passes
        {"verdict": "slower", "ratio": 1.0501},
        {"verdict": "no significant change", "ratio": 1.4},   # not evidence
        {"verdict": None, "ratio": None, "excluded": "only in A"},
        {"verdict": "faster", "ratio": 0.5},
    ]
    assert gate(rows, 0.05) == [rows[1]]
    for bad in (-0.01, math.nan, math.inf):
        with pytest.raises(ValueError, match="non-negative fraction"):
            gate(rows, bad)


@pytest.mark.parametrize(("text", "expected"), [
    ("5%", 0.05), ("5", 0.05), ("0.05", 0.05), (" 2.5 % ", 0.025), ("0%", 0.0), ("0", 0.0),
    ("1", 0.01), ("0.5%", 0.005), ("150%", 1.5), ("12.5", 0.125),
])
def test_parse_percent(text: str, expected: float) -> None:
    assert parse_percent(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "%", "five", "5%%", "-5%", "nan", "inf", "5 percent"])
def test_parse_percent_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a regression bound"):
        parse_percent(text)


def test_rounds_with_process_to_process_speed_are_not_called_significant() -> None:
    """Same model, but each round (process) has its own speed, as measured on the CI VM:
    pooled samples would call that noise a difference; the round-level test does not."""
    from orchestrator.measure.stats import compare_rounds

    rng = np.random.default_rng(7)
    speeds = rng.uniform(2.1, 3.5, size=12)  # per-process p50, ms

    def rounds(indices: range) -> list[list[float]]:
        return [list(speeds[i] * rng.lognormal(0, 0.03, 10)) for i in indices]

    a, b = rounds(range(0, 12, 2)), rounds(range(1, 12, 2))
    pooled = compare_samples([x for r in a for x in r], [x for r in b for x in r])
    clustered = compare_rounds(a, b)
    assert clustered.verdict == "no significant change"
    assert clustered.ci_low is not None and clustered.ci_low < 1 < clustered.ci_high
    assert pooled.p_value is not None and clustered.p_value is not None
    assert clustered.p_value > pooled.p_value  # the pooled test is overconfident
    assert "6 vs 6 rounds" in (clustered.note or "")


def test_rounds_detect_a_real_slowdown() -> None:
    from orchestrator.measure.stats import compare_rounds

    rng = np.random.default_rng(3)
    a = [list(rng.uniform(2.5, 3.0) * rng.lognormal(0, 0.03, 10)) for _ in range(6)]
    b = [list(1.6 * rng.uniform(2.5, 3.0) * rng.lognormal(0, 0.03, 10)) for _ in range(6)]
    c = compare_rounds(a, b)
    assert c.verdict == "slower" and c.ci_low > 1.3


def test_three_rounds_a_side_can_still_differ() -> None:
    """A plain benchmark's 3 rounds: Mann-Whitney U on 3 vs 3 medians can never go below
    p = 0.1, so the round medians are t-tested instead (on their logs), and a real slowdown
    is still called; the same rounds against themselves shifted by nothing are not."""
    from orchestrator.measure.stats import compare_rounds, mann_whitney_p

    rng = np.random.default_rng(11)
    a = [list(rng.uniform(2.5, 2.6) * rng.lognormal(0, 0.03, 10)) for _ in range(3)]
    b = [list(1.3 * rng.uniform(2.5, 2.6) * rng.lognormal(0, 0.03, 10)) for _ in range(3)]
    medians = (np.array([np.median(r) for r in a]), np.array([np.median(r) for r in b]))
    assert mann_whitney_p(*medians) >= 0.1  # U alone could never say "slower" here
    c = compare_rounds(a, b)
    assert c.verdict == "slower" and c.p_value is not None and c.p_value < 0.01
    assert c.note is not None and "3 vs 3 rounds), Welch's t-test on log medians" in c.note
    same = compare_rounds(a, [list(np.asarray(r) * 1.0001) for r in a])
    assert same.verdict == "no significant change"
    assert "Mann-Whitney U" in (compare_rounds(a * 2, b * 2).note or "")  # 6 vs 6: U reaches
    two = compare_rounds(a[:2], b[:2])  # 2 vs 2: no test of two processes is evidence
    assert two.verdict == "no significant change" and "Mann-Whitney U" in (two.note or "")


def test_round_params_split_the_timed_runs() -> None:
    from orchestrator.measure.runs import BenchParams, round_params

    assert [p.runs for p in round_params(BenchParams(runs=30), 3)] == [10, 10, 10]
    assert [p.runs for p in round_params(BenchParams(runs=31), 3)] == [11, 10, 10]
    assert [p.runs for p in round_params(BenchParams(runs=2), 3)] == [1, 1, 1]  # >= 1 each
    split = round_params(BenchParams(runs=30, warmup=5, min_seconds=3.0), 3)
    assert {(p.warmup, p.min_seconds) for p in split} == {(5, 1.0)}  # warm-up is per process


def test_compare_runs_uses_rounds_when_both_sides_have_them() -> None:
    from orchestrator.measure.pairing import compare_runs

    def result(latencies: list[float], sizes: list[int] | None) -> dict:
        return {"device": "pi", "threads": 1, "ok": True, "valid": True,
                "latencies_ms": latencies, "round_sizes": sizes,
                "latency_ms": {"p50": float(np.median(latencies))},
                "bundle": {"name": "m", "version": "1"}}

    lat = [1.0] * 10 + [2.0] * 10 + [1.5] * 10
    row = compare_runs([result(lat, [10, 10, 10])], [result(lat, [10, 10, 10])])[0]
    assert "3 vs 3 rounds" in row["note"]
    row = compare_runs([result(lat, None)], [result(lat, None)])[0]
    assert "rounds" not in (row["note"] or "")


# -- the fast paths give what resampling and scipy give -----------------------------------------
@pytest.mark.parametrize(("n", "decimals"), [(3, None), (4, None), (30, 1), (31, None), (100, 2)])
def test_bootstrap_medians_have_the_distribution_of_resampled_medians(
        n: int, decimals: int | None) -> None:
    """Order statistics drawn directly (Beta) against medians of real resamples, ties included:
    the same distribution (a two-sample KS test cannot tell them apart at 20k draws each)."""
    from scipy import stats as sps

    from orchestrator.measure.stats import bootstrap_medians

    x = np.random.default_rng(n).lognormal(0, 0.2, n)
    if decimals is not None:
        x = np.round(x, decimals)
    fast = bootstrap_medians(x, 20_000, np.random.default_rng(1))
    resampled = np.median(x[np.random.default_rng(2).integers(0, n, (20_000, n))], axis=1)
    assert sps.ks_2samp(fast, resampled).pvalue > 0.001
    assert np.percentile(fast, 50) == pytest.approx(np.percentile(resampled, 50), rel=0.01)


def test_ci_matches_scipy_bootstrap_within_monte_carlo_error() -> None:
    from scipy import stats as sps

    a, b = np.array(sample(10, 11, n=100)), np.array(sample(10.5, 12, n=100))
    ours = compare_samples(a, b, n_resamples=20_000)
    theirs = sps.bootstrap((a, b), lambda x, y, axis=-1: np.median(y, axis=axis)
                           / np.median(x, axis=axis), n_resamples=20_000, vectorized=True,
                           paired=False, method="percentile").confidence_interval
    assert ours.ci_low == pytest.approx(theirs.low, abs=0.003)
    assert ours.ci_high == pytest.approx(theirs.high, abs=0.003)


def test_mann_whitney_p_is_scipys() -> None:
    from scipy import stats as sps

    from orchestrator.measure.stats import mann_whitney_p

    rng = np.random.default_rng(0)
    for trial in range(40):
        n1, n2 = (int(v) for v in rng.integers(3, 120, 2))
        a, b = rng.lognormal(0, 0.2, n1), rng.lognormal(rng.normal(0, 0.05), 0.2, n2)
        if trial % 2:  # timer-quantised: many ties
            a, b = np.round(a, 1), np.round(b, 1)
        expected = sps.mannwhitneyu(a, b, alternative="two-sided").pvalue
        assert mann_whitney_p(a, b) == pytest.approx(expected, rel=1e-9, abs=1e-15)
    same = np.full(20, 3.0)
    assert mann_whitney_p(same, same) == 1.0


def test_cluster_bootstrap_medians_are_the_medians_of_the_pooled_picks() -> None:
    from orchestrator.measure.stats import cluster_bootstrap_medians

    rng = np.random.default_rng(4)
    rounds = [rng.lognormal(0, 0.1, size) for size in (17, 17, 16, 16, 9)]
    fast = cluster_bootstrap_medians(rounds, 300, np.random.default_rng(5))
    picks = np.random.default_rng(5).integers(0, len(rounds), (300, len(rounds)))
    direct = [np.median(np.concatenate([rounds[j] for j in pick])) for pick in picks]
    assert np.array_equal(fast, direct)
