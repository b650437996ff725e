"""Latency over time and across bundle versions, aggregated in SQL from the Result/Run columns.

Why columns only: months of nightly benchmarks are thousands of results, each carrying kB of
compressed raw latencies and telemetry samples. A trend or a version matrix needs the p50
column and a validity bit, so only those are selected and grouped in the database; nothing
here ever loads ``Result.latencies`` or ``Result.telemetry_samples``.

Validity follows the reports: a result is *invalid* when ``valid`` is false (measured while
throttled, under-volted or with unknown sensors); failed results (``ok`` false, no p50) are not
points at all. Invalid and valid p50s are aggregated separately, so a throttled measurement is
never averaged into a clean one.

The regression rule (stated on the Trends page too): within one series — same device, same
bundle *name* (its versions follow one another in the series: a slower new version is exactly
the regression to catch), same thread count — ordered by run time, a valid point is a
regression when its p50 is more than 10% above the p50 of the previous *valid* point. Invalid
points are never flagged and never serve as the reference: a throttled run says nothing about
the model, and comparing against one would hide (or invent) a regression.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, false, func
from sqlmodel import Session, col, select

from orchestrator.core.models import Bundle, Result, Run

REGRESSION_THRESHOLD = 0.10  # > 10% slower than the previous valid point
MAX_RUNS = 1000  # a trend reads at most the newest this many runs (years of nightly runs)


@dataclass
class TrendPoint:
    """One run's p50 for one device x thread count (valid and invalid results kept apart)."""

    device: str
    bundle: str
    version: str
    threads: int | None
    run_id: int
    at: datetime
    p50_ms: float
    valid: bool
    results: int = 1
    regression: bool = False
    previous_ms: float | None = None  # the previous valid p50 of the series
    change: float | None = None  # p50 / previous - 1

    @property
    def series(self) -> tuple[str, str, int | None]:
        return self.device, self.bundle, self.threads


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


def _measured() -> list[Any]:
    return [col(Result.ok), col(Result.p50_ms).is_not(None)]


def bundle_names(session: Session) -> list[str]:
    """Names of the bundles that have been benchmarked, for the pages' filters."""
    return list(session.exec(select(Run.bundle_name).distinct()
                             .order_by(col(Run.bundle_name))).all())


def thread_counts(session: Session) -> list[int]:
    return [t for t in session.exec(select(Result.threads).distinct()
                                    .order_by(col(Result.threads))).all() if t is not None]


def trend_points(session: Session, bundle: str | None = None, threads: int | None = None,
                 max_runs: int = MAX_RUNS) -> list[TrendPoint]:
    """Points of every (device, bundle name, threads) series, oldest run first, regressions
    marked (see the module docstring); optionally one bundle name and/or one thread count."""
    runs = select(Run.id).order_by(col(Run.id).desc()).limit(max_runs)
    if bundle:
        runs = runs.where(Run.bundle_name == bundle)
    valid_avg, valid_n, invalid_avg, invalid_n = _split_p50()
    query = (select(Result.run_id, Result.device_name, Result.threads, Run.bundle_name,
                    Run.bundle_version, Run.created_at, valid_avg, valid_n, invalid_avg,
                    invalid_n)
             .join(Run, col(Result.run_id) == col(Run.id))
             .where(col(Result.run_id).in_(runs), *_measured())
             .group_by(col(Result.run_id), col(Result.device_name), col(Result.threads),
                       col(Run.bundle_name), col(Run.bundle_version), col(Run.created_at))
             .order_by(col(Run.created_at), col(Result.run_id)))
    if threads is not None:
        query = query.where(Result.threads == threads)
    points = []
    for run_id, device, n_threads, name, version, at, v_avg, v_n, i_avg, i_n in \
            session.exec(query).all():
        for p50, count, valid in ((v_avg, v_n, True), (i_avg, i_n, False)):
            if count:
                points.append(TrendPoint(device, name, version, n_threads, run_id, at,
                                         float(p50), valid, int(count)))
    return mark_regressions(points)


def mark_regressions(points: Iterable[TrendPoint],
                     threshold: float = REGRESSION_THRESHOLD) -> list[TrendPoint]:
    """Set ``regression``/``previous_ms``/``change`` on the valid points, per series, in time
    order (the rule is in the module docstring). Returns the points sorted by time."""
    ordered = sorted(points, key=lambda p: (p.at, p.run_id))
    last_valid: dict[tuple[str, str, int | None], float] = {}
    for point in ordered:
        if not point.valid:
            continue
        previous = last_valid.get(point.series)
        if previous is not None and previous > 0:
            point.previous_ms = previous
            point.change = point.p50_ms / previous - 1
            point.regression = point.p50_ms > previous * (1 + threshold)
        last_valid[point.series] = point.p50_ms
    return ordered


def version_matrix(session: Session, bundle: str, threads: int | None = None
                   ) -> list[MatrixCell]:
    """Every device x version x thread count measured for bundle ``bundle``: the mean of the
    valid results' p50s (each result is one run of that version on that device), and the
    invalid ones apart. Versions in build order (their Bundle row's creation), then name."""
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
