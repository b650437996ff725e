"""Rounds: a thread count measured in several fresh processes (``bench --rounds``, a gate's
interleaved A B B A ...), and how their results become one (``merge_rounds``).

Why a module of its own: the round is the unit of replication wherever two measurements are
compared (``stats.compare_rounds``), and the merge is what every reader of a rounds result
(the Result row, the detector's CPU p50, the energy figures) depends on.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from typing import Any

# Fresh processes per thread count of a plain benchmark (``rounds``; the timed runs are split
# over them, ``merge_rounds`` takes the median of their CPU p50s). One, as before; more is a
# choice (``bench --rounds 3``). Why not 3 by default: it pays off only where single processes
# are the noise. bench/process_noise.py, 240 fresh processes on a quiet VM (1 in 20 ran 6-100%
# slow): the median of 3 found a +10% step within 3 runs in 93% of replayed trials instead of
# 49%; minutes later, the VM's speed drifting, 19% and 17%. Through
# the product, recorded side by side (bench/changepoints.py ``record --rounds 1,3``, committed
# as bench/changepoints_aa_rounds.json), both moved 2.6% from run to run: +10% within 3 runs
# 27% with 1 process, 22% with 3, false alarms 0.72 and 0.86 per 100 points: what is left is
# the drift of the VM's speed, which all processes of a run share. README "Regressions".
BENCH_ROUNDS = 1
GATE_ROUNDS = 5  # with a baseline: A B B A ... interleaved, so drift hits both versions



def merge_energy(entries: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """One energy summary from several rounds: mean W weighted by each round's timed seconds,
    mJ per inference by its runs; unavailable if any round's is (the first reason)."""
    energies = [e.get("energy") for e in entries]
    if any(not (x or {}).get("available") for x in energies):
        return next((x for x in energies if x and not x.get("available")), None)
    walls = [e.get("wall_s") or 0.0 for e in entries]
    runs = [e.get("runs") or 0 for e in entries]
    if not sum(walls) or not sum(runs):
        return energies[0]
    mean_w = sum(x["mean_w"] * w for x, w in zip(energies, walls, strict=True)) / sum(walls)
    mj = [x.get("mj_per_inference") for x in energies]
    return {**energies[0], "mean_w": mean_w,
            "mj_per_inference": None if None in mj else
            sum(m * n for m, n in zip(mj, runs, strict=True)) / sum(runs),
            "samples": sum(x.get("samples") or 0 for x in energies)}


def merge_rounds(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from several rounds (processes) of the same thread count: latencies pooled
    and re-summarised (``round_sizes`` says where each round's start), the CPU p50 the
    median of the rounds' (robust to one slow process), the worst telemetry kept, every flag
    kept."""
    if len(entries) == 1:
        return dict(entries[0])
    failed = [e for e in entries if not e.get("ok")]
    if failed:
        return dict(failed[0])
    import numpy as np  # start-up time, as in pack_floats

    latencies = [x for e in entries for x in e.get("latencies_ms") or []]
    arr = np.asarray(latencies, dtype=float)
    tel = [e.get("telemetry") or {} for e in entries]

    def pick(key: str, fn: Callable[..., Any]) -> Any:
        values = [t.get(key) for t in tel if t.get(key) is not None]
        return fn(values) if values else None

    bits = [t.get("throttled_bits") for t in tel if t.get("throttled_bits") is not None]
    statuses = [t.get("status") for t in tel]
    merged = dict(entries[0])
    merged.update(
        runs=len(latencies), latencies_ms=latencies,
        round_sizes=[len(e.get("latencies_ms") or []) for e in entries],
        # The CPU times are not sent raw: the median of the rounds' medians.
        cpu_ms=None if any(not e.get("cpu_ms") for e in entries) else
        {"p50": float(np.median([e["cpu_ms"]["p50"] for e in entries]))},
        latency_ms={"n": int(arr.size), "mean": float(arr.mean()),
                    "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
                    "min": float(arr.min()), "max": float(arr.max()),
                    **{f"p{q}": float(np.percentile(arr, q)) for q in (50, 90, 95, 99)}},
        peak_rss_mb=max(e.get("peak_rss_mb") or 0 for e in entries) or None,
        steady_rss_mb=entries[-1].get("steady_rss_mb"),
        wall_s=sum(e.get("wall_s") or 0 for e in entries),
        flags=sorted({f for e in entries for f in e.get("flags") or []}),
        reasons=[r for e in entries for r in e.get("reasons") or []],
        valid=all(e.get("valid") for e in entries), energy=merge_energy(entries),
        telemetry={
            "status": "throttled" if "throttled" in statuses else
                      "unknown" if "unknown" in statuses else "clean",
            "interval_s": tel[0].get("interval_s"),
            "samples": [s for t in tel for s in t.get("samples") or []],
            "temp_c_min": pick("temp_c_min", min), "temp_c_max": pick("temp_c_max", max),
            "freq_mhz_min": pick("freq_mhz_min", min), "freq_mhz_max": pick("freq_mhz_max", max),
            "throttled_bits": functools.reduce(operator.or_, bits) if bits else None,
            "throttle_flags": {
                key: sorted({w for t in tel for w in (t.get("throttle_flags") or {}).get(key, [])})
                for key in ("now", "new_since_start")},
        },
    )
    return merged
