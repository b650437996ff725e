"""Change points on CPU time (issue 13 item 2): a series whose results carry the CPU p50 of
their timed runs is tested on it, because on a shared machine the wall-clock p50 swings with
other work while the CPU time an inference costs does not; a series without it (an agent
before CPU times) stays on wall time. And the service's cached answer follows new results.

The numbers are runs this machine measured (bench/changepoints_aa.json, 1 thread): the wall
p50s of ten A/A runs went from 4.0 to 10.5 ms while their CPU p50s stayed at 1.9-2.5 ms.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.measure import regressions, trends
from tests.unit.measure.test_regressions import T0, _run

WALL = [7.46, 6.48, 10.47, 4.00, 7.72, 5.68, 6.96, 5.50, 6.83, 10.22]
CPU = [2.31, 2.31, 2.47, 1.89, 2.26, 1.89, 2.14, 2.37, 2.39, 2.37]
WALL_AFTER = [13.23, 5.27, 6.09, 1.81, 7.46]  # the next five recorded runs ...
CPU_AFTER = [2.17, 2.00, 1.96, 1.77, 2.31]
SLOWER = 1.5  # ... with a version 1.5x the work


def _history(settings: Settings, cpu: bool = True, start: int = 0) -> list[int]:
    runs = []
    points = list(zip(WALL, CPU, strict=True)) + [
        (w * SLOWER, c * SLOWER) for w, c in zip(WALL_AFTER, CPU_AFTER, strict=True)]
    for n, (wall, cpu_p50) in enumerate(points):
        runs.append(_run(settings, "1" if n < len(WALL) else "2",
                         T0 + timedelta(days=start + n),
                         [{"device_name": "pi-a", "p50_ms": wall,
                           "cpu_p50_ms": cpu_p50 if cpu else None}]))
    return runs


def test_a_step_in_cpu_time_is_found_where_wall_time_hides_it(home: Path) -> None:
    settings = Settings(home=home, database_url=None)
    runs = _history(settings)
    with session_scope(settings) as session:
        found = regressions.regressions(session)
    (change,) = found.change_points
    assert change.metric == "cpu" and change.run_id == runs[len(WALL)]
    assert 1.2 < change.ratio < 1.6 and change.ci_low > 1  # medians of noisy runs: 1.30
    assert change.before_ms == pytest.approx(2.3, abs=0.05)  # the CPU p50s' median
    row = regressions.display_row(change)
    assert row["metric"] == "cpu"
    assert "cpu" in regressions.table_cells(row)
    assert regressions.change_point_public(change)["metric"] == "cpu"


def test_without_cpu_times_the_wall_series_is_tested(home: Path) -> None:
    """The same runs from an agent that sent no CPU times: the wall p50s, whose run-to-run
    swings hide the step from the detector (the figure the README gives for wall time)."""
    settings = Settings(home=home, database_url=None)
    _history(settings, cpu=False)
    with session_scope(settings) as session:
        found = regressions.regressions(session)
    assert found.change_points == [] and found.valid_points == len(WALL) + len(WALL_AFTER)
    assert all(p.cpu_p50_ms is None for p in found.points)


def test_the_cached_answer_follows_a_new_result(home: Path) -> None:
    """The answer is cached by the results' max id and count: a stored result is seen at
    once, and an unchanged DB is answered from the cache (the same object); the version
    heatmap's cells likewise."""
    settings = Settings(home=home, database_url=None)
    _history(settings)
    with session_scope(settings) as session:
        first = regressions.regressions(session)
        assert regressions.regressions(session) is first
    _run(settings, "2", T0 + timedelta(days=30),
         [{"device_name": "pi-a", "p50_ms": 9.0, "cpu_p50_ms": 3.0}])
    with session_scope(settings) as session:
        again = regressions.regressions(session)
    assert again is not first and again.valid_points == first.valid_points + 1
    with session_scope(settings) as session:
        cells = trends.version_matrix(session, "kws")
        assert trends.version_matrix(session, "kws") is cells  # the heatmap's, cached alike
    _run(settings, "3", T0 + timedelta(days=31), [{"device_name": "pi-a", "p50_ms": 9.0}])
    with session_scope(settings) as session:
        assert [c.version for c in trends.version_matrix(session, "kws")] == ["1", "2", "3"]


def test_rounds_keep_the_median_of_their_cpu_p50s() -> None:
    """An interleaved gate's rounds are merged into one result: the CPU times are not sent
    raw, so the merged CPU p50 is the median of the rounds' (and None if a round has none)."""
    from orchestrator.measure.rounds import merge_rounds

    def entry(p50: float, cpu: float | None) -> dict:
        return {"ok": True, "valid": True, "latencies_ms": [p50] * 3, "wall_s": 1.0,
                "runs": 3, "cpu_ms": None if cpu is None else {"p50": cpu}}

    merged = merge_rounds([entry(5.0, 2.0), entry(9.0, 2.4), entry(4.0, 2.1)])
    assert merged["cpu_ms"] == {"p50": pytest.approx(2.1)}
    assert merge_rounds([entry(5.0, 2.0), entry(9.0, None)])["cpu_ms"] is None
