"""B against A for two stored runs (``pairing.compare_runs`` on ``runs.compared_runs``), computed
once per pair of finished runs: the service of the Compare page and ``GET /api/compare``.

Why a cache: a comparison needs both runs' raw latencies and a bootstrap per device x thread
count — for two interleaved 150-result runs ~150 ms of decoding and statistics, the slowest
page on the dashboard — and a team opens the same comparison again and again (the page, then
its CSV and Markdown exports, then a colleague following the link). A run whose state is final
never changes again: no result is added, edited or deleted after it (results are only written
while it runs). So its rows are kept, keyed by the database, both run ids and what makes a run
final (state, finished_at), and a running run is always computed afresh. The cache is per
process and small (``CACHE_SIZE`` pairs of ~150 short rows each).

The CLI (``edgefleet runs compare``) is one process per comparison and computes directly.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from sqlmodel import Session

from orchestrator.core.models import Run
from orchestrator.measure.pairing import compare_runs
from orchestrator.measure.run_lifecycle import FINISHED
from orchestrator.measure.runs import compared_runs, get_run

CACHE_SIZE = 32
FINAL_STATES = frozenset(FINISHED) | {"interrupted"}

Comparison = tuple[dict[str, Any], list[dict[str, Any]]]
_cache: OrderedDict[tuple[Any, ...], Comparison] = OrderedDict()
_lock = threading.Lock()


def _final(run: Run) -> bool:
    return run.state in FINAL_STATES and run.finished_at is not None


def _key(session: Session, runs: tuple[Run, Run], include_invalid: bool) -> tuple[Any, ...]:
    # The database by its URL: one process may serve (or test) several homes.
    return (str(session.get_bind().url), include_invalid,
            *((r.id, r.state, r.finished_at) for r in runs))


def _copy(value: Comparison) -> Comparison:
    """Fresh dicts for the caller (pages add keys to rows); the values inside are numbers and
    short strings, never changed in place."""
    runs, rows = value
    return {side: dict(run) for side, run in runs.items()}, [dict(row) for row in rows]


def comparison(session: Session, a: int, b: int, include_invalid: bool = False) -> Comparison:
    """({"a": run A, "b": run B} without their results, ``compare_runs`` rows). NotFoundError
    for an unknown run, EdgeFleetError for runs of different kinds (``runs.compared_runs``)."""
    pair = (get_run(session, a), get_run(session, b))
    key = _key(session, pair, include_invalid) if all(_final(r) for r in pair) else None
    if key is not None:
        with _lock:
            cached = _cache.get(key)
            if cached is not None:
                _cache.move_to_end(key)
                return _copy(cached)
    first, second = compared_runs(session, a, b)
    rows = compare_runs(first.pop("results"), second.pop("results"),
                        include_invalid=include_invalid)
    value: Comparison = ({"a": first, "b": second}, rows)
    if key is not None:
        with _lock:
            _cache[key] = _copy(value)
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    return value


def clear_cache() -> None:
    """Forget every kept comparison (a DB restored from a backup under the same path)."""
    with _lock:
        _cache.clear()
