"""Two hosts with one hostname (machines cloned from one image, containers given one name):
a process in another pid namespace, for real (``unshare --pid``), on the real database.

A lease holder or a job's worker is named ``HOST:PID:TOKEN``, and a process takes a holder
on its own host whose pid is gone for dead at once. With the bare hostname as HOST, a pid of
the other namespace (or machine) was looked up here: not found, so a live lease was taken
over (two operations on one Pi) and a live job marked interrupted. HOST now carries a digest
of the boot id and pid namespace (``core.hostid``): such a holder is another host's, freed only
by its heartbeat."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestrator.core.config import Settings
from orchestrator.core.db import get_engine, session_scope
from orchestrator.core.hostid import this_host
from orchestrator.core.models import Job
from orchestrator.fleet.leases import DeviceBusy, acquire, holder_gone, holder_id
from orchestrator.jobs import queue

from .procs import REPO

INNER = ("import json, os; from orchestrator.core.hostid import this_host; "
         "from orchestrator.fleet.leases import holder_id; "
         "print(json.dumps([this_host(), holder_id(), os.getpid()]))")


def a_gone_pid() -> int:
    """A pid no process of this namespace has (its process ran and was reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def other_namespace() -> tuple[str, str]:
    """(HOST, a holder id) as a process in a new pid namespace, same hostname, names them."""
    out = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c", INNER],
                         capture_output=True, text=True, check=True, cwd=REPO, timeout=60)
    host, holder, pid = json.loads(out.stdout)
    assert pid == 1  # it really is another pid namespace
    return host, holder


def test_the_other_namespace_is_another_host_with_the_same_name(
        other_namespace: tuple[str, str]) -> None:
    host, holder = other_namespace
    assert host.split("~")[0] == socket.gethostname() and host != this_host()
    assert holder.startswith(f"{host}:1:")
    assert holder_id().startswith(f"{this_host()}:")


def test_its_live_lease_is_not_taken_for_a_dead_local_pid(
        home: Path, other_namespace: tuple[str, str]) -> None:
    settings = Settings(home=home)
    get_engine(settings)
    host, _ = other_namespace
    gone = a_gone_pid()
    theirs = f"{host}:{gone}:aaaa0000"  # alive over there, whatever this namespace has
    assert not holder_gone(theirs)
    acquire(settings, "pi1", "bench", theirs)
    with pytest.raises(DeviceBusy, match="busy with a bench"):
        acquire(settings, "pi1", "push", holder_id())
    # The control: the same pid on *this* host is dead, and its lease taken over at once.
    ours = f"{this_host()}:{gone}:bbbb0000"
    assert holder_gone(ours)
    acquire(settings, "pi2", "bench", ours)
    acquire(settings, "pi2", "push", holder_id())


def test_its_running_job_is_not_marked_interrupted(home: Path,
                                                   other_namespace: tuple[str, str]) -> None:
    settings = Settings(home=home)
    host, _ = other_namespace
    gone = a_gone_pid()
    with session_scope(settings) as session:
        theirs, ours = (Job(kind="telemetry", targets="all", origin="server", state="running",
                            worker=f"{who}:{gone}:cccc0000") for who in (host, this_host()))
        session.add_all([theirs, ours])
    assert queue.recover_interrupted(settings) == [ours.id]  # only this host's dead pid


KILLED_CLI_JOB = """
import os, signal
from orchestrator.core.config import Settings
from orchestrator.jobs import tracker
with tracker.track(Settings(), "verify", {}, "all") as job:
    print(job.job_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_cli_job_killed_in_another_namespace_is_finalized_by_the_next_cli_command(
        home: Path, tmp_path: Path) -> None:
    """A CLI command killed where its pid means nothing here (a container run per command, or
    before a reboot: another host id), with no server or worker ever sweeping: the next CLI
    command judges it by its heartbeat, as a worker would, instead of leaving it running."""
    from orchestrator.jobs import tracker
    from tests.unit.jobs.test_jobs import make_fleet

    settings = make_fleet(tmp_path, install=False, settings=Settings(home=home, job_ttl_s=30))
    # Under a shell: the namespace's pid 1 could not be killed by its own SIGKILL.
    out = subprocess.run(["unshare", "--pid", "--fork", "sh", "-c", '"$0" -c "$1"',
                          sys.executable, KILLED_CLI_JOB],
                         capture_output=True, text=True, cwd=REPO, timeout=120,
                         env=dict(os.environ, EDGEFLEET_HOME=str(home)))
    assert out.returncode == 128 + signal.SIGKILL, out  # the shell's status for it
    dead = int(out.stdout)
    with session_scope(settings) as session:
        job = session.get(Job, dead)
        assert job is not None and job.state == "running" and not job.worker.startswith(
            f"{this_host()}:")
        job.heartbeat_at = datetime.now(UTC) - timedelta(seconds=31)  # a TTL has passed
        job.heartbeat_expires_at = datetime.now(UTC) - timedelta(seconds=1)
        session.add(job)
        # A server's job, as old: its workers judge it, by the server's own (maybe longer) TTL.
        served = Job(kind="telemetry", targets="all", origin="server", state="running",
                     worker="lab-b.example:4242:abcd1234", started_at=job.heartbeat_at,
                     heartbeat_at=job.heartbeat_at)
        session.add(served)
    with tracker.track(settings, "verify", {}, "all"):
        pass
    with session_scope(settings) as session:
        job = session.get(Job, dead)
        assert job is not None and job.state == "interrupted"
        assert "stopped renewing its heartbeat" in (job.error or "")
        assert session.get(Job, served.id).state == "running"  # type: ignore[union-attr]
