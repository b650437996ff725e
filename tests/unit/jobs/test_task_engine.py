"""Several ``edgefleet worker`` processes on one database (issue 14 item 3): real processes on
the real PostgreSQL of tests/pg_server.py running procrastinate, local simulated Pis (sensors
simulated only). And SQLite's one worker per database, refused with a clear message."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Device, Job, Schedule, TelemetrySnapshot
from orchestrator.jobs import queue, schedules
from tests.faults.procs import CLI_ARGV, REPO, wait_until
from tests.faults.procs import workers as workers  # noqa: F401 - the fixture, by name
from tests.unit.jobs.test_jobs import make_fleet

# Seconds, not the minute of the defaults: heartbeats, lease expiry and the ticks; no periodic
# telemetry poll (its jobs would poll the device too).
FAST = {"EDGEFLEET_JOB_TTL_S": "3", "EDGEFLEET_LEASE_TTL_S": "3", "EDGEFLEET_TICK_S": "1",
        "EDGEFLEET_TELEMETRY_POLL": "0"}


def _tasks(settings: Settings, task: str) -> list[tuple[int, str]]:
    """procrastinate's rows of ``task`` still kept (successful ones are deleted)."""
    with session_scope(settings) as session:
        rows = session.execute(text("SELECT id, status::text FROM procrastinate_jobs WHERE "
                                    "task_name = :task ORDER BY id"), {"task": task}).all()
    return [(int(r[0]), str(r[1])) for r in rows]


@pytest.mark.postgresql_only
def test_a_job_delivered_twice_runs_once(tmp_path: Path, workers) -> None:  # type: ignore[no-untyped-def]
    settings = make_fleet(tmp_path, names=("pi-a",))
    job = queue.submit(settings, "telemetry", {}, "pi-a", actor="tester")
    with session_scope(settings) as session:  # the second delivery at-least-once allows
        queue.defer_task(session, job.id, lock=False)  # type: ignore[arg-type]
    assert [status for _, status in _tasks(settings, queue.TASK_NAME)] == ["todo", "todo"]
    first = workers(settings.home, **FAST)
    second = workers(settings.home, **FAST)

    def both_delivered() -> bool:
        return not _tasks(settings, queue.TASK_NAME)  # both ran and succeeded (then deleted)

    wait_until(both_delivered, "both deliveries of the task", 120)
    with session_scope(settings) as session:
        done = session.get(Job, job.id)
        snapshots = session.exec(select(TelemetrySnapshot)).all()
    assert done is not None and done.state == "succeeded", (done.state, done.error)
    assert len(snapshots) == 1  # the device was polled once: the second delivery did nothing
    assert done.worker is not None and done.worker.split(":")[1] in (
        str(first.proc.pid), str(second.proc.pid))


@pytest.mark.postgresql_only
def test_a_schedule_fires_once_with_two_workers(tmp_path: Path, workers) -> None:  # type: ignore[no-untyped-def]
    settings = make_fleet(tmp_path, names=("pi-a",))
    workers(settings.home, **FAST)
    workers(settings.home, **FAST)
    fired_at = datetime.now(UTC)
    schedule = schedules.create(settings, "telemetry", {}, "pi-a", actor="tester",
                                run_at=fired_at)

    def its_job() -> Job | None:
        with session_scope(settings) as session:
            found = session.exec(select(Job).where(Job.schedule_id == schedule.id)).all()
            return found[0] if found and found[0].state in queue.TERMINAL else None

    job = wait_until(its_job, "the schedule's job to run", 120)
    # Three more ticks done by the workers (procrastinate keeps the newest tick's defer, its
    # job deleted once it succeeded): every one of them saw the schedule, none fired it again.
    later = int(fired_at.timestamp()) + 3

    def ticked_past() -> bool:
        with session_scope(settings) as session:
            row = session.execute(text(
                "SELECT d.defer_timestamp, j.status::text FROM procrastinate_periodic_defers d "
                "LEFT JOIN procrastinate_jobs j ON j.id = d.job_id "
                "WHERE d.task_name = 'edgefleet.tick'")).first()
        return row is not None and row[0] >= later and row[1] in (None, "succeeded")

    wait_until(ticked_past, "three more ticks", 120)
    with session_scope(settings) as session:
        fired = session.exec(select(Job).where(Job.schedule_id == schedule.id)).all()
        row = session.get(Schedule, schedule.id)
    assert [j.id for j in fired] == [job.id] and job.state == "succeeded"
    assert row is not None and not row.enabled and row.last_job_id == job.id


@pytest.mark.sqlite_only
def test_sqlite_runs_one_worker_per_database(tmp_path: Path, home: Path, workers) -> None:  # type: ignore[no-untyped-def]
    first = workers(home)
    env = dict(os.environ, EDGEFLEET_HOME=str(home))
    for argv in (["worker", "--json"], ["serve", "--port", "0"]):
        second = subprocess.run([*CLI_ARGV, *argv], env=env, cwd=REPO, capture_output=True,
                                text=True, timeout=120, check=False)
        assert second.returncode == 2, (argv, second.stdout, second.stderr)
        message = " ".join((second.stdout + second.stderr).split())
        assert "SQLite runs one worker per database" in message, message
        assert "--no-worker" in message and "PostgreSQL" in message
        assert "Traceback" not in message
    assert first.proc.poll() is None  # the first one runs on
    assert json.loads(first.log.read_text().splitlines()[0])["backend"] == "threads"


@pytest.mark.postgresql_only
def test_a_queued_job_whose_task_was_lost_gets_a_new_one(home: Path) -> None:
    """A worker killed between taking a task and claiming its job leaves the job queued and
    the task 'doing' for a dead worker: after the job TTL the tick defers a new task, once."""
    from datetime import timedelta

    from sqlalchemy import update

    from orchestrator.jobs import engine

    settings = Settings(home=home, job_ttl_s=30)
    with session_scope(settings) as session:
        session.add(Device(name="pi-a", address="127.0.0.1"))
    job = queue.submit(settings, "telemetry", {}, "all", actor="tester")
    with session_scope(settings) as session:  # the task taken by a worker that then died
        session.execute(text("UPDATE procrastinate_jobs SET status = 'doing'"))
    assert engine.redefer_lost(settings) == []  # too young: its worker may claim it yet
    with session_scope(settings) as session:
        session.execute(update(Job).where(Job.id == job.id).values(  # type: ignore[arg-type]
            created_at=datetime.now(UTC) - timedelta(seconds=31)))
    assert engine.redefer_lost(settings) == [job.id]
    assert engine.redefer_lost(settings) == []  # one waiting task per job
    assert sorted(s for _, s in _tasks(settings, queue.TASK_NAME)) == ["doing", "todo"]
