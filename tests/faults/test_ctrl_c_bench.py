"""Ctrl-C (a real SIGINT) of ``edgefleet bench`` while a device measures its second thread
count, over real sshd.

Before: the command took ~20 s to exit (the fan-out waited for the device) and the run stayed
"running". Now it exits at once with 130, the thread count that finished is kept, the job says
"cancelled" and its run "interrupted" (with why: Ctrl-C, by whom; no verdict), and nothing keeps
measuring on the device.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from sqlmodel import select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import DeviceLease, Job, Result, Run
from tests.conftest import Cli

from .procs import processes_under, pushed_host, spawn_cli, wait_until

MIN_SECONDS = 10.0  # per thread count: an exit that waited for the device would take this


def _job(settings: Settings) -> Job | None:
    with session_scope(settings) as session:
        return session.exec(select(Job).where(Job.kind == "bench")).first()


def test_ctrl_c_cancels_the_bench_at_once_and_keeps_what_finished(
        cli: Cli, home: Path, sshd_factory, tmp_path: Path) -> None:
    host, ref = pushed_host(cli, sshd_factory, tmp_path)
    settings = Settings(home=home)
    log = tmp_path / "bench.log"
    bench = spawn_cli(home, "bench", ref, "pis", "--threads", "1,2", "--warmup", "1",
                      "--runs", "5", "--min-seconds", str(MIN_SECONDS),
                      "--shape", "log_mel=1x1x98x40", "--json", log=log)

    def second_thread_count() -> bool:
        job = _job(settings)
        device = ((job.progress if job else {}) or {}).get("devices", {}).get(host.name, {})
        return device.get("step") == 2 and device.get("phase") in ("warmup", "timed")

    wait_until(second_thread_count, "threads=2 to be measuring", 120, proc=bench, log=log)
    assert processes_under(host.root), "the device should be measuring now"
    sent = time.monotonic()
    bench.send_signal(signal.SIGINT)
    code = bench.wait(60)
    took = time.monotonic() - sent
    print(f"edgefleet bench exited {took:.2f} s after SIGINT")  # for the record (-s)
    out = log.read_text()
    assert code == 130, out
    assert took < MIN_SECONDS / 2, f"exit took {took:.1f}s after Ctrl-C:\n{out}"
    assert "cancelled (Ctrl-C)" in out

    job = _job(settings)
    assert job is not None and job.state == "cancelled"
    assert (job.error or "").startswith("cancelled from the CLI (Ctrl-C) by "), job.error
    with session_scope(settings) as session:
        (run,) = session.exec(select(Run)).all()
        assert (run.state, run.job_id, job.run_id) == ("interrupted", job.id, run.id)
        results = session.exec(select(Result).where(Result.run_id == run.id)).all()
        assert session.exec(select(DeviceLease)).all() == []
    kept = [r for r in results if r.threads == 1]
    assert len(kept) == 1 and kept[0].ok and kept[0].n and kept[0].n >= 5
    (stopped,) = [r for r in results if r.threads is None]
    assert "cancelled" in (stopped.error or "") and "threads 1" in (stopped.error or "")
    printed = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert printed["state"] == "interrupted"
    assert printed["state_reason"] == f"job {job.id}: {job.error}"
    # `runs show` says why and that no verdict follows; `runs verdict` refuses.
    shown = cli("runs", "show", str(run.id))
    assert "interrupted: job" in shown.stdout and "(Ctrl-C)" in shown.stdout
    assert "gets no verdict" in shown.stdout
    refused = cli("runs", "verdict", str(run.id), "--window", "1", "--hop", "1", expect=2)
    assert "was interrupted" in refused.stderr, refused.stderr
    # Its connection gone, the device's agent and its measurement child stop too.
    wait_until(lambda: not processes_under(host.root), "the device to stop measuring", 30)
