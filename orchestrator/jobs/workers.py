"""Which job workers a process runs: procrastinate's on PostgreSQL (``jobs.engine``), the
in-process threads on SQLite (``jobs.runner``). One door for ``edgefleet worker`` and
``edgefleet serve``.

SQLite is single-worker by decision: one process per database file runs jobs (an ``flock`` on
``edgefleet.db.worker.lock`` beside it, held for the process's life, released by the kernel if
it dies). The claim itself would hold across processes, but a file on one disk is one host, the
writers would queue on SQLite's one write lock, and a worker on another machine cannot reach
the file; the second worker is refused with a message pointing to PostgreSQL instead.
"""

from __future__ import annotations

import fcntl
from typing import IO, Protocol

from orchestrator.core.config import Settings
from orchestrator.core.dbfile import sqlite_file
from orchestrator.core.errors import EdgeFleetError
from orchestrator.jobs.queue import is_postgresql

# This process's hold on SQLite worker locks, by lock path (kept open for the process's life).
_held: dict[str, IO[str]] = {}


class Workers(Protocol):
    worker_id: str

    def start(self) -> None: ...

    def stop(self, timeout: float = 30.0) -> None: ...


def backend(settings: Settings) -> str:
    """``procrastinate`` (PostgreSQL) or ``threads`` (SQLite)."""
    return "procrastinate" if is_postgresql(settings.db_url) else "threads"


def hold_sqlite_lock(settings: Settings) -> None:
    """On SQLite, make this process the database's one worker, or refuse (EdgeFleetError, exit
    2) naming who to stop and what to use for several; nothing on PostgreSQL."""
    path = sqlite_file(settings.db_url)
    if path is None or str(path) in _held:
        return
    lock = path.with_name(path.name + ".worker.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    handle = lock.open("a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise EdgeFleetError(
            f"another process already runs jobs on the SQLite database {path} (an `edgefleet "
            "worker`, or an `edgefleet serve` without --no-worker): SQLite runs one worker per "
            "database. Stop that one, serve the web with `edgefleet serve --no-worker`, or, "
            "for several workers, use PostgreSQL (README, \"Running on several machines\")"
        ) from None
    _held[str(path)] = handle


def make(settings: Settings, workers: int = 2,
         telemetry_interval_s: float | None = 60.0) -> Workers:
    """This database's workers (not started). On PostgreSQL, procrastinate must be installed
    (the ``postgres`` extra). ``EDGEFLEET_TELEMETRY_POLL=0`` turns the periodic poll off."""
    if not settings.telemetry_poll:
        telemetry_interval_s = None
    if workers < 1:
        raise EdgeFleetError(f"--workers must be at least 1 (got {workers})")
    if is_postgresql(settings.db_url):
        try:
            from orchestrator.jobs.engine import TaskWorker
        except ImportError as exc:
            raise EdgeFleetError(f"PostgreSQL runs jobs on procrastinate ({exc}): pip install "
                                 "'edgefleet[postgres]'") from None
        return TaskWorker(settings, workers, telemetry_interval_s)
    from orchestrator.jobs.runner import JobRunner

    return JobRunner(settings, workers=workers, telemetry_interval_s=telemetry_interval_s)
