"""The process ending a failed job is killed (SIGKILL) while it records the failure's alert, on
the real database of the run.

Before, the job's end and its ``job_failed`` alert were two commits: a kill between them left
a failed job that no alert would ever announce (nothing reconciles them later). Now the alert
is added in the transaction that ends the job: the kill leaves both or neither, and a job
still "running" is finalized, with its alert, by whoever sweeps it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from sqlmodel import select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Alert, Job
from tests.unit.jobs.test_jobs import make_fleet

from .procs import REPO

# Ends job ARGV[1] "failed", killed for real where the alert reads its webhook URL: after
# the job's end was written (old code: committed; new code: not yet), before the alert's.
KILLED_WHILE_ALERTING = """
import os, signal, sys
from orchestrator.core.config import Settings
from orchestrator.jobs import execute, queue
from orchestrator.notify import webhooks

def die(*args, **kwargs):
    print("alerting", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

webhooks.webhook_url = die
queue.finish_job(Settings(), int(sys.argv[1]), execute.JobOutcome("failed", error="boom"))
print("not killed", flush=True)
"""


def test_a_kill_while_alerting_leaves_the_job_and_its_alert_together(home: Path,
                                                                     tmp_path: Path) -> None:
    settings = make_fleet(tmp_path, install=False, settings=Settings(home=home))
    with session_scope(settings) as session:
        job = Job(kind="push", params={"bundle": "fc@1"}, targets="all", origin="server",
                  state="running", worker="lab-b.example:4242:abcd1234",
                  started_at=datetime.now(UTC), heartbeat_at=datetime.now(UTC))
        session.add(job)
        session.flush()
        job_id = job.id
    env = dict(os.environ, EDGEFLEET_HOME=str(home),
               EDGEFLEET_WEBHOOK_URL="http://127.0.0.1:9/never-reached")
    out = subprocess.run([sys.executable, "-c", KILLED_WHILE_ALERTING, str(job_id)],
                         capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert out.returncode == -signal.SIGKILL and out.stdout == "alerting\n", out

    def state() -> tuple[str, list[str]]:
        with session_scope(settings) as session:
            ended = session.get(Job, job_id)
            assert ended is not None
            return ended.state, [a.dedupe_key for a in session.exec(select(Alert)).all()]

    # Both or neither: here neither (the kill rolled the end back with its alert) ...
    assert state() == ("running", [])
    # ... and whoever ends it next (a retry, a sweep) records both.
    from orchestrator.jobs import execute, queue

    queue.finish_job(settings, job_id, execute.JobOutcome("failed", error="boom"))  # type: ignore[arg-type]
    assert state() == ("failed", [f"job_failed:{job_id}"])
