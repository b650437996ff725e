"""A server killed (SIGKILL) in the middle of a benchmark job, then started again: the job is
``interrupted``, the results stored before the kill are kept, nothing is re-run, and the
device lease the dead server held is freed (a new push to that device succeeds).

Real ``edgefleet serve`` processes, real sshd hosts, the real agent and onnxruntime. The
benchmark runs one device at a time (``forks`` 1) with ``min_seconds`` 3, so once the first
device's results are stored the second is still measuring for about 3 s: that is when the
server is killed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from orchestrator.core.config import get_settings
from orchestrator.core.db import session_scope
from orchestrator.core.hostid import this_host
from orchestrator.core.models import DeviceLease, Result

from ..conftest import Cli
from ..fleet.test_push_e2e import model_folder, setup_fleet

SHAPE = ("--shape", "log_mel=1x1x98x40")


def stored_results() -> list[tuple[Any, ...]]:
    with session_scope(get_settings()) as session:
        rows = session.exec(select(Result).order_by(col(Result.id))).all()
        return [(r.id, r.run_id, r.device_name, r.threads, r.ok, r.n, r.p50_ms) for r in rows]


def lease_holder(device: str) -> str | None:
    with session_scope(get_settings()) as session:
        lease = session.get(DeviceLease, device)
        return lease.holder if lease is not None else None


def test_sigkill_mid_bench_interrupts_keeps_results_frees_lease(
        cli: Cli, tmp_path: Path, sshd_factory, serve, admin_token: str) -> None:
    fast, slow = hosts = sshd_factory(2)
    setup_fleet(cli, tmp_path, hosts)
    cli("bundle", "build", model_folder(tmp_path, 0), "--name", "m", *SHAPE)
    cli("push", "m@1", "pis")
    cli("bundle", "build", model_folder(tmp_path, 1), "--name", "m", *SHAPE)  # m@2, for later

    server = serve(token=admin_token)
    job_id = server.post("/api/jobs", {
        "kind": "bench", "targets": "pis",
        "params": {"bundle": "m@1", "threads": [1], "warmup": 1, "runs": 5,
                   "min_seconds": 3, "forks": 1}})["id"]

    # Mid-flight: the job runs, the first device's result is stored, the second device is
    # leased by this server process and still measuring.
    ours = f"{this_host()}:{server.proc.pid}:"

    def mid_flight() -> list[tuple[Any, ...]] | None:
        results = stored_results()
        holder = lease_holder(slow.name) or ""
        running = server.get(f"/api/jobs/{job_id}")["state"] == "running"
        return results if running and results and holder.startswith(ours) else None

    before = server.wait_for(mid_flight, "the first device's result while the job runs", 30,
                             interval=0.05)
    server.kill()
    assert {r[2] for r in before} == {fast.name}, before
    assert all(r[4] and r[5] >= 5 for r in before), before  # ok, with its timed runs
    assert lease_holder(slow.name).startswith(ours)  # the dead server still "holds" slow
    assert stored_results() == before  # nothing landed after the kill

    server = serve(token=admin_token)
    job = server.wait_for(
        lambda: (j := server.get(f"/api/jobs/{job_id}"))["state"] == "interrupted" and j,
        f"job {job_id} to be reported interrupted", 15)
    assert "restarted" in job["error"], job
    assert lease_holder(slow.name) is None  # freed at start: its holder's process is gone

    # The freed device takes a new push (a real one: m@2 is not on it yet).
    push_id = server.post("/api/jobs", {"kind": "push", "targets": slow.name,
                                        "params": {"bundle": "m@2"}})["id"]
    pushed = server.wait_job(push_id)
    assert [(d["device"], d["state"]) for d in pushed["result"]["devices"]] == [
        (slow.name, "active")], pushed
    manifest = json.loads((slow.root / "current" / ".edgefleet-manifest.json").read_text())
    assert manifest["version"] == "2"

    # Meanwhile nothing re-ran: still one bench job (interrupted), the same stored results.
    benches = server.get("/api/jobs", params={"kind": "bench"})
    assert [(j["id"], j["state"]) for j in benches] == [(job_id, "interrupted")]
    assert stored_results() == before
