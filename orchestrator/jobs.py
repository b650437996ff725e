"""Jobs: pushes, benchmarks, evaluations and telemetry polls as DB rows, run by server workers.

Why rows and not an in-memory queue: the UI shows every job — including work started from the
CLI in another process — and a server restart must find what it was doing. A job left
``running`` by a process that is gone is marked ``interrupted`` (never silently re-run: a
half-done push or bench is for a human to look at); what it stored before is kept.

States: queued -> running -> succeeded | failed | cancelled | interrupted (queued -> cancelled
directly). A worker takes a job with a conditional UPDATE (``WHERE state='queued'``) and owns it
only if that changed a row, so any number of worker threads and server processes can share one
queue. What the kinds do, and where cancellation is honoured, is in ``job_exec``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
import weakref
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from orchestrator import audit, job_exec
from orchestrator.config import Settings
from orchestrator.db import session_scope
from orchestrator.errors import EdgeFleetError, NotFoundError
from orchestrator.leases import release_dead_holders
from orchestrator.models import Deployment, Device, Job, Run

log = logging.getLogger(__name__)

JOB_KINDS = ("push", "bench", "eval", "telemetry")
TERMINAL = ("succeeded", "failed", "cancelled", "interrupted")
STATES = ("queued", "running", *TERMINAL)
ORIGINS = ("server", "cli", "schedule")
INTERRUPTED = ("the process running it died (killed, crashed or restarted); results stored "
               "before that are kept")
INTERRUPTED_DEPLOYMENT = ("interrupted: the process pushing died; the device reports what it "
                          "runs at the next contact (`edgefleet telemetry`, push or verify)")
POLLER = "telemetry-poller"  # created_by of the periodic telemetry jobs

# In this process: cancel flags of the jobs being executed, and the live runners (so submit()
# wakes them, and restart recovery never mistakes a sibling runner's job for a dead one's).
_cancel_flags: dict[int, threading.Event] = {}
_runners: weakref.WeakSet[JobRunner] = weakref.WeakSet()


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; they were stored as UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    value = utc(value)
    return value.isoformat() if value else None


def submit(settings: Settings, kind: str, params: dict[str, Any] | None, targets: str, *,
           actor: str | None, origin: str = "server", created_by: str | None = None,
           schedule_id: int | None = None) -> Job:
    """Queue a job after checking its params (EdgeFleetError naming the problem, nothing
    queued); workers in this process are woken at once.

    ``actor`` is who asked (the job's ``created_by`` unless that is given): a push, bench or
    eval is audited under that name in the job's own transaction. ``None`` is the control plane
    acting by itself (a schedule firing, whose creation was audited; the telemetry poller):
    no event. Required, so that a new caller cannot forget to say which it is."""
    if origin not in ORIGINS:
        raise EdgeFleetError(f"job origin {origin!r}: choose one of {', '.join(ORIGINS)}")
    targets = job_exec.default_targets(kind, targets)
    with session_scope(settings) as session:
        checked = job_exec.validate_params(session, kind, params, targets)
        job = Job(kind=kind, params=checked, targets=targets, origin=origin,
                  created_by=(actor or "") if created_by is None else created_by,
                  schedule_id=schedule_id)
        session.add(job)
        session.flush()
        if actor is not None:
            audit.add_job_event(session, actor, job)
    for runner in list(_runners):
        if runner.settings.db_url == settings.db_url:
            runner.wake()
    return job


def cancel(settings: Settings, job_id: int, *, actor: str) -> Job:
    """A queued job is cancelled at once; a running one is asked to stop (honoured at the
    executor's next safe boundary, see job_exec); a finished one is an error. Audited as
    ``job.cancel`` by ``actor`` in the same transaction as the request to stop."""
    now = datetime.now(UTC)
    with session_scope(settings) as session:
        job = get_job(session, job_id)
        if job.state in TERMINAL:
            raise EdgeFleetError(f"job {job_id} already finished ({job.state}); nothing to cancel")
        if job.state == "running" and job.origin == "cli":
            raise EdgeFleetError(f"job {job_id} runs in a CLI process ({job.worker}); stop it "
                                 "there (Ctrl-C)")
        taken = session.execute(
            update(Job).where(col(Job.id) == job_id, col(Job.state) == "queued")
            .values(state="cancelled", cancel_requested=True, finished_at=now,
                    error="cancelled before it started")).rowcount
        if not taken:  # running (or claimed just now): ask the worker
            asked = session.execute(update(Job).where(col(Job.id) == job_id,
                                                      col(Job.state) == "running")
                                    .values(cancel_requested=True)).rowcount
            if not asked:  # it finished between the read and the update
                raise EdgeFleetError(f"job {job_id} already finished; nothing to cancel")
        audit.add_event(session, actor, "job.cancel", f"job:{job_id}",
                        {"kind": job.kind, "targets": job.targets,
                         "state": "queued" if taken else "running"})
    flag = _cancel_flags.get(job_id)
    if flag is not None:
        flag.set()
    with session_scope(settings) as session:
        return get_job(session, job_id)


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    return job


def list_jobs(session: Session, limit: int = 100, state: str | None = None,
              kind: str | None = None) -> list[Job]:
    """Newest first."""
    query = select(Job).order_by(col(Job.id).desc()).limit(limit)
    if state is not None:
        if state not in STATES:
            raise EdgeFleetError(f"job state {state!r}: choose one of {', '.join(STATES)}")
        query = query.where(Job.state == state)
    if kind is not None:
        if kind not in JOB_KINDS:
            raise EdgeFleetError(f"job kind {kind!r}: choose one of {', '.join(JOB_KINDS)}")
        query = query.where(Job.kind == kind)
    return list(session.exec(query).all())


def job_public(job: Job) -> dict[str, Any]:
    """The JSON shape of a job for the API and the pages (the worker id stays internal)."""
    return {
        "id": job.id, "kind": job.kind, "state": job.state, "params": job.params,
        "targets": job.targets, "origin": job.origin, "created_by": job.created_by,
        "progress": job.progress, "result": job.result, "error": job.error,
        "run_id": job.run_id, "schedule_id": job.schedule_id,
        "cancel_requested": job.cancel_requested, "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at),
    }


def finish_job(settings: Settings, job_id: int, outcome: job_exec.JobOutcome) -> None:
    """A running job's terminal state (a job another process already finalized stays as
    it is)."""
    with session_scope(settings) as session:
        session.execute(
            update(Job).where(col(Job.id) == job_id, col(Job.state) == "running")
            .values(state=outcome.state, result=outcome.result, error=outcome.error,
                    run_id=outcome.run_id, finished_at=datetime.now(UTC)))


def record_failed(settings: Settings, kind: str, params: dict[str, Any], targets: str,
                  error: str, *, origin: str, created_by: str = "",
                  schedule_id: int | None = None) -> Job:
    """A job that could not even start (a schedule firing with a bundle since deleted): kept
    as a failed row so the UI shows why nothing ran."""
    now = datetime.now(UTC)
    with session_scope(settings) as session:
        job = Job(kind=kind, params=params, targets=targets, origin=origin,
                  created_by=created_by, schedule_id=schedule_id, state="failed", error=error,
                  started_at=now, finished_at=now)
        session.add(job)
        session.flush()
    return job


# --- restart recovery ------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _orphaned(worker: str | None, host: str) -> bool:
    """Whether the process named by ``worker`` (host:pid[:runner]) is gone. Only this host's
    processes can be checked; a job of another host is never touched from here."""
    parts = (worker or "").split(":")
    if len(parts) < 2 or parts[0] != host or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid != os.getpid():
        return not _pid_alive(pid)
    # Our own pid: a runner token from an earlier server run in this pid (a container restarts
    # as pid 1 again) is dead; no token is CLI work of this very process; live runners are alive.
    return len(parts) > 2 and parts[2] not in {r.token for r in list(_runners)}


def recover_interrupted(settings: Settings) -> list[int]:
    """Mark jobs whose worker process is gone as interrupted; returns their ids."""
    host = socket.gethostname()
    with session_scope(settings) as session:
        running = session.exec(select(Job).where(Job.state == "running")).all()
        orphans = [j for j in running if _orphaned(j.worker, host)]
        dead = [j.id for j in orphans]
        now = datetime.now(UTC)
        for job_id in dead:
            session.execute(update(Job).where(col(Job.id) == job_id, col(Job.state) == "running")
                            .values(state="interrupted", error=INTERRUPTED, finished_at=now))
        # Its runs and deployments would otherwise say "running"/"pending" forever; finished
        # results are kept. (Older rows have no job_id, but the job knows its run.)
        run_ids = [j.run_id for j in orphans if j.run_id is not None]
        if dead:
            session.execute(update(Run).where(
                or_(col(Run.job_id).in_(dead), col(Run.id).in_(run_ids)),
                col(Run.state) == "running").values(state="interrupted", finished_at=now))
            session.execute(update(Deployment).where(
                col(Deployment.job_id).in_(dead), col(Deployment.finished_at).is_(None))
                .values(state="interrupted", finished_at=now, error=INTERRUPTED_DEPLOYMENT))
    if dead:
        log.warning("marked jobs %s interrupted (their worker process is gone)", dead)
    return [j for j in dead if j is not None]


# --- the runner ------------------------------------------------------------------------------


class JobRunner:
    """Worker threads taking queued jobs, and a scheduler thread creating them (due schedules,
    and a telemetry poll of "all" every ``telemetry_interval_s``)."""

    def __init__(self, settings: Settings, workers: int = 2, poll_s: float = 1.0,
                 telemetry_interval_s: float | None = 60.0) -> None:
        self.settings, self.workers, self.poll_s = settings, workers, poll_s
        self.telemetry_interval_s = telemetry_interval_s
        self.token = uuid.uuid4().hex[:8]
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{self.token}"
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_poll: float | None = None
        _runners.add(self)

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
        from orchestrator import schedules

        recover_interrupted(self.settings)
        release_dead_holders(self.settings)

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
        """A telemetry job for "all", unless one is queued or running or there are no devices."""
        with session_scope(self.settings) as session:
            if session.exec(select(Device.id).limit(1)).first() is None:
                return None
            busy = session.exec(select(Job.id).where(
                Job.kind == "telemetry", col(Job.state).in_(("queued", "running")))).first()
        if busy is not None:
            return None
        return submit(self.settings, "telemetry", {}, "all", actor=None, created_by=POLLER)

    def _claim(self) -> int | None:
        with session_scope(self.settings) as session:
            ids = session.exec(select(Job.id).where(Job.state == "queued")
                               .order_by(col(Job.id)).limit(20)).all()
        for job_id in ids:
            with session_scope(self.settings) as session:
                taken = session.execute(
                    update(Job).where(col(Job.id) == job_id, col(Job.state) == "queued")
                    .values(state="running", worker=self.worker_id,
                            started_at=datetime.now(UTC))).rowcount
            if taken:
                return job_id
        return None

    def run_one(self) -> Job | None:
        """Claim the oldest queued job and run it here; None if there was none to claim."""
        job_id = self._claim()
        if job_id is None:
            return None
        flag = _cancel_flags[job_id] = threading.Event()
        ctx = job_exec.JobContext(self.settings, job_id, flag)
        try:
            with session_scope(self.settings) as session:
                job = get_job(session, job_id)
            ctx.created_by = job.created_by
            if ctx.cancelled():
                outcome = job_exec.JobOutcome("cancelled", error="cancelled before it started")
            else:
                outcome = job_exec.EXECUTORS[job.kind](self.settings, ctx, dict(job.params),
                                                       job.targets)
        except EdgeFleetError as exc:
            outcome = job_exec.JobOutcome("failed", error=str(exc))
        except Exception as exc:  # a bug: the job says so instead of staying "running" forever
            log.exception("job %s failed", job_id)
            outcome = job_exec.JobOutcome("failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            _cancel_flags.pop(job_id, None)
        try:
            ctx.flush()
        finally:
            finish_job(self.settings, job_id, outcome)
        with session_scope(self.settings) as session:
            return get_job(session, job_id)
