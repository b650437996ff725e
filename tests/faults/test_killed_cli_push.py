"""``kill -9`` of ``edgefleet push`` once it holds the device's lease, mid-blob (its blob
streaming since it started: fleet.early), over real sshd.

Before: the lease kept the device "busy" for 6 hours, the job stayed "running" and the
deployment "pending". Now the next command on this host takes the dead process's lease at
once, finalizes its job and deployment as interrupted, and the push goes through.
A kill before the job is recorded (during the early stream alone) is
test_killed_early_push.py.

The process kills itself from inside the stream, once the push adopted it (its job and lease
recorded) and 4 MiB went out, on SQLite (early stream) and PostgreSQL (no early stream)
alike: timing the kill from outside raced a fast stream (over a warm shared SSH connection
the whole blob and the activation could be through first).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlmodel import select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Deployment, DeviceLease, Job
from orchestrator.demo.model import make_large_model
from tests.conftest import Cli

from .procs import REPO, setup_fleet

# ``edgefleet push ARGS``; its stream pauses after 4 MiB until deploy.push_over runs (the job
# and the lease exist by then), then the process SIGKILLs itself. The stream is the early one
# (fleet.early, SQLite) or push_over's own (no early stream: PostgreSQL); both send through
# AgentSession.send_blobs.
KILLER = """
import os, signal, sys, threading
from orchestrator.fleet import agentclient, deploy

adopted = threading.Event()

def push_over(*args, real=deploy.push_over, **kwargs):
    adopted.set()
    return real(*args, **kwargs)

def send_blobs(self, blobs, on_bytes=None, real=agentclient.AgentSession.send_blobs):
    sent = 0
    def counted(n):
        nonlocal sent
        sent += n
        if on_bytes:
            on_bytes(n)
        if sent >= 4 << 20:
            adopted.wait(60)
            os.kill(os.getpid(), signal.SIGKILL)
    return real(self, blobs, on_bytes=counted)

deploy.push_over = push_over
agentclient.AgentSession.send_blobs = send_blobs
from orchestrator.cli.main import main
sys.argv = ["edgefleet", *sys.argv[1:]]
main()
"""


def _big_bundle(cli: Cli, tmp_path: Path) -> None:
    """``big@1``: 48 MiB, so a push is still streaming when KILLER strikes."""
    folder = tmp_path / "big"
    folder.mkdir()
    make_large_model(folder / "model.onnx", 48)
    rows = 48 * 1024 * 1024 // (64 * 4)
    cli("bundle", "build", folder, "--name", "big", "--shape", f"x=1x{rows}", "--json")


def _killed_push(home: Path, *args: str) -> subprocess.Popen[bytes]:
    """``edgefleet ARGS`` under KILLER, run until it killed itself."""
    push = subprocess.Popen([sys.executable, "-c", KILLER, *args],
                            cwd=REPO, env=dict(os.environ, EDGEFLEET_HOME=str(home)),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    output, _ = push.communicate(timeout=120)
    assert push.returncode == -9, output.decode(errors="replace")[-3000:]
    return push


def test_a_killed_push_locks_nothing_and_is_finalized(cli: Cli, home: Path, sshd_factory,
                                                      tmp_path: Path) -> None:
    (host,) = sshd_factory(1)
    setup_fleet(cli, tmp_path, [host])
    _big_bundle(cli, tmp_path)

    push = _killed_push(home, "push", "big", "pis", "--json")
    assert not (host.root / "current").exists()  # killed mid-blob: nothing activated
    settings = Settings(home=home)
    with session_scope(settings) as session:
        (lease,) = session.exec(select(DeviceLease)).all()  # left behind by the dead process
        assert lease.holder.split(":")[1] == str(push.pid)
        (job,) = session.exec(select(Job)).all()
        assert job.state == "running"

    # The next push, at once: the dead holder's lease is taken, its job and deployment closed.
    again = cli("push", "big", "pis", "--json").json
    assert [p["state"] for p in again] == ["active"], again
    with session_scope(settings) as session:
        killed, redone = session.exec(select(Job).order_by(Job.id)).all()  # type: ignore[arg-type]
        assert (killed.state, redone.state) == ("interrupted", "succeeded")
        first, second = session.exec(select(Deployment).order_by(Deployment.id)).all()  # type: ignore[arg-type]
        assert (first.job_id, first.state) == (killed.id, "interrupted")
        assert first.finished_at is not None and "died" in (first.error or "")
        assert (second.job_id, second.state) == (redone.id, "active")
        assert session.exec(select(DeviceLease)).all() == []
    listed = cli("devices", "list", "--json").json
    assert listed[0]["active_bundle"] == "big@1"


def test_a_killed_rollout_shows_where_it_stopped(cli: Cli, home: Path, sshd_factory,
                                                 tmp_path: Path) -> None:
    """Killed while pushing its canary: once finalized, the job page's batches say the canary
    was interrupted and the next batch never started (it said "running"/"pending" for ever)."""
    canary, other = sshd_factory(2)
    setup_fleet(cli, tmp_path, [canary, other])
    _big_bundle(cli, tmp_path)
    _killed_push(home, "push", "big", "pis", "--canary", canary.name, "--batch", "1", "--json")

    cli("push", "big", canary.name, "--json")  # the next command finalizes the dead one's job
    with session_scope(Settings(home=home)) as session:
        killed = session.exec(select(Job).order_by(Job.id)).first()  # type: ignore[arg-type]
        assert killed is not None and killed.state == "interrupted"
        batches = killed.progress["rollout"]["batches"]
        assert [(b["devices"], b["state"]) for b in batches] == [
            ([canary.name], "interrupted"), ([other.name], "not started")]
        assert killed.progress["devices"][canary.name]["state"] == "interrupted"
    shown = cli("jobs", "show", str(killed.id)).stdout
    assert "canary" in shown and "interrupted" in shown and "not started" in shown
