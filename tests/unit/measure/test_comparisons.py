"""``comparisons.comparison``: the same rows as computing ``compare_runs`` directly, kept for
finished runs only, against a real SQLite DB made by the migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlmodel import Session

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError, NotFoundError
from orchestrator.core.models import Result, Run
from orchestrator.measure import comparisons
from orchestrator.measure.pairing import compare_runs
from orchestrator.measure.runs import compared_runs, pack_floats


def _run(session: Session, state: str, kind: str = "bench", slower: float = 1.0,
         devices: tuple[str, ...] = ("pi-a", "pi-b")) -> int:
    now = datetime.now(UTC)
    run = Run(kind=kind, bundle_name="m", bundle_version="1", bundle_digest="d" * 64,
              targets="all", params={"threads": [1]}, created_by="test", state=state,
              created_at=now, finished_at=None if state == "running" else now)
    session.add(run)
    session.flush()
    assert run.id is not None
    for index, name in enumerate(devices):
        _result(session, run.id, name, slower, seed=run.id * 10 + index)
    return run.id


def _result(session: Session, run_id: int, device: str, slower: float, seed: int) -> None:
    values = 4.0 * slower * np.random.default_rng(seed).lognormal(0, 0.05, 40)
    session.add(Result(run_id=run_id, device_name=device, threads=1, ok=True, valid=True,
                       simulated=True, n=40, p50_ms=float(np.median(values)),
                       telemetry_status="clean", latencies=pack_floats(values),
                       created_at=datetime.now(UTC)))


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    comparisons.clear_cache()
    return Settings(home=tmp_path / "home", database_url=None)


def test_rows_equal_the_direct_computation_and_callers_get_their_own_copies(
        settings: Settings) -> None:
    with session_scope(settings) as session:
        a, b = _run(session, "succeeded"), _run(session, "succeeded", slower=1.3)
    with session_scope(settings) as session:
        first, second = compared_runs(session, a, b)
        direct = compare_runs(first["results"], second["results"])
        runs, rows = comparisons.comparison(session, a, b)
        assert rows == direct and runs["a"]["id"] == a and "results" not in runs["b"]
        assert [r["verdict"] for r in rows] == ["slower", "slower"]
        rows[0]["verdict"] = "edited by a page"
        runs["a"]["state"] = "edited"
        again_runs, again = comparisons.comparison(session, a, b)
        assert again == direct and again_runs["a"]["state"] == "succeeded"


def test_a_running_run_is_computed_afresh_and_a_finished_one_is_kept(
        settings: Settings) -> None:
    with session_scope(settings) as session:
        a, live = _run(session, "succeeded"), _run(session, "running")
    with session_scope(settings) as session:
        assert len(comparisons.comparison(session, a, live)[1]) == 2
        _result(session, live, "pi-c", 1.0, seed=99)  # the running run measures one more
        session.flush()
        rows = comparisons.comparison(session, a, live)[1]
        assert [r["device"] for r in rows] == ["pi-a", "pi-b", "pi-c"]
        assert rows[2]["excluded"] == "only in B"
        run = session.get(Run, live)
        assert run is not None
        run.state, run.finished_at = "succeeded", datetime.now(UTC)  # it ends: now final
        session.add(run)
        session.flush()
        kept = comparisons.comparison(session, a, live)[1]
        assert kept == rows


def test_runs_of_different_kinds_and_unknown_runs_are_refused(settings: Settings) -> None:
    with session_scope(settings) as session:
        bench, evaluation = _run(session, "succeeded"), _run(session, "succeeded", kind="eval")
    with session_scope(settings) as session:
        with pytest.raises(EdgeFleetError, match="different kinds"):
            comparisons.comparison(session, bench, evaluation)
        with pytest.raises(NotFoundError):
            comparisons.comparison(session, bench, 999)
