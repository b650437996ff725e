"""Jobs on PostgreSQL run on procrastinate, an existing task engine, not on our own threads.

Why procrastinate: it keeps its queue in PostgreSQL — the database several hosts share anyway
— so there is no broker to run, secure and watch (Celery and Dramatiq need RabbitMQ or Redis);
workers take tasks with ``SELECT ... FOR UPDATE SKIP LOCKED`` and are woken by LISTEN/NOTIFY;
periodic tasks are deferred once for all workers (a unique row per task and second); workers
heartbeat and retries exist; it is maintained, typed, MIT-licensed, and ships its schema as
plain SQL, which our migrations apply (0013). On SQLite the in-process runner
(``jobs.runner``) stays: there is no shared server to coordinate through.

How EdgeFleet uses it — our ``job`` table stays the source of truth:

- ``queue.submit`` inserts the task ``edgefleet.run_job(job_id)`` in the Job row's own
  transaction (``queue.defer_task``).
- Delivery is at least once (a worker killed between fetching a task and claiming its job; the
  re-defer below): the task *claims* the job with the conditional UPDATE (``runner.claim``), so
  a second delivery finds it taken and does nothing.
- ``edgefleet.tick``, periodic every ``EDGEFLEET_TICK_S``, deferred once across all workers:
  fires due schedules (each claimed by its own conditional UPDATE too), marks jobs of dead
  workers interrupted and frees their leases (``liveness.sweep``), re-defers queued jobs whose
  task was lost, and delivers alerts left undelivered.
- ``edgefleet.poll_telemetry``, every minute: the fleet's telemetry job.
- Each process runs two procrastinate workers: ``edgefleet-jobs`` (``workers`` at once: the
  pushes and benchmarks, which may take hours) and ``edgefleet-control`` (the ticks), so a
  schedule never waits behind a long benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.dbclock import db_now
from orchestrator.core.hostid import this_host
from orchestrator.core.models import Job
from orchestrator.fleet.leases import release_dead_holders
from orchestrator.jobs import liveness, queue, runner, schedules
from orchestrator.notify import webhooks

log = logging.getLogger(__name__)

CONTROL_QUEUE = "edgefleet-control"
SHUTDOWN_GRACE_S = 30.0  # on SIGTERM: how long running jobs may finish (then swept by others)
_TODO = text("SELECT 1 FROM procrastinate_jobs WHERE queueing_lock = :lock AND status = 'todo'")


def conninfo(db_url: str) -> str:
    """The libpq URL of a SQLAlchemy ``postgresql+psycopg://`` URL (procrastinate's pool)."""
    return make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)


def redefer_lost(settings: Settings) -> list[int]:
    """Queued jobs older than ``job_ttl_s`` with no task waiting to run them (their task was
    fetched by a worker that died before claiming the job): a new task each."""
    with session_scope(settings) as session:
        cutoff = db_now(session) - timedelta(seconds=settings.job_ttl_s)
        queued = session.execute(select(Job.id).where(  # type: ignore[call-overload]
            Job.state == "queued", Job.created_at < cutoff)).scalars().all()
        lost = [job_id for job_id in queued
                if session.execute(_TODO, {"lock": queue.task_lock(job_id)}).first() is None]
    deferred = []
    for job_id in lost:
        try:
            with session_scope(settings) as session:
                queue.defer_task(session, job_id)
            deferred.append(job_id)
        except IntegrityError:  # another worker's tick re-deferred it first
            continue
    if deferred:
        log.warning("jobs %s had no task waiting to run them: deferred again", deferred)
    return deferred


def tick(settings: Settings) -> list[Job]:
    """One pass of the control queue (any worker, once per ``tick_s`` across all of them).
    Each step on its own: one failing (the database away for a moment) skips none of the
    others, and the next tick tries again."""
    for step in (queue.recover_interrupted, release_dead_holders, liveness.sweep, redefer_lost,
                 webhooks.sweep):
        try:
            step(settings)
        except Exception:
            log.exception("tick: %s failed", step.__name__)
    return schedules.due(settings, datetime.now(UTC))


class TaskWorker:
    """This process's procrastinate workers; ``start``/``stop`` in a thread of its own (the
    server), or ``run`` in the foreground (``edgefleet worker``, until SIGTERM/SIGINT)."""

    def __init__(self, settings: Settings, workers: int = 2,
                 telemetry_interval_s: float | None = 60.0) -> None:
        import procrastinate

        self.settings, self.workers = settings, workers
        self.token = uuid.uuid4().hex[:8]
        self.worker_id = f"{this_host()}:{os.getpid()}:{self.token}"
        self.app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(conninfo=conninfo(settings.db_url)))
        self._register(telemetry_interval_s is not None)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        queue.register_runner(self)

    def wake(self) -> None:
        """Nothing to do: the task's insert NOTIFYs the workers (queue.Runner protocol)."""

    def _register(self, poll: bool) -> None:
        settings, app = self.settings, self.app

        @app.task(name=queue.TASK_NAME, queue=queue.TASK_QUEUE)
        def run_job(job_id: int) -> str:
            if not runner.claim(settings, job_id, self.worker_id):
                return "not queued: already claimed, finished or cancelled"
            return runner.run_claimed(settings, job_id).state

        @app.periodic(cron=f"* * * * * */{settings.tick_s}", periodic_id="tick")
        @app.task(name="edgefleet.tick", queue=CONTROL_QUEUE)
        def control_tick(timestamp: int) -> int:
            return len(tick(settings))

        if poll:
            @app.periodic(cron="* * * * *", periodic_id="telemetry")
            @app.task(name="edgefleet.poll_telemetry", queue=CONTROL_QUEUE)
            def poll_telemetry(timestamp: int) -> int | None:
                job = runner.poll_telemetry(settings)
                return job.id if job else None

    async def _run(self) -> None:
        """Both workers until ``stop`` (or one of them ends by itself: the other is stopped
        too). Stopping cancels each worker's task — procrastinate's graceful shutdown: no new
        task, running ones get SHUTDOWN_GRACE_S — and waits for both to be done."""
        options: dict[str, Any] = {
            "install_signal_handlers": False, "delete_jobs": "successful",
            "shutdown_graceful_timeout": SHUTDOWN_GRACE_S, "fetch_job_polling_interval": 5.0,
            "name": self.worker_id}
        assert self._stopping is not None
        async with self.app.open_async():
            running = [
                asyncio.create_task(self.app.run_worker_async(
                    queues=[queue.TASK_QUEUE], concurrency=self.workers, **options)),
                asyncio.create_task(self.app.run_worker_async(
                    queues=[CONTROL_QUEUE], concurrency=1, **options))]
            stop = asyncio.create_task(self._stopping.wait())
            await asyncio.wait([stop, *running], return_when=asyncio.FIRST_COMPLETED)
            for task in (stop, *running):
                task.cancel()
            for outcome in await asyncio.gather(*running, return_exceptions=True):
                if isinstance(outcome, Exception):
                    log.error("a task worker ended: %r", outcome)

    def _request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    def _serve(self, handle_signals: bool) -> None:
        queue.recover_interrupted(self.settings)
        release_dead_holders(self.settings)
        loop = self._prepare()
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._request_stop)
        try:
            loop.run_until_complete(self._run())
        finally:
            loop.close()
            self._loop = None

    def run(self) -> None:
        """In the foreground until SIGINT/SIGTERM (then running jobs get SHUTDOWN_GRACE_S)."""
        self._serve(handle_signals=True)

    def _prepare(self) -> asyncio.AbstractEventLoop:
        """The loop and the stop event, made before the loop runs: a stop() asked at once (by
        another thread, before the workers started) is kept, not lost."""
        if self._loop is None:
            self._loop, self._stopping = asyncio.new_event_loop(), asyncio.Event()
        return self._loop

    def start(self) -> None:
        self._prepare()
        self._thread = threading.Thread(target=self._serve, args=(False,), daemon=True,
                                        name="edgefleet-task-worker")
        self._thread.start()

    def stop(self, timeout: float = SHUTDOWN_GRACE_S + 10) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # closed meanwhile: stopped already
                loop.call_soon_threadsafe(self._request_stop)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the task worker did not stop within %.0f s (a job still running)",
                            timeout)

    @property
    def alive(self) -> bool:
        """Whether its thread (``start``) still runs."""
        return self._thread is not None and self._thread.is_alive()

