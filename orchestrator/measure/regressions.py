"""Regressions found by change-point detection, not by a fixed threshold: the service behind
``edgefleet runs regressions``, ``GET /api/regressions`` and the Trends page.

A series is one device x bundle name x precision x thread count of benchmark p50s in run order
(``orchestrator.measure.trends``), its *valid* points only: a result measured while throttled,
under-volted or with unknown sensors says nothing about the model. A change point is where the
series settles at another level and stays there; each is reported with the run where the new
level starts, the shift (median p50 after / median p50 before, with a bootstrap 95% CI,
``stats.compare_samples``: above 1 is slower, a regression) and its p-value.

Why change points and not "more than 10% above the previous point": on a shared 2-core machine
one run's p50 moves by 10-50% on its own, so the rule flagged ten "regressions" on one page of
pure noise. The detector is Apache Otava's (``apache-otava`` on PyPI; the E-Divisive means family
MongoDB's CI runs, with Otava's sliding windows and merge step, Fleming et al., ICPE 2023): it
finds the splits that make the segments most different, and keeps a split only if the two
segments it separates differ at p < ``max_pvalue`` (Student's t-test on their points). It adapts
to each series' own noise; a threshold cannot.

Why Otava rather than MongoDB's ``signal-processing-algorithms``: Otava reports a p-value per
change point; the MongoDB package returns only indices (its permutation p is internal, drawn
from numpy's global random state), declares Python < 3.12 and numpy < 2, and pulls in gevent.
Otava's cost: it pins numpy and scipy tightly and brings the clients of its own CLI (BigQuery,
Postgres, Slack); it is imported only here, lazily: what does not look for change points
never loads it.

What is tested: a series' CPU p50s (``series_values``: the CPU time of the agent's timed
runs) when every point has one, else its wall p50s. On a shared 2-core VM the wall p50 of one
A/A run moved by a median 55% from one run to the next, its CPU p50 by 8.4%; detection on the
CPU p50s finds a +50% step within 10 runs and +100% within 3 (>= 90% of replayed trials), on
wall p50s not even +200%.

Settings (``DETECTOR``) come from ``bench/changepoints.py``, which replays 60 recorded A/A
benchmark runs of one model on this machine as series (figures and the settings grid: the
README's "Regressions" section). ``max_pvalue`` 1e-4: false alarms 0.5 per 100 points of the
first recording's wall p50s (1e-3 gave 0.9-1.3), 0.52 on the CPU p50s of the second, 0.90
on those of the quiet third (1e-3: 1.7-2.4). ``min_magnitude`` 0.04 (Otava's floor on the
relative shift of the segments' means): the quiet third's false alarms were mostly the VM's
slow drift, which consecutive runs share, so a t-test that assumes independent runs calls it
significant; the floor took them from 0.90 to 0.72 per 100 points (0.74 to 0 at a quarter of
the noise) and found steps of 10% and more as often; a 5% step on a quiet device is still
found (90% within 3 runs at a quarter of the noise; 47% with a 5% floor).
``windows`` 8 and 24 (Otava's default is one window of 50): the
narrow one finds a regression fixed a few runs later, an up-and-down the wide one misses (79%
of such trials found at both ends, 43% with 8 and 50, 8% with 50 alone), the wider one a step
with more history behind it. ``min_points`` 3: a segment needs 3 runs, so one odd run (a
neighbour's compile job) is never a change point, and a new level shows once 3 runs of it
exist.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.fleet.alerts import notify_regression
from orchestrator.measure import trends
from orchestrator.measure.trends import SeriesKey, TrendPoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectorSettings:
    """``max_pvalue``: a change point's two segments must differ at p below it (Otava's
    t-test). ``min_points``: points each segment needs. ``windows``: Otava's sliding windows
    (points searched at once for candidate splits), one pass per width; the candidates of all
    passes are then tested together. ``min_magnitude``: and their means by at least this
    share (Otava's own floor: max of after/before - 1 and before/after - 1)."""

    max_pvalue: float = 0.0001
    min_points: int = 3
    windows: tuple[int, ...] = (8, 24)
    min_magnitude: float = 0.04


DETECTOR = DetectorSettings()


@dataclass(frozen=True)
class ChangePoint:
    """Where a series moves to another level: the first run of the new level."""

    device: str
    bundle: str
    precision: str | None
    threads: int | None
    run_id: int  # the first run of the new level
    version: str  # the bundle version that run measured
    at: datetime
    previous_run_id: int  # the last run before it
    previous_version: str
    before_ms: float  # median p50 of the segment before
    after_ms: float  # ... and of the segment from ``run_id`` on
    ratio: float  # after / before: > 1 is slower
    ci_low: float | None
    ci_high: float | None
    p_value: float
    points_before: int
    points_after: int
    metric: str = "wall"  # what before/after/ratio measure: "cpu" p50 or "wall" p50

    @property
    def slower(self) -> bool:
        return self.ratio > 1

    @property
    def series(self) -> SeriesKey:
        return self.device, self.bundle, self.precision, self.threads


@dataclass(frozen=True)
class Regressions:
    """What was analysed and what was found (``change_points`` newest first)."""

    points: list[TrendPoint]  # every point read, valid and invalid, oldest first
    change_points: list[ChangePoint]
    series: int  # series with at least one valid point
    valid_points: int
    detector: DetectorSettings


# Change points by series (a digest of its values: a key of 16 bytes, not the 10^3 floats of a
# long series). Why: Otava costs 4-25 ms per series and /trends shows every series (up to 50
# devices x 4 bundles x 3 thread counts = 600 in bench/dashboard.py); the old lru_cache of 512
# whole series held fewer than one page shows, so cycling through them could evict each before
# its next use, and 1,000-point keys made a larger one costly. A series changes only when a run
# adds a point, so a reload recomputes only the series that did. ~100 bytes an entry.
FOUND_CACHE_SIZE = 20_000
_found: OrderedDict[tuple[bytes, DetectorSettings], tuple[tuple[int, float], ...]] = \
    OrderedDict()
_found_lock = threading.Lock()


def change_indices(values: Sequence[float], settings: DetectorSettings = DETECTOR,
                   ) -> list[tuple[int, float]]:
    """(index where a new level starts, p-value) of each change point of ``values``, in order.

    Otava's split (per window width) and merge at ``max_pvalue``, then segments shorter than
    ``min_points`` are merged away, weakest first, and the survivors re-tested between their
    new neighbours."""
    if len(values) < 2 * settings.min_points:
        return []
    series = tuple(float(v) for v in values)
    key = (hashlib.blake2b(struct.pack(f"<{len(series)}d", *series), digest_size=16).digest(),
           settings)
    with _found_lock:
        found = _found.get(key)
        if found is not None:
            _found.move_to_end(key)
            return list(found)
    found = _change_indices(series, settings)
    with _found_lock:
        _found[key] = found
        while len(_found) > FOUND_CACHE_SIZE:
            _found.popitem(last=False)
    return list(found)


def _change_indices(values: tuple[float, ...], settings: DetectorSettings,
                    ) -> tuple[tuple[int, float], ...]:
    """Otava's change points of one series (cached by ``change_indices``)."""
    from otava.analysis import TTestSignificanceTester, merge, split

    # A list, not an ndarray: otava 0.8.0's window step slices only non-array input (an array
    # is searched whole in every window, and the indices come out shifted).
    series = list(values)
    # Otava's compute_change_points, over several window widths: candidates ("weak" change
    # points, at 10x the p threshold, as Otava does) from each, then one merge at the threshold.
    # A narrow window finds a regression fixed a few runs later (in a wide one the first split
    # tried mixes both levels, fails the test, and ends that window's search); a wide one sees
    # more history, so a step in noisy runs has more points behind it.
    weak: dict[int, Any] = {}
    for window in settings.windows:
        for candidate in split(series, window, min(10 * settings.max_pvalue, 0.05)):
            weak.setdefault(int(candidate.index), candidate)
    tester = TTestSignificanceTester(settings.max_pvalue)
    found = [weak[i] for i in sorted(weak)]
    intervals = tester.get_intervals(found)
    found = merge([tester.change_point(c.to_candidate(), series, intervals) for c in found],
                  series, settings.max_pvalue, settings.min_magnitude)

    def short(cps: list[Any]) -> list[Any]:
        bounds = [0, *(c.index for c in cps), len(series)]
        return [c for i, c in enumerate(cps)
                if min(bounds[i + 1] - bounds[i], bounds[i + 2] - bounds[i + 1])
                < settings.min_points]

    while found and (too_short := short(found)):
        found.remove(max(too_short, key=lambda c: c.stats.pvalue))
        intervals = tester.get_intervals(found)
        found = [tester.change_point(c.to_candidate(), series, intervals) for c in found]
        found = merge(found, series, settings.max_pvalue, settings.min_magnitude)
    return tuple((int(c.index), float(c.stats.pvalue)) for c in found)


def series_values(series: Sequence[TrendPoint]) -> tuple[str, list[float]]:
    """What detection reads of one series: its CPU p50s (the process's CPU time per timed run,
    agent/bench.py) when every point has one, else its wall-clock p50s. Why CPU time: wall
    time also counts the cores given to other work; in bench/changepoints.py's A/A recording
    on a shared 2-core VM the wall p50 moved by a median 28% from run to run, the CPU p50 by
    8.5%. A series with points from an agent before CPU times (or none) stays on wall time."""
    if series and all(p.cpu_p50_ms for p in series):
        return "cpu", [float(p.cpu_p50_ms or 0.0) for p in series]
    return "wall", [p.p50_ms for p in series]


def series_of(points: Iterable[TrendPoint]) -> dict[SeriesKey, list[TrendPoint]]:
    """The valid points of each series, in run order."""
    out: dict[SeriesKey, list[TrendPoint]] = {}
    for point in sorted(points, key=lambda p: (p.at, p.run_id)):
        if point.valid:
            out.setdefault(point.series, []).append(point)
    return out


def find_change_points(points: Iterable[TrendPoint], settings: DetectorSettings = DETECTOR,
                       by_series: dict[SeriesKey, list[TrendPoint]] | None = None,
                       ) -> list[ChangePoint]:
    """Change points of every series in ``points`` (valid points only), newest first.
    ``by_series``: ``series_of(points)`` when the caller has it already."""
    from orchestrator.measure.stats import compare_samples

    found = []
    for (device, bundle, precision, threads), series in \
            (series_of(points) if by_series is None else by_series).items():
        metric, values = series_values(series)
        cuts = change_indices(values, settings)
        bounds = [0, *(i for i, _ in cuts), len(values)]
        for n, (index, p_value) in enumerate(cuts):
            before, after = values[bounds[n]:index], values[index:bounds[n + 2]]
            shift = compare_samples(before, after)  # median(after) / median(before), CI
            if not shift.ratio:
                continue  # a 0 ms median: no ratio to report (not a real p50)
            first, last = series[index], series[index - 1]
            found.append(ChangePoint(
                device, bundle, precision, threads, first.run_id, first.version, first.at,
                last.run_id, last.version, float(shift.median_a or 0.0),
                float(shift.median_b or 0.0), float(shift.ratio), shift.ci_low,
                shift.ci_high, p_value, len(before), len(after), metric))
    return sorted(found, key=lambda c: (c.at, c.run_id), reverse=True)


# Whole answers of ``regressions`` by DB, filters and the results' version (``data_version``).
# Why: at 10M latency samples (bench/dashboard.py --scale 10) reading and grouping the newest
# 1,000 runs' 100,000 results into 50,000 points took ~600 ms of CPU per Trends page, and the
# answer changes only when a result is stored (results are only ever inserted: a new one moves
# max(id)). A few entries: one holds up to 50,000 points (~10 MB).
ANSWER_CACHE_SIZE = 8
_answers: OrderedDict[tuple[Any, ...], Regressions] = OrderedDict()


def regressions(session: Session, bundle: str | None = None, threads: int | None = None,
                devices: Iterable[str] | None = None,
                settings: DetectorSettings = DETECTOR,
                max_runs: int = trends.MAX_RUNS) -> Regressions:
    """Read the benchmark series (``trends.trend_points``, the newest ``max_runs`` benchmark
    runs), optionally of one bundle name, one thread count, some devices; find their change
    points. The answer is shared (cached until a result is stored): do not modify it."""
    wanted = None if devices is None else tuple(sorted(set(devices)))
    key = (str(session.get_bind().url), bundle, threads, wanted, settings, max_runs,
           trends.data_version(session))
    with _found_lock:
        cached = _answers.get(key)
        if cached is not None:
            _answers.move_to_end(key)
            return cached
    points = trends.trend_points(session, bundle, threads, max_runs, devices=wanted)
    by_series = series_of(points)
    answer = Regressions(points, find_change_points(points, settings, by_series),
                         len(by_series), sum(len(s) for s in by_series.values()), settings)
    with _found_lock:
        _answers[key] = answer
        while len(_answers) > ANSWER_CACHE_SIZE:
            _answers.popitem(last=False)
    return answer


def _rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def change_point_public(cp: ChangePoint) -> dict[str, Any]:
    return {"device": cp.device, "bundle": cp.bundle, "precision": cp.precision,
            "threads": cp.threads, "run_id": cp.run_id, "version": cp.version,
            "at": cp.at.isoformat(), "previous_run_id": cp.previous_run_id,
            "previous_version": cp.previous_version,
            "direction": "slower" if cp.slower else "faster",
            "before_ms": _rounded(cp.before_ms, 6), "after_ms": _rounded(cp.after_ms, 6),
            "ratio": _rounded(cp.ratio), "ci_low": _rounded(cp.ci_low),
            "ci_high": _rounded(cp.ci_high), "p_value": float(f"{cp.p_value:.3g}"),
            "points_before": cp.points_before, "points_after": cp.points_after,
            "metric": cp.metric}


def regressions_public(found: Regressions) -> dict[str, Any]:
    """The JSON of ``runs regressions --json`` and ``GET /api/regressions``."""
    return {"change_points": [change_point_public(c) for c in found.change_points],
            "regressions": sum(c.slower for c in found.change_points),
            "series": found.series, "valid_points": found.valid_points,
            "detector": {"method": "apache-otava E-Divisive means, t-test merge",
                         "max_pvalue": found.detector.max_pvalue,
                         "min_magnitude": found.detector.min_magnitude,
                         "min_points": found.detector.min_points,
                         "windows": list(found.detector.windows)}}


def format_p_value(p: float) -> str:
    """One significant figure below 0.001 (the detector's threshold is about there, so
    ``<0.001`` would say nothing), three decimals above."""
    return f"{p:.0e}" if p < 0.001 else f"{p:.3f}"


def series_label(cp: ChangePoint) -> str:
    precision = f" {cp.precision}" if cp.precision else ""
    threads = "threads ?" if cp.threads is None else \
        f"{cp.threads} thread" + ("" if cp.threads == 1 else "s")
    return f"{cp.bundle}{precision} on {cp.device}, {threads}"


def display_row(cp: ChangePoint) -> dict[str, Any]:
    """A change point as text cells (the CLI table and the Trends page)."""
    from orchestrator.measure.reports import format_ci, format_number

    return {"series": series_label(cp), "device": cp.device, "bundle": cp.bundle,
            "precision": cp.precision, "threads": cp.threads, "run_id": cp.run_id,
            "version": cp.version, "previous_run_id": cp.previous_run_id,
            "previous_version": cp.previous_version, "at": cp.at,
            "direction": "slower" if cp.slower else "faster",
            "before": format_number(cp.before_ms), "after": format_number(cp.after_ms),
            "ratio": f"{cp.ratio:.3f}", "ci": format_ci(cp.ci_low, cp.ci_high),
            "p": format_p_value(cp.p_value),
            "points": f"{cp.points_before} | {cp.points_after}", "metric": cp.metric}


TABLE_COLUMNS = ("series", "run", "version", "change", "metric", "before ms", "after ms",
                 "after/before", "95% CI", "p", "points")


def table_cells(row: dict[str, Any]) -> tuple[Any, ...]:
    """A ``display_row`` as the cells of ``TABLE_COLUMNS`` (the CLI's and the demo's table)."""
    return (row["series"], row["run_id"], f"{row['previous_version']} -> {row['version']}",
            row["direction"], row["metric"], row["before"], row["after"], row["ratio"],
            row["ci"], row["p"], row["points"])


CAPTION = (
    "A change point is where a series (device x bundle x precision x threads, valid benchmark "
    "p50s in run order) moves to another level and stays there; throttled or invalid results "
    "are left out. run = the first run of the new level; after/before = median p50 after / "
    "before (> 1: slower), with a bootstrap 95% CI; metric = which p50: cpu (the CPU time of "
    "a timed run, steadier than wall time when other work shares the device; read whenever "
    "the whole series has it) or wall; p = the detector's test of the two "
    "segments (Apache Otava: E-Divisive means, kept at p < {max_p:g} and a shift of at least "
    "{min_shift:g}%, at least {min_points} runs per segment); points = runs before | after.")


def caption(settings: DetectorSettings = DETECTOR) -> str:
    return CAPTION.format(max_p=settings.max_pvalue, min_points=settings.min_points,
                          min_shift=100 * settings.min_magnitude)


def alert_regressions(settings: Settings, bundle: str,
                      devices: Iterable[str] | None = None) -> list[int]:
    """After a benchmark of ``bundle``: tell the webhooks about each slowdown its series now
    show (``fleet.alerts.notify_regression``; each series x run alerts once, so calling this
    after every bench is safe). Never raises: a detector error must not fail the benchmark.
    Returns the new alerts' ids."""
    try:
        with session_scope(settings) as session:
            found = regressions(session, bundle, devices=devices)
    except Exception:  # the measurement stands whatever the analysis does
        log.exception("change-point detection after a benchmark of %s failed", bundle)
        return []
    made = []
    for cp in found.change_points:
        if not cp.slower:
            continue
        alert = notify_regression(
            settings, device=cp.device, bundle=cp.bundle, precision=cp.precision,
            threads=cp.threads, run_id=cp.run_id, ratio=cp.ratio,
            ci95=(cp.ci_low, cp.ci_high) if cp.ci_low is not None and cp.ci_high is not None
            else None, p_value=cp.p_value, p50_before_ms=cp.before_ms,
            p50_after_ms=cp.after_ms, bundle_version=cp.version,
            detail={"previous_version": cp.previous_version,
                    "previous_run_id": cp.previous_run_id,
                    "points_before": cp.points_before, "points_after": cp.points_after})
        if alert is not None:
            made.append(alert)
    return made
