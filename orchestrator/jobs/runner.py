"""The job runner: worker threads that take queued jobs, and the scheduler thread.

Why a module of its own, above ``jobs`` and ``schedules``: the scheduler fires due schedules
(``schedules.due``), and schedules create jobs (``jobs.submit``), so the runner cannot live in
``jobs`` without an import circle. ``jobs`` knows live runners only as ``jobs.Runner`` (to wake
them on submit and to tell their jobs from a dead process's).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from datetime import UTC, datetime

from sqlalchemy import update
from sqlmodel import col, select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.dbclock import db_now
from orchestrator.core.errors import EdgeFleetError
from orchestrator.core.hostid import this_host
from orchestrator.core.models import Device, Job
from orchestrator.fleet.leases import release_dead_holders
from orchestrator.jobs import context, execute, liveness, queue, schedules
from orchestrator.jobs.queue import POLLER, finish_job, get_job, recover_interrupted, submit
from orchestrator.notify import webhooks

log = logging.getLogger(__name__)


class JobRunner:
    """Worker threads taking queued jobs, and a scheduler thread creating them (due schedules,
    and a telemetry poll of "all" every ``telemetry_interval_s``)."""

    def __init__(self, settings: Settings, workers: int = 2, poll_s: float = 1.0,
                 telemetry_interval_s: float | None = 60.0) -> None:
        self.settings, self.workers, self.poll_s = settings, workers, poll_s
        self.telemetry_interval_s = telemetry_interval_s
        self.token = uuid.uuid4().hex[:8]
        self.worker_id = f"{this_host()}:{os.getpid()}:{self.token}"
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_poll: float | None = None
        queue.register_runner(self)

    def start(self) -> None:
        recover_interrupted(self.settings)
        release_dead_holders(self.settings)
        self._stopping.clear()
        self._threads = [threading.Thread(target=self._work, name=f"edgefleet-job-{i}",
                                          daemon=True) for i in range(self.workers)]
        self._threads.append(threading.Thread(target=self._schedule, daemon=True,
                                              name="edgefleet-scheduler"))
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Take no more jobs; wait up to ``timeout`` s for running ones (a job still running
        then is left to its daemon thread, and found interrupted by the next start)."""
        self._stopping.set()
        self._wakeup.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]

    def wake(self) -> None:
        self._wakeup.set()

    def _work(self) -> None:
        while not self._stopping.is_set():
            self._wakeup.clear()
            try:
                job = self.run_one()
            except Exception:  # the DB went away for a moment: keep the thread alive
                log.exception("job worker failed; retrying in %.1fs", self.poll_s)
                job = None
            if job is None:
                self._wakeup.wait(self.poll_s)

    def _schedule(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick failed")
            self._stopping.wait(self.poll_s)

    def tick(self, now: datetime | None = None) -> list[Job]:
        """One scheduler pass: jobs (and their runs, deployments and leases) of processes that
        died since, jobs for due schedules, and the telemetry poll when it is due."""
        recover_interrupted(self.settings)
        release_dead_holders(self.settings)
        liveness.sweep(self.settings)  # another host's dead CLI (SQLite on a shared disk)
        webhooks.sweep(self.settings)  # alerts a CLI or an earlier server left undelivered

        created = schedules.due(self.settings, now or datetime.now(UTC))
        interval = self.telemetry_interval_s
        if interval is not None and (self._last_poll is None
                                     or time.monotonic() - self._last_poll >= interval):
            self._last_poll = time.monotonic()
            polled = self.poll_telemetry()
            if polled is not None:
                created.append(polled)
        if created:
            self.wake()
        return created

    def poll_telemetry(self) -> Job | None:
        return poll_telemetry(self.settings)

    def _claim(self) -> int | None:
        with session_scope(self.settings) as session:
            ids = session.exec(select(Job.id).where(Job.state == "queued")
                               .order_by(col(Job.id)).limit(20)).all()
        for job_id in ids:
            if claim(self.settings, job_id, self.worker_id):  # type: ignore[arg-type]
                return job_id
        return None

    def run_one(self) -> Job | None:
        """Claim the oldest queued job and run it here; None if there was none to claim."""
        job_id = self._claim()
        if job_id is None:
            return None
        return run_claimed(self.settings, job_id)


def poll_telemetry(settings: Settings) -> Job | None:
    """A telemetry job for "all", unless one is queued or running or there are no devices."""
    with session_scope(settings) as session:
        if session.exec(select(Device.id).limit(1)).first() is None:
            return None
        busy = session.exec(select(Job.id).where(
            Job.kind == "telemetry", col(Job.state).in_(("queued", "running")))).first()
    if busy is not None:
        return None
    return submit(settings, "telemetry", {}, "all", actor=None, created_by=POLLER)


def claim(settings: Settings, job_id: int, worker_id: str) -> bool:
    """Take a queued job for ``worker_id`` (host:pid:token): a conditional UPDATE, so of any
    number of workers (threads, processes, hosts) offered the same job — or one task engine
    delivering it twice — exactly one gets it."""
    with session_scope(settings) as session:
        now = db_now(session)  # what the heartbeat sweep compares (core.dbclock)
        return bool(session.execute(
            update(Job).where(col(Job.id) == job_id, col(Job.state) == "queued")
            .values(state="running", worker=worker_id, started_at=now, heartbeat_at=now,
                    heartbeat_expires_at=liveness.lapses(settings, now))
        ).rowcount)


def run_claimed(settings: Settings, job_id: int) -> Job:
    """Run a job this process has claimed, heartbeated until its outcome is recorded."""
    with queue.cancel_flag(job_id) as flag:
        ctx = context.JobContext(settings, job_id, flag)
        with liveness.beating(settings, job_id, ctx.cancel):
            outcome = _outcome(settings, ctx, job_id)
            try:
                ctx.flush()
            finally:
                finish_job(settings, job_id, outcome)
    with session_scope(settings) as session:
        return get_job(session, job_id)


def _outcome(settings: Settings, ctx: context.JobContext, job_id: int) -> execute.JobOutcome:
    """The job's work, run; what it came to (a failure when it raised)."""
    try:
        with session_scope(settings) as session:
            job = get_job(session, job_id)
        ctx.created_by = job.created_by
        with liveness.waiting(ctx):
            if ctx.cancelled():
                return execute.JobOutcome("cancelled", error="cancelled before it started")
            return execute.EXECUTORS[job.kind](settings, ctx, dict(job.params), job.targets)
    except EdgeFleetError as exc:
        return execute.JobOutcome("failed", error=str(exc))
    except Exception as exc:  # a bug: the job says so, not "running" forever
        log.exception("job %s failed", job_id)
        return execute.JobOutcome("failed", error=f"{type(exc).__name__}: {exc}")
