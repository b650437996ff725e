"""A push queued behind a running bench on the same real sshd device waits, saying for what,
and then runs (issue 14 item 5) — before, it failed "busy". On both backends, with the job
workers ``edgefleet serve`` runs: procrastinate's on PostgreSQL, the threads on SQLite."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from sqlmodel import select

from orchestrator.core.config import get_settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Job, Result
from orchestrator.jobs import queue, workers
from tests.conftest import Cli
from tests.faults.procs import pushed_host, wait_until


def _job(job_id: int) -> Job:
    with session_scope(get_settings()) as session:
        job = session.get(Job, job_id)
    assert job is not None
    return job


def test_a_push_behind_a_running_bench_waits_then_runs(cli: Cli, sshd_factory,
                                                       tmp_path: Path) -> None:
    host, ref = pushed_host(cli, sshd_factory, tmp_path)
    settings = get_settings()
    runner = workers.make(settings, workers=2, telemetry_interval_s=None)
    runner.start()
    try:
        bench = queue.submit(settings, "bench", {
            "bundle": ref, "threads": [1], "warmup": 1, "runs": 10, "min_seconds": 8,
            "shapes": {"log_mel": [1, 1, 98, 40]}}, "pis", actor="tester")

        def timing() -> bool:
            device = (_job(bench.id).progress or {}).get("devices", {}).get(host.name, {})
            return device.get("phase") == "timed"

        wait_until(timing, "the bench to time runs on the device", 120)
        push = queue.submit(settings, "push", {"bundle": ref}, "pis", actor="tester")

        def waiting() -> str | None:
            job = _job(push.id)
            assert job.state in ("queued", "running"), (job.state, job.error)
            device = (job.progress or {}).get("devices", {}).get(host.name, {})
            return device.get("waiting") if device.get("state") == "waiting" else None

        said = wait_until(waiting, "the push to wait for the device", 60)
        assert said == f"waiting for {host.name}: bench #{bench.id}"
        assert _job(bench.id).state == "running"

        def finished(job_id: int) -> Callable[[], Job | None]:
            def check() -> Job | None:
                job = _job(job_id)
                return job if job.state in queue.TERMINAL else None
            return check

        # The bench frees the device when its device work ends (its job then writes its
        # summary): the push may finish first, but never started before that.
        pushed = wait_until(finished(push.id), "the push to run after the bench", 180)
        benched = wait_until(finished(bench.id), "the bench to finish", 60)
        assert benched.state == "succeeded", benched.error
        assert pushed.state == "succeeded", pushed.error
        assert [d["state"] for d in pushed.result["devices"]] == ["unchanged"]
        with session_scope(settings) as session:  # the bench kept its measurement
            assert session.exec(select(Result).where(Result.run_id == benched.run_id)).all()
    finally:
        started = time.monotonic()
        runner.stop()
        print(f"workers stopped in {time.monotonic() - started:.2f} s")
    assert not getattr(runner, "alive", False)  # procrastinate's thread ended with stop()
