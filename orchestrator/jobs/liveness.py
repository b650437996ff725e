"""Whether the process running a job is alive, seen from any host: job heartbeats, and the
sweep that marks a dead worker's jobs interrupted and frees its devices.

Why heartbeats: a process on the same host can tell a dead worker by its pid
(``queue.recover_interrupted``), but a worker on another machine — killed, or its host gone —
cannot be asked. So every process running a job (a worker, a server, the CLI running its own)
renews the job's ``heartbeat_at`` every quarter of ``EDGEFLEET_JOB_TTL_S`` from one thread, and
every worker's periodic pass (``sweep``, every ``EDGEFLEET_TICK_S``) marks running jobs whose
heartbeat is older than the TTL ``interrupted`` — finished results kept, never re-run — and
deletes those jobs' device leases and any expired one (a CLI command sweeps CLI jobs the same
way when it starts: ``tracker.track``). Defaults (45 s + 5 s) free a dead
worker's jobs and devices within a minute; the tests shorten both to seconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, update
from sqlalchemy.exc import OperationalError
from sqlmodel import col, select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope, steady_s
from orchestrator.core.dbclock import db_now
from orchestrator.core.heartbeat import Heartbeat
from orchestrator.core.models import Job
from orchestrator.fleet import leases
from orchestrator.jobs import context, queue

log = logging.getLogger(__name__)

STOPPED = ("the {what} running it ({worker}) stopped renewing its heartbeat at {when} UTC "
           "(killed, crashed, frozen, or its host went down); results stored before that are "
           "kept")


def beat(settings: Settings, job_ids: list[int]) -> int:
    """Renew the heartbeat of these jobs (those still running); how many were renewed."""
    with session_scope(settings) as session:
        now = db_now(session)
        return session.execute(update(Job).where(col(Job.id).in_(job_ids),
                                                 col(Job.state) == "running")
                               .values(heartbeat_at=now,
                                       heartbeat_expires_at=lapses(settings, now))).rowcount


def lapses(settings: Settings, now: datetime) -> datetime:
    """When a heartbeat written ``now`` by this process lapses: its own TTL, which is what
    every sweeper compares (``sweep``), whatever TTL the sweeper runs with."""
    return now + timedelta(seconds=settings.job_ttl_s)


def interrupted_elsewhere(settings: Settings, job_ids: list[int]) -> list[int]:
    """Of these jobs (run by this process), those another process marked interrupted."""
    with session_scope(settings) as session:
        return list(session.exec(select(Job.id).where(col(Job.id).in_(job_ids),
                                                      col(Job.state) == "interrupted")).all())


# job id -> what stops it here: set when its row stops being "running" under this process
# (another worker's sweep marked it interrupted while this one was frozen past the TTL).
_on_stopped: dict[int, threading.Event] = {}


def _renew(held: list[tuple[int, Settings]]) -> None:
    by_db: dict[str, tuple[Settings, list[int]]] = {}
    for job_id, settings in held:
        by_db.setdefault(settings.db_url, (settings, []))[1].append(job_id)
    for settings, job_ids in by_db.values():
        try:
            if beat(settings, job_ids) < len(job_ids):
                for job_id in interrupted_elsewhere(settings, job_ids):
                    stop = _on_stopped.get(job_id)
                    if stop is not None and not stop.is_set() and _heartbeat.holds(job_id):
                        log.error("job %s was marked interrupted by another process (this one "
                                  "stopped heartbeating for longer than EDGEFLEET_JOB_TTL_S?): "
                                  "stopping its work here", job_id)
                        stop.set()
        except OperationalError as exc:  # the DB was busy: the next beat retries
            log.warning("jobs %s: heartbeat failed: %s", job_ids, exc)


_heartbeat: Heartbeat[int] = Heartbeat("edgefleet-job-heartbeat", lambda s: s.job_ttl_s,
                                       _renew)


@contextmanager
def beating(settings: Settings, job_id: int,
            stop: threading.Event | None = None) -> Iterator[None]:
    """Heartbeat ``job_id`` while the block runs it in this process; ``stop`` is set if its
    row stops being "running" meanwhile (the job's cancel flag: its work stops at the next
    boundary instead of writing on as a zombie)."""
    beat(settings, [job_id])
    if stop is not None:
        _on_stopped[job_id] = stop
    _heartbeat.hold(settings, job_id)
    try:
        yield
    finally:
        _heartbeat.drop(job_id)
        _on_stopped.pop(job_id, None)


def _stopped_why(job: Job) -> str:
    what = "`edgefleet` command" if job.origin == "cli" else "worker"
    last = job.heartbeat_at or job.started_at
    return STOPPED.format(what=what, worker=job.worker or "unknown",
                          when=f"{last:%Y-%m-%d %H:%M:%S}" if last else "?")


def sweep(settings: Settings, now: datetime | None = None, *,
          origin: str | None = None) -> list[int]:
    """Mark running jobs whose heartbeat lapsed interrupted (by the TTL of the process that
    wrote it, ``lapses``; the sweeper's own ``job_ttl_s`` for rows older than that) (with their
    runs and pending deployments), delete those jobs' leases and every expired lease. Safe
    from any number of workers (and CLI commands: ``tracker.track``) at once: each job is
    marked by one. ``origin``: only jobs of that origin (a CLI command sweeps CLI jobs only:
    a server may run with a longer EDGEFLEET_JOB_TTL_S than the CLI's environment says).

    Nothing is judged during the first TTL after this process regained the database (an
    outage, a lock held past the busy timeout): every process's heartbeats failed meanwhile,
    and the live ones renew within a quarter TTL of its return. Before, the first sweep after
    a PostgreSQL outage longer than the TTL marked every other host's running jobs
    interrupted and freed the devices they were working on."""
    regained = steady_s(settings)
    if regained < max(settings.job_ttl_s, settings.lease_ttl_s):
        log.info("not judging heartbeats yet: the database was reached again %.0f s ago (live "
                 "processes renew theirs within a quarter of EDGEFLEET_JOB_TTL_S)", regained)
        return []
    last = func.coalesce(col(Job.heartbeat_at), col(Job.started_at))
    expires = col(Job.heartbeat_expires_at)
    with session_scope(settings) as session:
        now = now or db_now(session)
        cutoff = now - timedelta(seconds=settings.job_ttl_s)
        lapsed = or_(expires < now, and_(expires.is_(None), last < cutoff))
        stale_jobs = select(Job).where(col(Job.state) == "running", lapsed)
        if origin is not None:
            stale_jobs = stale_jobs.where(col(Job.origin) == origin)
        stale = [job for job in session.exec(stale_jobs).all()
                 if not _heartbeat.holds(job.id)]  # this process runs it: alive, only slow
        dead = queue.interrupt(session, stale, _stopped_why) if stale else []
        processes: dict[str, list[int]] = {}
        for job in stale:
            if job.id in dead:
                process = ":".join((job.worker or "").split(":")[:2])
                processes.setdefault(process, []).append(job.id)  # type: ignore[arg-type]
    freed: list[str] = []
    for process, jobs in sorted((p, j) for p, j in processes.items() if ":" in p):
        freed += leases.release_held_by(settings, process, jobs)
    freed += leases.release_expired(settings)
    if dead:
        log.warning("marked jobs %s interrupted: their process stopped heartbeating", dead)
    if freed:
        log.warning("freed the leases of %s (their holder stopped heartbeating)",
                    ", ".join(sorted(set(freed))))
    return dead


@contextmanager
def waiting(ctx: context.JobContext) -> Iterator[None]:
    """What every running job's work gets, wherever it runs (a worker, a server, the CLI):
    its devices' leases waiting while another operation holds a device (at most
    ``lease_wait_s``, shown on the job as "waiting for pi3: bench #12", cancellable). The
    job's heartbeat (``beating``) is the caller's, held until the job's end is recorded:
    recording it may wait on a busy database past the TTL, and a sweep (this process's own
    scheduler too) then called the finished job interrupted, losing its outcome."""

    def on_wait(device: str, text: str | None) -> None:
        ctx.device(device, force=True, state="waiting" if text else "starting", waiting=text)
        if ctx.wait_view is not None:
            ctx.wait_view(device, text)

    policy = leases.Waiting(ctx.job_id, ctx.settings.lease_wait_s, on_wait, ctx.check)
    with leases.waiting_as(policy):
        yield
