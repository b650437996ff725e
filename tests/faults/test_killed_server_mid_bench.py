"""SIGKILL of ``edgefleet serve`` while one of its jobs benchmarks a real sshd device.

Before: the Run stayed "running" forever (the job learnt its run only at the end) and the lease
held the device; the job page counted "6089 / 10" timed runs. Now the run is linked to its job
from the start and its page shows the job's progress (runs and seconds, each against its own
total) and no verdict; the restarted server marks job and run interrupted, saying the server
died, frees the lease at once, and the next bench runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from sqlmodel import select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import DeviceLease, Result, Run
from tests.conftest import Cli
from tests.live_server import Server

from .procs import pushed_host, wait_until


def test_a_killed_server_leaves_no_running_run_and_no_lock(
        cli: Cli, home: Path, sshd_factory, tmp_path: Path,
        serve: Callable[..., Server]) -> None:
    host, ref = pushed_host(cli, sshd_factory, tmp_path)
    server = serve()
    job = server.post("/api/jobs", {"kind": "bench", "targets": "pis", "params": {
        "bundle": ref, "threads": [1], "warmup": 1, "runs": 10, "min_seconds": 300,
        "shapes": {"log_mel": [1, 1, 98, 40]}}})

    def timing() -> dict | None:
        now = server.get(f"/api/jobs/{job['id']}")
        device = (now.get("progress") or {}).get("devices", {}).get(host.name, {})
        assert now["state"] in ("queued", "running"), now
        return now if device.get("phase") == "timed" else None

    running = wait_until(timing, "the bench to be timing runs on the device", 60)
    assert running["state"] == "running" and running["run_id"] is not None  # linked at once
    run_id = running["run_id"]

    def past_its_runs() -> str | None:  # the 10 runs are done; the 300 s decide now
        device = server.get(f"/api/jobs/{job['id']}")["progress"]["devices"][host.name]
        if (device.get("done") or 0) <= 10:
            return None
        return server.api("GET", f"/jobs/{job['id']}/progress").text

    partial = wait_until(past_its_runs, "more timed runs than asked for", 60)
    assert re.search(r"10/10 runs, [0-9.]+/300 s", partial), partial
    assert not re.search(r"\b(1[1-9]|[2-9][0-9]|[0-9]{3,}) ?/ ?(10|300)\b", partial), partial
    page = server.api("GET", f"/runs/{run_id}").text  # the run page shows the live progress
    assert 'id="job-progress"' in page and re.search(r"10/10 runs, [0-9.]+/300 s", page)
    assert 'id="verdict-unfinished"' in page and "still running" in page
    assert 'id="verdict-table"' not in page
    server.kill()

    settings = Settings(home=home)
    with session_scope(settings) as session:
        run = session.get(Run, run_id)
        assert run is not None and run.state == "running" and run.job_id == job["id"]
        assert session.exec(select(DeviceLease)).first() is not None

    restarted = serve()
    assert restarted.get(f"/api/jobs/{job['id']}")["state"] == "interrupted"
    interrupted = restarted.get(f"/api/runs/{run_id}")
    assert interrupted["state"] == "interrupted"
    assert f"job {job['id']}: the server running it (pid {server.proc.pid}) stopped" in \
        interrupted["state_reason"], interrupted
    page = restarted.api("GET", f"/runs/{run_id}").text
    assert 'id="run-interrupted"' in page and "the server running it" in page
    assert 'id="verdict-unfinished"' in page and 'id="verdict-table"' not in page
    assert 'id="job-progress"' not in page  # nothing runs any more
    with session_scope(settings) as session:
        assert session.exec(select(DeviceLease)).all() == []
        assert session.exec(select(Result).where(Result.run_id == run_id)).all() == []
    again = restarted.post("/api/jobs", {"kind": "bench", "targets": "pis", "params": {
        "bundle": ref, "threads": [1], "warmup": 1, "runs": 5,
        "shapes": {"log_mel": [1, 1, 98, 40]}}})
    done = restarted.wait_job(again["id"], timeout=120)
    assert done["run_id"] is not None and done["run_id"] != run_id
    assert restarted.get(f"/api/runs/{done['run_id']}")["state"] == "succeeded"
