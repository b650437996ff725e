"""The process firing a schedule is killed (SIGKILL) after claiming it and before its job is
stored, on the real database of the run (SQLite, or PostgreSQL in the PostgreSQL run).

Before, the claim (the schedule's next time moved on) committed on its own: a scheduler killed
right after it lost that period for good (no job, and the next firing a day later). Now the
claim, the job and ``last_job_id`` commit in one transaction, so the kill rolls the claim back
and the next tick, by any process, fires the period once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlmodel import select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Job
from orchestrator.jobs import schedules
from tests.unit.jobs.test_jobs import make_fleet

from .procs import REPO

# The scheduler as its own process, killed for real once the job it fires has been checked,
# that is after the claim and before the job's row (one step both the old and the new code
# take there: execute.validate_params).
KILLED_SCHEDULER = """
import os, signal, sys
from datetime import datetime
from orchestrator.core.config import Settings
from orchestrator.jobs import execute, schedules

checked = execute.validate_params

def then_die(*args, **kwargs):
    checked(*args, **kwargs)
    print("claimed and checked", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

execute.validate_params = then_die
schedules.due(Settings(), datetime.fromisoformat(sys.argv[1]))
print("not killed", flush=True)
"""


def test_a_scheduler_killed_between_claim_and_job_loses_no_period(home: Path,
                                                                  tmp_path: Path) -> None:
    settings = make_fleet(tmp_path, install=False, settings=Settings(home=home))
    created = schedules.create(settings, "push", {"bundle": "fc"}, "pi-a", cron="0 3 * * *",
                               actor="alice")
    first = created.next_run_at
    assert first is not None
    tick = first + timedelta(minutes=1)
    proc = subprocess.run([sys.executable, "-c", KILLED_SCHEDULER, tick.isoformat()],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=dict(os.environ, EDGEFLEET_HOME=str(home)))
    assert proc.returncode == -signal.SIGKILL, (proc.stdout, proc.stderr)
    assert proc.stdout == "claimed and checked\n", proc.stderr

    with session_scope(settings) as session:
        after = schedules.get_schedule(session, created.id)  # type: ignore[arg-type]
        assert session.exec(select(Job)).all() == []
    assert after.enabled and after.next_run_at == first  # the claim was rolled back

    (job,) = schedules.due(settings, tick + timedelta(minutes=1))  # the next tick, any process
    assert (job.schedule_id, job.state, job.origin) == (created.id, "queued", "schedule")
    with session_scope(settings) as session:
        after = schedules.get_schedule(session, created.id)  # type: ignore[arg-type]
        assert len(session.exec(select(Job)).all()) == 1
    assert after.last_job_id == job.id
    assert after.next_run_at == datetime.combine(first.date() + timedelta(days=1),
                                                 first.timetz()).astimezone(UTC)
