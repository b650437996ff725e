"""``kill -9`` of a CLI push while its early stream runs, before its job exists (fleet.early).

What a push may do before its job is recorded must leave nothing to clean up when the process
dies there: no job, no lease, no Deployment row; on the device nothing activated, and the
next push goes through (the dead session's part is resumed or replaced by the agent).
The process kills itself from inside the stream, after its first bytes went out: the kill
lands mid-blob every time, without timing guesses.
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

from .procs import REPO, part_files, setup_fleet

# early.start, then SIGKILL of this very process from the stream's progress callback once
# 4 MiB are on their way.
KILLER = """
import os, signal, sys
from orchestrator.core.config import Settings
from orchestrator.fleet import early

def advance(self, nbytes, real=early.EarlyPush._advance):
    real(self, nbytes)
    if self.sent >= 4 << 20:
        os.kill(os.getpid(), signal.SIGKILL)

early.EarlyPush._advance = advance
assert early.start(Settings(), sys.argv[1], sys.argv[2], 10, None) == 1
early.discard_all()  # waits for the stream's thread: the kill comes first
"""


def test_a_push_killed_before_its_job_leaves_nothing(cli: Cli, home: Path, sshd_factory,
                                                     tmp_path: Path) -> None:
    (host,) = sshd_factory(1)
    setup_fleet(cli, tmp_path, [host])
    folder = tmp_path / "big"
    folder.mkdir()
    make_large_model(folder / "model.onnx", 48)
    rows = 48 * 1024 * 1024 // (64 * 4)
    built = cli("bundle", "build", folder, "--name", "big", "--shape", f"x=1x{rows}",
                "--json").json

    killed = subprocess.run([sys.executable, "-c", KILLER, "big@1", host.name], cwd=REPO,
                            env=dict(os.environ, EDGEFLEET_HOME=str(home)), timeout=120,
                            check=False, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    settings = Settings(home=home)
    with session_scope(settings) as session:
        for table in (Job, Deployment, DeviceLease):
            assert session.exec(select(table)).all() == []
    assert not (host.root / "current").exists()

    again = cli("push", "big@1", "pis", "--json").json
    assert [(p["state"], p["bytes_sent"] + p["resumed_bytes"]) for p in again] == [
        ("active", built["size_bytes"])], again
    assert part_files(host) == []
    with session_scope(settings) as session:
        (job,) = session.exec(select(Job)).all()
        assert job.state == "succeeded"
        assert session.exec(select(DeviceLease)).all() == []
