"""The job row of work the CLI does itself (push, bench, eval, rollback, verify): shown on the
Jobs page while it runs here, done by the same executor as a queued job (``JobTracker.run``),
finalized when it ends, cancelled cleanly on Ctrl-C or from the web.

Split from ``jobs`` (the queue the server's workers take from): this side never queues, it
records a job that is already running in this process.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from orchestrator.access import audit
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.dbclock import db_now
from orchestrator.core.hostid import this_host
from orchestrator.core.models import Job
from orchestrator.jobs import context, execute, liveness
from orchestrator.jobs.queue import TERMINAL, finish_job, recover_interrupted

log = logging.getLogger(__name__)
FROM_THE_CLI = "cancelled from the CLI"  # then (Ctrl-C) or (SIGTERM), and who ran it


def _say_waiting(device: str, text: str | None) -> None:
    """A CLI job waiting for a busy device says so on stderr (its bars would just stand still)."""
    from orchestrator.present import output

    if text is not None:
        output.stderr.print(f"{text} (at most EDGEFLEET_LEASE_WAIT_S; Ctrl-C cancels)",
                            markup=False, highlight=False)


class JobTracker:
    """The job row of one CLI command; the CLI does the work itself and reports here.

    Ctrl-C (or SIGTERM) while it runs cancels the work instead of tearing the process down:
    the cancel flag stops devices at their next boundary and every open device connection of
    this process is aborted (``transport.abort_all``), so the command ends within a second or
    two with what finished kept, the job and its runs "cancelled" (the previous behaviour, a
    KeyboardInterrupt, waited ~20 s for the fan-out and left the run "running"). A second
    Ctrl-C interrupts at once."""

    def __init__(self, settings: Settings, job_id: int, kind: str = "",
                 params: dict[str, Any] | None = None, targets: str = "",
                 actor: str = "") -> None:
        self.settings, self.job_id, self.finished = settings, job_id, False
        self.kind, self.params, self.targets = kind, dict(params or {}), targets
        self.actor = actor
        self.signal_name = "Ctrl-C"  # what stopped it, for the job's error (SIGTERM, ...)
        # Coarser than a server job's progress: the CLI's own bars are the live view, and a
        # benchmark on this very machine should share the CPU with as little as possible.
        self.context = context.JobContext(settings, job_id, threading.Event(), interval_s=1.0)
        self.context.wait_view = _say_waiting

    @property
    def interrupted(self) -> bool:
        return self.context.interrupt

    def interrupt(self) -> None:
        from orchestrator.transport import abort_all

        self.context.interrupt = True
        self.context.cancel.set()  # type: ignore[union-attr]
        abort_all()

    @contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM -> :meth:`interrupt` while the block runs (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(signum: int, frame: Any) -> None:
            if self.interrupted:
                raise KeyboardInterrupt
            name = signal.Signals(signum).name
            log.warning("%s: cancelling job %s (again to stop at once)", name, self.job_id)
            self.signal_name = "Ctrl-C" if signum == signal.SIGINT else name
            self.interrupt()

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def run(self, *, push_view: Any = None, event_view: Any = None) -> execute.JobOutcome:
        """Do this job's work here, through the executor a server worker would use
        (``execute.EXECUTORS``), and finish the job with its outcome. ``push_view`` (a
        PushProgress) and ``event_view`` (a bench/eval event handler) are what the terminal
        shows; the job's own progress is recorded either way."""
        self.context.push_view, self.context.event_view = push_view, event_view
        outcome = execute.EXECUTORS[self.kind](self.settings, self.context, self.params,
                                               self.targets)
        self.finish(outcome.state, outcome.result, outcome.error, outcome.run_id)
        return outcome

    def finish(self, state: str, result: dict[str, Any] | None = None, error: str | None = None,
               run_id: int | None = None) -> None:
        if state not in TERMINAL:
            raise ValueError(f"not a terminal job state: {state!r}")
        if (self.interrupted and state == "cancelled" and (error or "").startswith("cancelled")
                and not (error or "").startswith(FROM_THE_CLI)):
            # Who stopped it and how, for the job and the runs it interrupted.
            who = f" by {self.actor}" if self.actor else ""
            error = f"{FROM_THE_CLI} ({self.signal_name}){who}" + \
                (error or "")[len("cancelled"):]
        self.context.flush()
        finish_job(self.settings, self.job_id, execute.JobOutcome(state, result or {}, error,
                                                                run_id))
        self.finished = True


@contextmanager
def track(settings: Settings, kind: str, params: dict[str, Any], targets: str, *,
          actor: str = "") -> Iterator[JobTracker]:
    """Record CLI work as a running job (origin "cli", worker host:pid) so the UI shows it;
    finished by the caller, or marked failed if the block raises (cancelled on Ctrl-C).
    ``actor`` (default: the OS user) is its ``created_by``; the row and its audit event
    (push, bench or eval, as the server's queue records them) are one transaction.
    First, what earlier processes left running when they died is finalized: on this host by
    their pids, elsewhere (or before a reboot, whose host id differs: core.hostid) by their
    stale heartbeats (CLI jobs only: a server's are its workers' to judge, by their own TTL),
    so a fleet run from the CLI alone, with no server or worker to sweep, never keeps a dead
    command's job "running"."""
    recover_interrupted(settings)
    liveness.sweep(settings, origin="cli")
    actor = actor or audit.local_actor()
    with session_scope(settings) as session:
        now = db_now(session)  # what the heartbeat sweep compares (core.dbclock)
        # The checks and defaults of a queued job: the same params run the same way.
        params = execute.validate_params(session, kind, params, targets)
        job = Job(kind=kind, params=params, targets=targets, origin="cli", state="running",
                  created_by=actor, started_at=now, heartbeat_at=now,
                  heartbeat_expires_at=liveness.lapses(settings, now),
                  worker=f"{this_host()}:{os.getpid()}")
        session.add(job)
        session.flush()
        audit.add_job_event(session, actor, job)
        job_id = job.id
    assert job_id is not None
    tracker = JobTracker(settings, job_id, kind, params, targets, actor)
    # Heartbeated until its end is recorded (liveness.waiting says why).
    with liveness.beating(settings, job_id, tracker.context.cancel):
        try:
            with tracker.signals(), liveness.waiting(tracker.context):
                yield tracker
        except KeyboardInterrupt:
            if not tracker.finished:
                tracker.finish("cancelled", error=f"{FROM_THE_CLI} ({tracker.signal_name}) "
                                                  f"by {actor}")
            raise
        except BaseException as exc:
            if not tracker.finished:
                tracker.finish("failed", error=str(exc) or type(exc).__name__)
            raise
        if not tracker.finished:
            tracker.finish("succeeded")


