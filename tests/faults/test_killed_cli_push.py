"""``kill -9`` of ``edgefleet push`` once it holds the device's lease (its blob streaming
since it started: fleet.early), over real sshd.

Before: the lease kept the device "busy" for 6 hours, the job stayed "running" and the
deployment "pending". Now the next command on this host takes the dead process's lease at
once, finalizes its job and deployment as interrupted, and the push goes through.
A kill before the job is recorded (during the early stream alone) is
test_killed_early_push.py.
"""

from __future__ import annotations

import signal
from pathlib import Path

from sqlmodel import select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Deployment, DeviceLease, Job
from orchestrator.demo.model import make_large_model
from tests.conftest import Cli

from .procs import setup_fleet, spawn_cli, wait_until


def leases(home: Path) -> list[DeviceLease]:
    """The device leases, read while the push's process writes."""
    with session_scope(Settings(home=home)) as session:
        return list(session.exec(select(DeviceLease)).all())


def test_a_killed_push_locks_nothing_and_is_finalized(cli: Cli, home: Path, sshd_factory,
                                                      tmp_path: Path) -> None:
    (host,) = sshd_factory(1)
    setup_fleet(cli, tmp_path, [host])
    folder = tmp_path / "big"
    folder.mkdir()
    make_large_model(folder / "model.onnx", 48)
    rows = 48 * 1024 * 1024 // (64 * 4)
    cli("bundle", "build", folder, "--name", "big", "--shape", f"x=1x{rows}", "--json")

    log = tmp_path / "push.log"
    push = spawn_cli(home, "push", "big", "pis", "--json", log=log)
    # The lease is taken once the ORM is up, while the blob streams (it started before).
    wait_until(lambda: leases(home), "the push to hold the lease", proc=push, log=log)
    push.send_signal(signal.SIGKILL)
    push.wait(30)
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
