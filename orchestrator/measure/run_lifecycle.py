"""What bench and eval both do around a device session: open their runs with the job that makes
them, keep each thread count a device finishes, word and record a device's failure, close
the runs with their final state.

Split from ``runs`` so that ``evals`` shares these without going through the bench module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import AgentError, EdgeFleetError
from orchestrator.core.listings import interrupted_reason
from orchestrator.core.models import Job, Result, Run
from orchestrator.fleet.fanout import Outcome
from orchestrator.measure.entries import checked_common, checked_entry

log = logging.getLogger(__name__)


def keeping(finished: list[tuple[dict[str, Any], dict[str, Any]]],
            inner: Callable[[dict[str, Any]], None] | None,
            asked: Collection[int]) -> Callable[[dict[str, Any]], None]:
    """An agent event handler that keeps each finished thread count's ``(entry, common)``
    (event ``measured``), checked (``entries.checked_entry``: only thread counts ``asked``,
    each once per call, however many times a device repeats it), and passes every other event
    on to ``inner``."""
    seen: set[int] = set()

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "measured":
            entry = checked_entry(event.get("entry"), asked)
            if entry is not None and entry["threads"] not in seen:
                seen.add(entry["threads"])
                finished.append((entry, checked_common(event.get("common"))))
        elif inner is not None:
            inner(event)

    return on_event


def session_failure(device: str, exc: EdgeFleetError, cancelled: Callable[[], bool] | None,
                    bundle_ref: str) -> str:
    """What a device's failed bench/eval session says: a cancel names itself (the aborted
    connection's error is only how it showed), a missing bundle says how to push it."""
    failure = str(exc)
    if cancelled is not None and cancelled():
        return f"{device}: stopped, the run was cancelled ({failure})"
    if isinstance(exc, AgentError) and exc.code == "not_on_device":
        # The agent's own hint names no device ("edgefleet push N@V TARGETS"): this one does.
        failure = failure.split(": push it first")[0]
        failure += f" (push it first: `edgefleet push {bundle_ref} {device}`)"
    return failure


def unexpected_failure(device: str, operation: str, exc: Exception) -> str:
    """What a device's session says when it failed in a way nobody foresaw (a bug, an answer
    of a shape no check caught): logged with its traceback, and worded as a failure, so the
    device's failure row is written, its finished thread counts stay, and the others go on."""
    log.exception("%s: %s failed unexpectedly", device, operation)
    return (f"{device}: {operation} failed unexpectedly ({type(exc).__name__}: "
            f"{str(exc)[:300]}); the traceback is in the log (the server's, or the command's "
            "stderr)")


def missing_threads(device: str, asked: Iterable[int], answered: Iterable[Any]) -> str | None:
    """The failure of a session that ended well but answered no result for some thread
    counts asked (a device may drop or mislabel them): the run must not pass as complete."""
    missing = sorted(set(asked) - set(answered))
    return (f"{device}: the device's answer has no result for threads "
            f"{', '.join(map(str, missing))}") if missing else None


def failure_row(run: Run, device: str, failure: str, kept: Iterable[Any], simulated: bool,
                precision: str | None) -> Result:
    """The row of a device whose session failed (``threads`` null), naming the thread counts
    it finished before, whose results are stored next to it."""
    done = sorted(kept)
    note = (f" (results of threads {', '.join(map(str, done))}, finished before this, are "
            "kept)") if done else ""
    return Result(run_id=run.id, device_name=device, threads=None, ok=False,
                  error=failure + note, simulated=simulated, precision=precision)


def open_runs(session: Session, runs: Sequence[Run], job_id: int | None) -> None:
    """Store new runs with the job that makes them, and link the job to its main (last) run
    now, not when it ends: whoever finds the job crashed finalizes its runs
    (``jobs.recover_interrupted``), and its page links the run while it is measured."""
    for run in runs:
        run.job_id = job_id
    session.add_all(runs)
    session.flush()
    if job_id is not None:
        session.execute(update(Job).where(col(Job.id) == job_id).values(run_id=runs[-1].id))


def close_runs(settings: Settings, runs: Sequence[Run], outcomes: Sequence[Outcome],
               cancelled: bool = False) -> list[Run]:
    """Each run's final state from its devices' outcomes; returns the stored, detached rows.

    ``cancelled`` wins: a run stopped by its user (a cancelled job, Ctrl-C) is *interrupted*,
    like one whose process died (``jobs.recover_interrupted``): neither a success nor a device
    failure, but unfinished. It keeps the results finished before the stop, gets no verdict
    (``verdicts.verdicts_for_run``), and its job says why (``state_reason``)."""
    ok = sum(o.ok for o in outcomes)
    state = ("interrupted" if cancelled else "succeeded" if ok == len(outcomes)
             else "partial" if ok else "failed")
    finished = []
    with session_scope(settings) as session:
        for run in runs:
            stored = session.get(Run, run.id)
            assert stored is not None
            if stored.state == "running":  # else another process already closed it
                stored.state, stored.finished_at = state, datetime.now(UTC)
                session.add(stored)
            finished.append(stored)
        session.flush()
        session.expunge_all()
    return finished


FINISHED = ("succeeded", "partial", "failed")  # run states whose every device has answered
def state_reason(session: Any, run: Run) -> str | None:
    """Why a run is interrupted, in words (None for any other state): the error of the job
    that made it — who cancelled it, or which process died — read through ``session``."""
    if run.state != "interrupted":
        return None
    job = session.get(Job, run.job_id) if session is not None and run.job_id else None
    return interrupted_reason(run.state, job)
