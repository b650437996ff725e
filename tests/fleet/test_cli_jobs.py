"""The CLI's push, bench, eval, rollback and verify are jobs run by the same executors as the
server's (jobs.execute): on the Jobs page while they run, audited alike, and cancellable from
the web, over real sshd with a real CLI process."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import select

from orchestrator.access.audit import list_events
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Job, Result, Run
from orchestrator.jobs import queue
from tests.conftest import Cli
from tests.faults.procs import pushed_host, setup_fleet, small_bundle, spawn_cli, wait_until

MIN_SECONDS = 10.0  # per thread count: a cancel that waited for the whole bench takes 2x this


def _job(settings: Settings, kind: str) -> Job | None:
    with session_scope(settings) as session:
        return session.exec(select(Job).where(Job.kind == kind)).first()


def test_a_cli_bench_is_cancelled_from_the_web(cli: Cli, home: Path, sshd_factory,
                                               tmp_path: Path) -> None:
    host, ref = pushed_host(cli, sshd_factory, tmp_path)
    settings = Settings(home=home)
    log = tmp_path / "bench.log"
    bench = spawn_cli(home, "bench", ref, "pis", "--threads", "1,2", "--warmup", "1",
                      "--runs", "5", "--min-seconds", str(MIN_SECONDS),
                      "--shape", "log_mel=1x1x98x40", "--json", log=log)

    def measuring_first() -> Job | None:
        job = _job(settings, "bench")
        device = ((job.progress if job else {}) or {}).get("devices", {}).get(host.name, {})
        return job if device.get("step") == 1 and device.get("phase") == "timed" else None

    job = wait_until(measuring_first, "threads=1 to be timed", 120, proc=bench, log=log)
    assert job.origin == "cli" and job.state == "running"
    # What the web's Cancel button and POST /api/jobs/{id}/cancel call.
    asked = queue.cancel(settings, job.id, actor="operator-on-the-web")  # type: ignore[arg-type]
    assert asked.cancel_requested
    code = bench.wait(MIN_SECONDS * 3)
    out = log.read_text()
    assert code == 1, out  # not every device finished: the CLI says so in its status

    job = _job(settings, "bench")
    assert job is not None and job.state == "cancelled", (job and job.state, out)
    with session_scope(settings) as session:
        (run,) = session.exec(select(Run)).all()
        assert run.state == "interrupted"  # a cancelled run keeps what finished, no verdict
        results = session.exec(select(Result).where(Result.run_id == run.id)).all()
        events = [(e.action, e.actor) for e in list_events(session)]
    # The thread count measuring when the cancel came finished; the next one never started.
    assert [r.threads for r in results if r.ok] == [1]
    assert any("cancelled" in (r.error or "") for r in results if not r.ok)
    assert ("job.cancel", "operator-on-the-web") in events


def test_cli_rollback_and_verify_are_jobs(cli: Cli, home: Path, sshd_factory,
                                          tmp_path: Path) -> None:
    (host,) = sshd_factory(1)
    setup_fleet(cli, tmp_path, [host])
    first = small_bundle(cli, tmp_path, "first")
    cli("push", first, "pis", "--json")
    second = small_bundle(cli, tmp_path, "second")
    cli("push", second, "pis", "--json")
    settings = Settings(home=home)

    verified = cli("devices", "verify", "pis", "--json").json
    assert [v["state"] for v in verified] == ["verified"]
    rolled = cli("rollback", "pis", "--json").json
    assert [r["state"] for r in rolled] == ["rolled-back"] and rolled[0]["active"] == first

    verify_job, rollback_job = _job(settings, "verify"), _job(settings, "rollback")
    assert verify_job is not None and rollback_job is not None
    assert (verify_job.origin, verify_job.state) == ("cli", "succeeded")
    assert (rollback_job.origin, rollback_job.state) == ("cli", "succeeded")
    assert rollback_job.result["devices"][0]["active"] == first
    with session_scope(settings) as session:
        events = [(e.action, e.target) for e in list_events(session)]
    # Rollback is audited like push (its job); verify changes nothing and is not.
    assert ("rollback", f"job:{rollback_job.id}") in events
    assert not any(action == "verify" for action, _ in events)
