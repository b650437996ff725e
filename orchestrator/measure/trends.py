"""Latency over time and across bundle versions, aggregated in SQL from the Result/Run columns.

Benchmarks only: every query here reads runs of kind ``bench``. An eval run times each labelled
sample's inference inside the evaluation (a new input each call), not a benchmark's timed loop
over one input; drawn on the same line, the demo's eval read as a +75% to +189% "regression",
and averaged into the heatmap it made INT8 look 35% slower than FP32.

Why columns only: months of nightly benchmarks are thousands of results, each carrying kB of
compressed raw latencies and telemetry samples. A trend or a version matrix needs the p50
column and a validity bit, so only those are selected and grouped in the database; nothing
here ever loads ``Result.latencies`` or ``Result.telemetry_samples``.

Validity follows the reports: a result is *invalid* when ``valid`` is false (measured while
throttled, under-volted or with unknown sensors); failed results (``ok`` false, no p50) are not
points at all. Invalid and valid p50s are aggregated separately, so a throttled measurement is
never averaged into a clean one.

A *series* is one device x bundle name x precision x thread count, in run order: the versions of a
bundle follow one another on it (a slower new version is exactly the regression to catch), while
its INT8 variant, a different precision, is a series of its own. Which points of a series start a
new level is decided by change-point detection (``orchestrator.measure.regressions``), over its
valid points only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, false, func
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from orchestrator.core.models import Bundle, Result, Run

SeriesKey = tuple[str, str, str | None, int | None]  # device, bundle name, precision, threads

BENCH = "bench"  # Run.kind of a benchmark; the other kind, "eval", never shows here
MAX_RUNS = 1000  # a trend reads at most the newest this many runs (years of nightly runs)
# The Trends page's choice of how many of the newest benchmark runs it reads (``?runs=``), and
# its default. Why a window: at 10M latency samples (bench/dashboard.py --scale 10) the newest
# 1,000 runs are 50,000 points in 600 series, ~650 ms of CPU to read, group and test per load;
# 200 runs is a fifth of it. The CLI and the API read MAX_RUNS.
PAGE_RUNS = (50, 100, 200, 500, MAX_RUNS)
PAGE_RUNS_DEFAULT = 200


@dataclass
class TrendPoint:
    """One run's p50 for one device x precision x thread count (valid and invalid results
    kept apart)."""

    device: str
    bundle: str
    version: str
    precision: str | None
    threads: int | None
    run_id: int
    at: datetime
    p50_ms: float
    valid: bool
    results: int = 1
    # The mean CPU p50 of its results (``Result.cpu_p50_ms``) when every one has it, else None:
    # what change-point detection reads (``regressions.series_values``). Valid points only.
    cpu_p50_ms: float | None = None

    @property
    def series(self) -> SeriesKey:
        return self.device, self.bundle, self.precision, self.threads


@dataclass
class MatrixCell:
    """One device x version x thread count of a bundle: the mean p50 of its valid results
    (``p50_ms``), or of its invalid ones when it has no valid result (``invalid_ms``)."""

    device: str
    version: str
    precision: str | None
    threads: int | None
    p50_ms: float | None
    valid_runs: int
    invalid_ms: float | None
    invalid_runs: int


def _split_p50() -> tuple[Any, Any, Any, Any]:
    """avg/count of p50 over valid results and over invalid ones, as SQL expressions."""
    invalid = col(Result.valid) == false()
    valid_p50 = case((invalid, None), else_=col(Result.p50_ms))
    invalid_p50 = case((invalid, col(Result.p50_ms)), else_=None)
    return (func.avg(valid_p50), func.count(valid_p50),
            func.avg(invalid_p50), func.count(invalid_p50))


def _cpu_p50() -> tuple[Any, Any]:
    """avg/count of the CPU p50 over valid results, as SQL expressions."""
    valid_cpu = case((col(Result.valid) == false(), None), else_=col(Result.cpu_p50_ms))
    return func.avg(valid_cpu), func.count(valid_cpu)


def _measured() -> list[Any]:
    """Conditions of a point: a benchmark's result that has a p50 (joined with its Run)."""
    return [col(Run.kind) == BENCH, col(Result.ok), col(Result.p50_ms).is_not(None)]


def bundle_names(session: Session) -> list[str]:
    """Names of the bundles that have been benchmarked, for the pages' filters."""
    return list(session.exec(select(Run.bundle_name).distinct().where(Run.kind == BENCH)
                             .order_by(col(Run.bundle_name))).all())


def thread_counts(session: Session) -> list[int]:
    """Thread counts that benchmarks measured, for the pages' filters.

    Each distinct count (``ix_result_threads`` alone answers that) is kept if some benchmark
    run has a result with it: an EXISTS that stops at the first. Joining every result to its
    run first, then DISTINCT, read all 100,000 rows of a 10M-sample history (~1 s wall on a
    busy 2-core VM) for three numbers."""
    counts = select(Result.threads).distinct().subquery()
    other = aliased(Result)
    measured = (select(other.id).join(Run, col(other.run_id) == col(Run.id))
                .where(col(other.threads) == counts.c.threads, Run.kind == BENCH).exists())
    query = (select(counts.c.threads).where(counts.c.threads.is_not(None), measured)
             .order_by(counts.c.threads))
    return [int(t) for t in session.exec(query).all()]


def trend_points(session: Session, bundle: str | None = None, threads: int | None = None,
                 max_runs: int = MAX_RUNS, devices: Iterable[str] | None = None,
                 ) -> list[TrendPoint]:
    """Points of every series (see the module docstring), oldest run first; optionally one
    bundle name, one thread count and/or some devices. The newest ``max_runs`` benchmark runs
    are read.

    Two queries: the runs (at most ``max_runs`` rows), then their results grouped by the
    leading columns of the covering index ``ix_result_summary``, which SQLite then groups in
    index order; joining the run's name, version and time into that GROUP BY made it sort
    every row twice (temp B-trees for the GROUP BY and the ORDER BY)."""
    runs_query = (select(Run.id, Run.bundle_name, Run.bundle_version, Run.created_at)
                  .where(Run.kind == BENCH).order_by(col(Run.id).desc()).limit(max_runs))
    if bundle:
        runs_query = runs_query.where(Run.bundle_name == bundle)
    runs = {int(run_id): (name, version, at)
            for run_id, name, version, at in session.exec(runs_query).all()}
    if not runs:
        return []
    valid_avg, valid_n, invalid_avg, invalid_n = _split_p50()
    cpu_avg, cpu_n = _cpu_p50()
    query = (select(Result.run_id, Result.device_name, Result.precision, Result.threads,
                    valid_avg, valid_n, invalid_avg, invalid_n, cpu_avg, cpu_n)
             .where(col(Result.run_id).in_(runs_query.with_only_columns(col(Run.id))),
                    col(Result.ok), col(Result.p50_ms).is_not(None))
             .group_by(col(Result.run_id), col(Result.device_name), col(Result.precision),
                       col(Result.threads)))
    if threads is not None:
        query = query.where(Result.threads == threads)
    if devices is not None:
        query = query.where(col(Result.device_name).in_(list(devices)))
    points = []
    for (run_id, device, precision, n_threads, v_avg, v_n, i_avg, i_n, c_avg, c_n) in \
            session.exec(query).all():
        name, version, at = runs[run_id]
        for p50, count, valid in ((v_avg, v_n, True), (i_avg, i_n, False)):
            if count:
                cpu = float(c_avg) if valid and c_n == count else None
                points.append(TrendPoint(device, name, version, precision, n_threads, run_id,
                                         at, float(p50), valid, int(count), cpu))
    points.sort(key=lambda p: (p.at, p.run_id))  # stable: a run's points keep their order
    return points


def data_version(session: Session) -> tuple[int, int]:
    """(max id, count) of the result rows, both from the primary key: what the cached answers
    here and in ``regressions`` are keyed by. Results are only ever inserted (never updated
    into or out of a benchmark's aggregates, never deleted), so a new one moves max(id)."""
    top, count = session.exec(select(func.max(Result.id), func.count(Result.id))).one()
    return int(top or 0), int(count or 0)


# version_matrix answers by DB, bundle, threads and data_version. Why: the heatmap aggregates
# every benchmark result of the bundle (no window: a version benchmarked once long ago is still
# a column), 50,000 results and ~55 ms of CPU at 10M latency samples (bench/dashboard.py
# --scale 10), which changes only when a result is stored.
_matrices: OrderedDict[tuple[Any, ...], list[MatrixCell]] = OrderedDict()
_matrices_lock = threading.Lock()
MATRIX_CACHE_SIZE = 32


def version_matrix(session: Session, bundle: str, threads: int | None = None
                   ) -> list[MatrixCell]:
    """Every device x version x thread count benchmarked for bundle ``bundle``: the mean of the
    valid results' p50s (each result is one run of that version on that device), and the
    invalid ones apart. Versions in build order (their Bundle row's creation), then name.
    The list is shared (cached until a result is stored): do not modify it."""
    key = (str(session.get_bind().url), bundle, threads, data_version(session))
    with _matrices_lock:
        cached = _matrices.get(key)
        if cached is not None:
            _matrices.move_to_end(key)
            return cached
    cells = _version_matrix(session, bundle, threads)
    with _matrices_lock:
        _matrices[key] = cells
        while len(_matrices) > MATRIX_CACHE_SIZE:
            _matrices.popitem(last=False)
    return cells


def _version_matrix(session: Session, bundle: str, threads: int | None) -> list[MatrixCell]:
    valid_avg, valid_n, invalid_avg, invalid_n = _split_p50()
    built = func.min(col(Bundle.created_at))
    query = (select(Result.device_name, Run.bundle_version, Result.threads,
                    func.max(col(Result.precision)), valid_avg, valid_n, invalid_avg,
                    invalid_n, built)
             .join(Run, col(Result.run_id) == col(Run.id))
             .outerjoin(Bundle, (col(Bundle.name) == col(Run.bundle_name))
                        & (col(Bundle.version) == col(Run.bundle_version)))
             .where(Run.bundle_name == bundle, *_measured())
             .group_by(col(Result.device_name), col(Run.bundle_version), col(Result.threads))
             .order_by(built, col(Run.bundle_version), col(Result.device_name),
                       col(Result.threads)))
    if threads is not None:
        query = query.where(Result.threads == threads)
    return [MatrixCell(device, version, precision, n_threads,
                       None if v_avg is None else float(v_avg), int(v_n),
                       None if i_avg is None else float(i_avg), int(i_n))
            for device, version, n_threads, precision, v_avg, v_n, i_avg, i_n, _ in
            session.exec(query).all()]


def versions_in_order(cells: Sequence[MatrixCell]) -> list[str]:
    """The versions of ``version_matrix`` cells, first appearance first (build order)."""
    return list(dict.fromkeys(cell.version for cell in cells))
