"""Jobs: pushes, benchmarks, evaluations and telemetry polls as DB rows, run by server workers.

Why rows and not an in-memory queue: the UI shows every job — including work started from the
CLI in another process — and a server restart must find what it was doing. A job left
``running`` by a process that is gone is marked ``interrupted`` (never silently re-run: a
half-done push or bench is for a human to look at); what it stored before is kept.

States: queued -> running -> succeeded | failed | cancelled | interrupted (queued -> cancelled
directly). A worker takes a job with a conditional UPDATE (``WHERE state='queued'``) and owns it
only if that changed a row, so any number of worker threads and server processes can share one
queue. What the kinds do, and where cancellation is honoured, is in ``jobs.execute``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import or_, text, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import Session, col, select

from orchestrator.access import audit
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.dbclock import db_now
from orchestrator.core.errors import EdgeFleetError, NotFoundError
from orchestrator.core.hostid import this_host
from orchestrator.core.models import Deployment, Job, Run
from orchestrator.fleet import alerts
from orchestrator.jobs import context, execute

log = logging.getLogger(__name__)

# Every kind a job can be (a list filter): what can be submitted is params.ALLOWED's.
JOB_KINDS = ("push", "bench", "eval", "rollback", "verify", "telemetry")
TERMINAL = ("succeeded", "failed", "cancelled", "interrupted")
STATES = ("queued", "running", *TERMINAL)
ORIGINS = ("server", "cli", "schedule")
INTERRUPTED = ("the process running it died (killed, crashed or restarted); results stored "
               "before that are kept")
# Said of a job whose process is gone, by where it ran (``{pid}`` of that process).
INTERRUPTED_BY_ORIGIN = {
    "cli": ("the `edgefleet` command running it (pid {pid}) died before it finished (killed, "
            "crashed, or its terminal closed); results stored before that are kept"),
    "server": ("the server running it (pid {pid}) stopped before it finished (killed, crashed "
               "or restarted); results stored before that are kept"),
}
CANCELLED_BY = "cancelled by "  # the start of a cancelled job's error, then who asked
INTERRUPTED_DEPLOYMENT = ("interrupted: the process pushing died; the device reports what it "
                          "runs at the next contact (`edgefleet telemetry`, push or verify)")
UNRECORDED_DEPLOYMENT = ("the job ended before this device's outcome was recorded (see the job's "
                         "error); the device reports what it runs at the next contact")
POLLER = "telemetry-poller"  # created_by of the periodic telemetry jobs



class Runner(Protocol):
    """What this module needs of a live runner (orchestrator.jobs.runner.JobRunner, which sits
    above this module: it runs the jobs and fires the schedules, and schedules create jobs)."""

    settings: Settings
    token: str

    def wake(self) -> None: ...


# In this process: cancel flags of the jobs being executed, and the live runners (so submit()
# wakes them, and restart recovery never mistakes a sibling runner's job for a dead one's).
_cancel_flags: dict[int, threading.Event] = {}
_runners: weakref.WeakSet[Runner] = weakref.WeakSet()


def register_runner(runner: Runner) -> None:
    """Make a runner known to submit() (which wakes it) and to restart recovery (whose jobs are
    alive); held weakly, so a runner that is gone is forgotten."""
    _runners.add(runner)


@contextlib.contextmanager
def cancel_flag(job_id: int) -> Iterator[threading.Event]:
    """The flag cancel() sets while ``job_id`` runs in this process, for the executor to poll."""
    flag = _cancel_flags[job_id] = threading.Event()
    try:
        yield flag
    finally:
        _cancel_flags.pop(job_id, None)


def _iso(value: datetime | None) -> str | None:
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
    with session_scope(settings) as session:
        job = add_job(session, settings, kind, params, targets, actor=actor, origin=origin,
                      created_by=created_by, schedule_id=schedule_id)
    wake_runners(settings)
    return job


def add_job(session: Session, settings: Settings, kind: str, params: dict[str, Any] | None,
            targets: str, *, actor: str | None, origin: str, created_by: str | None = None,
            schedule_id: int | None = None) -> Job:
    """``submit``'s checks and rows in the caller's transaction (a schedule's claim and the
    job it fires commit together); the caller wakes the runners after its commit. Params are
    checked before anything is added, so an EdgeFleetError leaves the session as it was."""
    if origin not in ORIGINS:
        raise EdgeFleetError(f"job origin {origin!r}: choose one of {', '.join(ORIGINS)}")
    targets = execute.default_targets(kind, targets)
    checked = execute.validate_params(session, kind, params, targets)
    job = Job(kind=kind, params=checked, targets=targets, origin=origin,
              created_by=(actor or "") if created_by is None else created_by,
              schedule_id=schedule_id,
              created_at=db_now(session))  # engine.redefer_lost compares it (core.dbclock)
    session.add(job)
    session.flush()
    if actor is not None:
        audit.add_job_event(session, actor, job)
    if is_postgresql(settings.db_url):
        defer_task(session, job.id)  # type: ignore[arg-type]
    return job


def wake_runners(settings: Settings) -> None:
    """Wake this process's runners on ``settings``' database: a job was queued."""
    for runner in list(_runners):
        if runner.settings.db_url == settings.db_url:
            runner.wake()


def is_postgresql(url: str) -> bool:
    """Whether jobs on this database run on the task engine (orchestrator.jobs.engine)."""
    return url.startswith("postgresql")


def task_lock(job_id: int) -> str:
    """The task engine's queueing lock of a job's task: at most one waiting task per job."""
    return f"edgefleet-job-{job_id}"


# procrastinate_defer_jobs_v1 is the versioned SQL function procrastinate's own ``defer``
# calls (its schema: migration 0013); called here so that the Job row and its task commit in
# one transaction: never a job without a task to run it, nor a task without its job.
_DEFER = text(
    "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW(:queue, :task, 0, NULL, :lock, "
    "CAST(:args AS jsonb), NULL)::procrastinate_job_to_defer_v1]))")
TASK_QUEUE = "edgefleet-jobs"
TASK_NAME = "edgefleet.run_job"


def defer_task(session: Session, job_id: int, *, lock: bool = True) -> int:
    """Give the task engine a task running job ``job_id``, in ``session``'s transaction; the id
    of the task. ``lock=False`` skips the queueing lock (a second task for the same job: what
    an at-least-once engine may deliver, and what the claim guards against)."""
    return int(session.execute(_DEFER, {
        "queue": TASK_QUEUE, "task": TASK_NAME, "lock": task_lock(job_id) if lock else None,
        "args": json.dumps({"job_id": job_id})}).scalar_one())


def cancel(settings: Settings, job_id: int, *, actor: str) -> Job:
    """A queued job is cancelled at once; a running one is asked to stop (honoured at the
    executor's next safe boundary, see jobs.execute, whether a server worker or a CLI process
    runs it: both poll the request); a finished one is an error. Audited as
    ``job.cancel`` by ``actor`` in the same transaction as the request to stop."""
    now = datetime.now(UTC)
    with session_scope(settings) as session:
        job = get_job(session, job_id)
        if job.state in TERMINAL:
            raise EdgeFleetError(f"job {job_id} already finished ({job.state}); nothing to cancel")
        taken = session.execute(
            update(Job).where(col(Job.id) == job_id, col(Job.state) == "queued")
            .values(state="cancelled", cancel_requested=True, finished_at=now,
                    error=f"{CANCELLED_BY}{actor} before it started")).rowcount
        if not taken:  # running (or claimed just now): ask the worker
            # The error says who asked until the worker finishes the job (finish_job keeps
            # the name in its final error): a run it stops says who stopped it.
            asked = session.execute(update(Job).where(col(Job.id) == job_id,
                                                      col(Job.state) == "running")
                                    .values(cancel_requested=True,
                                            error=f"{CANCELLED_BY}{actor}")).rowcount
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
    """The JSON shape of a job for the API and the pages. ``worker``: the host and pid of the
    process that ran it (its heartbeat token stays internal), so a job on one of several
    workers can be found in that host's logs."""
    return {
        "id": job.id, "kind": job.kind, "state": job.state, "params": job.params,
        "targets": job.targets, "origin": job.origin, "created_by": job.created_by,
        "progress": job.progress, "result": job.result, "error": job.error,
        "run_id": job.run_id, "schedule_id": job.schedule_id,
        "cancel_requested": job.cancel_requested, "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at),
        "worker": ":".join(job.worker.split(":")[:2]) if job.worker else None,
    }


FINISH_ATTEMPTS = 5  # a job's end is retried through a busy or briefly gone database


def finish_job(settings: Settings, job_id: int, outcome: execute.JobOutcome) -> None:
    """A running job's terminal state (a job another process already finalized stays as
    it is). Retried on a database error (busy past its timeout, a dropped connection), with
    backoff: given up, the job would stay "running" until a sweep called its finished work
    "interrupted". Safe to repeat: the update only changes a running job."""
    for attempt in range(FINISH_ATTEMPTS):
        try:
            finished, alert_id = _finish_once(settings, job_id, outcome)
            break
        except OperationalError as exc:
            if attempt == FINISH_ATTEMPTS - 1:
                raise
            log.warning("job %s: recording its end failed (%s); retrying", job_id,
                        str(exc).splitlines()[0][:200])
            time.sleep(min(2.0 ** attempt, 8.0))  # backoff between attempts, not a sync wait
    if alert_id is not None:
        alerts.deliver(settings, alert_id)
    elif finished and outcome.state == "failed":
        alerts.job_failed(settings, job_id)  # its alert could not be added with the end


def _finish_once(settings: Settings, job_id: int,
                 outcome: execute.JobOutcome) -> tuple[bool, int | None]:
    """One attempt: (whether this call ended the job, the id of its failure's alert, added in
    the same transaction so that no crash between two commits loses it)."""
    with session_scope(settings) as session:
        error = outcome.error
        asked = session.exec(select(Job.error).where(Job.id == job_id)).first()
        if (outcome.state == "cancelled" and asked and asked.startswith(CANCELLED_BY)
                and (error or "").startswith("cancelled")):
            error = asked + (error or "")[len("cancelled"):]  # "cancelled by NAME: ..."
        now = datetime.now(UTC)
        finished = session.execute(
            update(Job).where(col(Job.id) == job_id, col(Job.state) == "running")
            .values(state=outcome.state, result=outcome.result, error=error,
                    run_id=outcome.run_id, finished_at=now)).rowcount
        if finished:  # a device step that could not close its row must not leave it pending
            session.execute(update(Deployment).where(
                col(Deployment.job_id) == job_id, col(Deployment.finished_at).is_(None))
                .values(state="failed", finished_at=now, error=UNRECORDED_DEPLOYMENT))
        alert_id = add_failure_alert(session, settings, job_id) \
            if finished and outcome.state == "failed" else None
    return bool(finished), alert_id


def add_failure_alert(session: Session, settings: Settings, job_id: int) -> int | None:
    """A failed job's alert in its ending transaction, in a savepoint: an error of the
    alert's own rolls back only the alert (then recorded after the commit, as before),
    never the job's end."""
    try:
        with session.begin_nested():
            return alerts.add_job_failed(session, settings, job_id)
    except DBAPIError:
        raise  # the database, not the alert: the whole attempt fails (and is retried)
    except Exception:  # noqa: BLE001 - logged; job_failed tries again after the commit
        log.exception("job %s: its failure alert could not be added with its end", job_id)
        return None


def record_failed(settings: Settings, kind: str, params: dict[str, Any], targets: str,
                  error: str, *, origin: str, created_by: str = "",
                  schedule_id: int | None = None) -> Job:
    """A job that could not even start (a schedule firing with a bundle since deleted): kept
    as a failed row so the UI shows why nothing ran; its alert goes out once it is stored."""
    with session_scope(settings) as session:
        job = add_failed(session, kind, params, targets, error, origin=origin,
                         created_by=created_by, schedule_id=schedule_id)
        alert_id = add_failure_alert(session, settings, job.id)  # type: ignore[arg-type]
    if alert_id is not None:
        alerts.deliver(settings, alert_id)
    else:
        alerts.job_failed(settings, job.id)  # type: ignore[arg-type]
    return job


def add_failed(session: Session, kind: str, params: dict[str, Any], targets: str, error: str,
               *, origin: str, created_by: str = "", schedule_id: int | None = None) -> Job:
    """``record_failed``'s row in the caller's transaction; its alert is the caller's too
    (``add_failure_alert`` in the same transaction, delivered after the commit)."""
    now = datetime.now(UTC)
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


def _interrupted_why(job: Job) -> str:
    """Why a job whose process is gone stopped: which process (the CLI's or a server's) died."""
    parts = (job.worker or "").split(":")
    template = INTERRUPTED_BY_ORIGIN.get("cli" if job.origin == "cli" else "server")
    if template is None or len(parts) < 2:
        return INTERRUPTED
    return template.format(pid=parts[1])


def interrupt(session: Session, orphans: Sequence[Job],
              why: Callable[[Job], str]) -> list[int]:
    """Mark ``orphans`` (running jobs whose process is gone) interrupted, saying ``why(job)``,
    with their runs and pending deployments; finished results are kept. Returns the ids of
    those this call changed (a job another worker marked first, or that finished meanwhile, is
    left as it is)."""
    now = datetime.now(UTC)
    dead: list[int] = []
    for job in orphans:
        if session.execute(update(Job).where(col(Job.id) == job.id, col(Job.state) == "running")
                           .values(state="interrupted", error=why(job),
                                   finished_at=now)).rowcount:
            dead.append(job.id)  # type: ignore[arg-type]
    # Its runs and deployments would otherwise say "running"/"pending" forever; finished
    # results are kept. (Older rows have no job_id, but the job knows its run.)
    run_ids = [j.run_id for j in orphans if j.id in dead and j.run_id is not None]
    for job_id, progress in (session.execute(select(Job.id, Job.progress).where(
            col(Job.id).in_(dead))).all() if dead else ()):
        if progress:
            session.execute(update(Job).where(col(Job.id) == job_id)
                            .values(progress=context.settled(progress)))
    if dead:
        session.execute(update(Run).where(
            or_(col(Run.job_id).in_(dead), col(Run.id).in_(run_ids)),
            col(Run.state) == "running").values(state="interrupted", finished_at=now))
        session.execute(update(Deployment).where(
            col(Deployment.job_id).in_(dead), col(Deployment.finished_at).is_(None))
            .values(state="interrupted", finished_at=now, error=INTERRUPTED_DEPLOYMENT))
    return dead


def recover_interrupted(settings: Settings) -> list[int]:
    """Mark jobs whose worker process (on this host: by its pid) is gone as interrupted;
    returns their ids. Another host's dead processes are found by their heartbeats
    (``jobs.liveness.sweep``)."""
    host = this_host()
    with session_scope(settings) as session:
        running = session.exec(select(Job).where(Job.state == "running")).all()
        dead = interrupt(session, [j for j in running if _orphaned(j.worker, host)],
                         _interrupted_why)
    if dead:
        log.warning("marked jobs %s interrupted (their worker process is gone)", dead)
    return dead
