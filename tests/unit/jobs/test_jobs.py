"""Jobs against real local devices: real agent sessions, pushes, benchmarks and telemetry over
``ansible_connection: local`` (simulated sensors only), real SQLite through migrations."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlmodel import select

from orchestrator.artifacts.bundles import build_bundle
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError
from orchestrator.core.hostid import this_host
from orchestrator.core.models import Deployment, DeviceLease, Job, Result, Run, TelemetrySnapshot
from orchestrator.demo.model import make_demo_classifier
from orchestrator.demo.simulate import create_simulated_device
from orchestrator.fleet import deploy
from orchestrator.fleet.agents import install_agents
from orchestrator.inventory.devices import all_devices, sync_inventory
from orchestrator.inventory.reader import load_inventory
from orchestrator.jobs import queue
from orchestrator.jobs import runner as job_runner
from orchestrator.jobs import tracker as job_tracker
from orchestrator.measure import runs, verdicts
from orchestrator.measure.runs import unpack_floats
from tests.conftest import Cli

INPUT_SHAPES = {"log_mel": [1, 1, 98, 40]}
QUICK = {"threads": [1], "warmup": 0, "runs": 2}  # a real but short measurement


def make_fleet(base: Path, names: tuple[str, ...] = ("pi-a", "pi-b"),
               broken: tuple[str, ...] = (), install: bool = True,
               settings: Settings | None = None) -> Settings:
    """Local simulated Pis with the agent installed and bundle ``fc@1`` built (not pushed).
    A ``broken`` device points at an interpreter that does not exist."""
    settings = settings or Settings(home=base / "home", database_url=None)
    hosts: dict[str, Any] = {}
    for name in (*names, *broken):
        sim = create_simulated_device(base / "sims" / name)
        hosts[name] = sim.local_host_vars(
            base / "roots" / name, None if name in names else str(base / "no-such-python"))
    inventory = base / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    with session_scope(settings) as session:
        sync_inventory(session, load_inventory(inventory))
        devices = [d for d in all_devices(session) if d.name in names]
    if install:
        _, installed = install_agents(settings, devices)
        assert all(o.ok for o in installed), [o.error for o in installed]
    model = make_demo_classifier(base / "model" / "model.onnx")
    with session_scope(settings) as session:
        build_bundle(session, settings, model, "fc", input_shapes=INPUT_SHAPES)
    return settings


def run(settings: Settings, kind: str, params: dict[str, Any], targets: str = "all") -> Job:
    queued = queue.submit(settings, kind, params, targets, actor="tester")
    assert queued.state == "queued"
    done = job_runner.JobRunner(settings, telemetry_interval_s=None).run_one()
    assert done is not None and done.id == queued.id
    return done


def all_jobs(settings: Settings) -> list[Job]:
    with session_scope(settings) as session:
        return queue.list_jobs(session)


# -- push, bench, telemetry -------------------------------------------------------------------


def test_push_job_records_progress_and_per_device_result(tmp_path: Path) -> None:
    settings = make_fleet(tmp_path)
    job = run(settings, "push", {"bundle": "fc"})
    public = queue.job_public(job)
    assert public["state"] == "succeeded" and public["error"] is None
    assert public["origin"] == "server" and public["created_by"] == "tester"
    assert public["started_at"] <= public["finished_at"]
    assert public["finished_at"].endswith("+00:00")
    assert public["result"]["bundle"] == "fc@1"
    by_device = {d["device"]: d for d in public["result"]["devices"]}
    assert set(by_device) == {"pi-a", "pi-b"}
    for name, outcome in by_device.items():
        assert outcome["state"] == "active" and outcome["error"] is None
        assert outcome["bytes_sent"] > 0 and outcome["duration_s"] > 0
        progress = public["progress"]["devices"][name]
        assert progress == {"state": "active", "bytes": outcome["bytes_sent"],
                            "total": outcome["bytes_sent"]}
    with session_scope(settings) as session:
        assert {d.state for d in session.exec(select(Deployment)).all()} == {"active"}
    again = run(settings, "push", {"bundle": "fc@1"})  # nothing to send the second time
    assert [d["state"] for d in again.result["devices"]] == ["unchanged", "unchanged"]


def test_push_job_fails_naming_the_failing_device(tmp_path: Path) -> None:
    settings = make_fleet(tmp_path, names=("pi-a",), broken=("pi-broken",))
    job = run(settings, "push", {"bundle": "fc"})
    assert job.state == "failed"
    assert job.error is not None and "1 of 2" in job.error and "pi-broken" in job.error
    states = {d["device"]: d["state"] for d in job.result["devices"]}
    assert states == {"pi-a": "active", "pi-broken": "failed"}  # one failure aborts nothing


def test_bench_job_sets_run_id_and_progress(tmp_path: Path) -> None:
    settings = make_fleet(tmp_path, names=("pi-a",))
    assert run(settings, "push", {"bundle": "fc"}).state == "succeeded"
    job = run(settings, "bench", {"bundle": "fc", **QUICK})
    assert job.state == "succeeded", job.error
    assert job.run_id is not None and job.result["run_ids"] == [job.run_id]
    assert job.progress["devices"]["pi-a"] | {"state": "done", "phase": "timed", "done": 2,
                                              "total": 2, "threads": 1, "step": 1,
                                              "steps": 1} == job.progress["devices"]["pi-a"]
    with session_scope(settings) as session:
        results = session.exec(select(Result).where(Result.run_id == job.run_id)).all()
        assert [(r.device_name, r.threads, r.ok, r.n) for r in results] == [("pi-a", 1, True, 2)]
        # The run's author is whoever submitted the job (a token name), not the server's user.
        assert session.get(Run, job.run_id).created_by == "tester"


def test_bench_job_with_baseline_points_at_the_candidate_run(tmp_path: Path) -> None:
    settings = make_fleet(tmp_path, names=("pi-a",))
    model = make_demo_classifier(tmp_path / "v2" / "model.onnx", seed=3)
    with session_scope(settings) as session:
        build_bundle(session, settings, model, "fc", input_shapes=INPUT_SHAPES)
    for ref in ("fc@1", "fc@2"):  # both on the device (the agent keeps previous versions)
        assert run(settings, "push", {"bundle": ref}).state == "succeeded"
    job = run(settings, "bench", {"bundle": "fc@2", "baseline": "fc@1", "rounds": 2, **QUICK})
    assert job.state == "succeeded", job.error
    assert job.params["rounds"] == 2 and job.params["baseline"] == "fc@1"
    base_id, candidate_id = job.result["run_ids"]
    assert job.run_id == candidate_id
    assert [r["bundle"] for r in job.result["runs"]] == ["fc@1", "fc@2"]
    assert job.progress["devices"]["pi-a"]["steps"] == 4  # 1 thread count x 2 rounds x 2
    with session_scope(settings) as session:
        assert session.get(Run, candidate_id).bundle_version == "2"  # type: ignore[union-attr]
        assert session.get(Run, base_id).bundle_version == "1"  # type: ignore[union-attr]


def test_telemetry_job_defaults_to_all(tmp_path: Path) -> None:
    settings = make_fleet(tmp_path)
    job = run(settings, "telemetry", {}, targets="")
    assert job.targets == "all" and job.state == "succeeded", job.error
    assert [d["device"] for d in job.result["devices"]] == ["pi-a", "pi-b"]
    assert all(d["temp_c"] == 48.0 for d in job.result["devices"])
    with session_scope(settings) as session:
        assert len(session.exec(select(TelemetrySnapshot)).all()) == 2


@pytest.fixture(scope="module")
def records_only(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Devices and a bundle in the DB, no agents: for checks that never reach a device."""
    return make_fleet(tmp_path_factory.mktemp("records"), install=False)


def test_job_bounds_are_the_agents() -> None:
    from agent.bench import MAX_THREADS, MAX_TIMED_RUNS
    from orchestrator.jobs import params as job_params

    assert (job_params.MAX_THREADS, job_params.MAX_RUNS) == (MAX_THREADS, MAX_TIMED_RUNS)


@pytest.mark.parametrize(("kind", "params", "targets", "message"), [
    ("bench", {"bundle": "fc", "warmup": 2**70}, "all", "'warmup' must be an integer"),
    # JSON has no NaN or Infinity, but Python's json (and so the API) reads them; stored, the
    # job's params were no JSON any more (PostgreSQL refuses them).
    ("push", {"bundle": "fc", "timeout": float("nan")}, "all", "'timeout' must be a number"),
    ("push", {"bundle": "fc", "timeout": float("inf")}, "all", "'timeout' must be a number"),
    ("push", {"bundle": "fc", "timeout": 10**400}, "all", "'timeout' is too large"),
])
def test_huge_numbers_are_refused_too(records_only: Settings, kind: str,
                                      params: dict[str, Any], targets: str,
                                      message: str) -> None:
    with pytest.raises(EdgeFleetError, match=message):
        queue.submit(records_only, kind, params, targets, actor="tester")
    assert all_jobs(records_only) == []


@pytest.mark.parametrize(("kind", "params", "targets", "message"), [
    ("reboot", {}, "all", "unknown job kind 'reboot'"),
    ("push", {}, "all", "'bundle' must be a bundle reference"),
    ("push", {"bundle": "nope"}, "all", "no bundle nope"),
    ("push", {"bundle": "fc@7"}, "all", "no bundle fc@7"),
    ("push", {"bundle": "fc", "force": True}, "all", "unknown parameter(s) 'force'"),
    ("push", {"bundle": "fc"}, "pi-zzz", "pi-zzz"),
    ("push", {"bundle": "fc"}, "", "targets must be a pattern"),
    ("bench", {"bundle": "fc", "threads": [0]}, "all", "'threads' must be a list"),
    ("bench", {"bundle": "fc", "runs": True}, "all", "'runs' must be an integer from 1 to"),
    ("bench", {"bundle": "fc", "runs": 10**20}, "all", "from 1 to 1000000 (got 1000"),
    ("bench", {"bundle": "fc", "threads": [257]}, "all", "thread counts from 1 to 256"),
    ("bench", {"bundle": "fc", "shapes": {"x": "1x2"}}, "all", "'shapes' must map"),
    ("bench", {"bundle": "fc", "baseline": "old"}, "all", "no bundle old"),
    ("bench", {"bundle": "fc", "graph_optimization": "max"}, "all", "'max'"),
    ("telemetry", {"forks": 0}, "all", "'forks' must be an integer from 1 to 1000"),
    ("eval", {"bundle": "fc"}, "all", "'dataset' must be a dataset reference"),
    ("eval", {"bundle": "fc", "dataset": "nope"}, "all", "no dataset nope"),
    ("eval", {"bundle": "fc", "dataset": "d", "warmup": -1}, "all",
     "'warmup' must be an integer from 0 to"),
])
def test_bad_params_are_refused_before_anything_is_queued(
        records_only: Settings, kind: str, params: dict[str, Any], targets: str,
        message: str) -> None:
    settings = records_only
    with pytest.raises(EdgeFleetError) as info:
        queue.submit(settings, kind, params, targets, actor="tester")
    assert message in str(info.value)
    assert all_jobs(settings) == []


# -- cancellation -----------------------------------------------------------------------------


def test_cancel_a_queued_job(tmp_path: Path) -> None:
    settings = make_fleet(tmp_path, install=False)
    job = queue.submit(settings, "telemetry", {}, "all", actor="tester")
    cancelled = queue.cancel(settings, job.id, actor="tester")  # type: ignore[arg-type]
    assert cancelled.state == "cancelled" and cancelled.finished_at is not None
    assert job_runner.JobRunner(settings).run_one() is None  # nothing left to run
    with pytest.raises(EdgeFleetError, match="already finished"):
        queue.cancel(settings, job.id, actor="tester")  # type: ignore[arg-type]
    with pytest.raises(EdgeFleetError, match="no job 999"):
        queue.cancel(settings, 999, actor="tester")


def test_cancel_a_running_bench_stops_before_the_next_measurement(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_fleet(tmp_path)
    assert run(settings, "push", {"bundle": "fc"}).state == "succeeded"
    job = queue.submit(settings, "bench", {"bundle": "fc", "threads": [1, 2], "rounds": 2,
                                          "forks": 1, "warmup": 0, "runs": 2}, "all",
                      actor="tester")
    started: list[tuple[str, int]] = []  # (device, thread count) of each measurement begun
    real_bench = runs.bench

    def bench_cancelling_on_first_timed_event(*args: Any, **kwargs: Any) -> Any:
        on_event = kwargs["on_event"] if "on_event" in kwargs else args[7]

        def spy(device: str, event: dict[str, Any]) -> None:
            if event.get("phase") == "load" and event.get("done") == 0:
                started.append((device, event["threads"]))
            if event.get("phase") == "timed" and len(started) == 1:
                queue.cancel(settings, job.id, actor="tester")  # type: ignore[arg-type]
            on_event(device, event)

        if "on_event" in kwargs:
            kwargs["on_event"] = spy
        else:
            args = (*args[:7], spy, *args[8:])
        return real_bench(*args, **kwargs)

    monkeypatch.setattr(runs, "bench", bench_cancelling_on_first_timed_event)
    done = job_runner.JobRunner(settings).run_one()
    assert done is not None and done.state == "cancelled" and done.cancel_requested
    # pi-a finished its first measurement, then stopped at its second; pi-b never measured.
    assert started == [("pi-a", 1), ("pi-a", 2), ("pi-b", 1)]  # of 4 per device
    assert done.error is not None and "pi-a, pi-b" in done.error
    assert done.progress["devices"]["pi-b"]["state"] == "cancelled"
    with session_scope(settings) as session:
        results = session.exec(select(Result).where(Result.run_id == done.run_id)).all()
        # pi-a's threads=1 finished only its first of 2 rounds: an unbalanced A/B, not kept.
        assert all(not r.ok and "was cancelled" in (r.error or "") for r in results)
        assert session.exec(select(DeviceLease)).all() == []  # leases released


def test_a_cancelled_bench_keeps_the_thread_counts_finished_before_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No lost result: with one round, threads=1 finished before the cancel is stored."""
    settings = make_fleet(tmp_path)
    assert run(settings, "push", {"bundle": "fc"}).state == "succeeded"
    job = queue.submit(settings, "bench", {"bundle": "fc", "threads": [1, 2], "forks": 1,
                                          "warmup": 0, "runs": 2}, "pi-a", actor="tester")
    real_bench = runs.bench

    def bench_cancelling_when_threads_2_loads(*args: Any, **kwargs: Any) -> Any:
        on_event = args[7]  # jobs.execute passes it positionally

        def spy(device: str, event: dict[str, Any]) -> None:
            if event.get("phase") == "load" and event.get("threads") == 2:
                queue.cancel(settings, job.id, actor="tester")  # type: ignore[arg-type]
            on_event(device, event)

        return real_bench(*args[:7], spy, *args[8:], **kwargs)

    monkeypatch.setattr(runs, "bench", bench_cancelling_when_threads_2_loads)
    done = job_runner.JobRunner(settings).run_one()
    assert done is not None and done.state == "cancelled"
    with session_scope(settings) as session:
        results = session.exec(select(Result).where(Result.run_id == done.run_id)).all()
        kept = [r for r in results if r.ok]
        assert [(r.device_name, r.threads, r.n) for r in kept] == [("pi-a", 1, 2)]
        assert unpack_floats(kept[0].latencies) and kept[0].telemetry_status
        (stopped,) = [r for r in results if not r.ok]
        assert stopped.threads is None and "was cancelled" in (stopped.error or "")
        assert "results of threads 1, finished before this, are kept" in (stopped.error or "")
        # The run is interrupted, says who stopped it, and gets no verdict.
        run_row = session.get(Run, done.run_id)
        assert run_row is not None and run_row.state == "interrupted"
        public = runs.run_public(run_row)
        assert public["state_reason"].startswith(f"job {job.id}: cancelled by tester: bench "
                                                 "stopped on pi-a; 0 of 1 device finished")
        assert public["job_id"] == job.id
        with pytest.raises(verdicts.UnfinishedRunError, match=r"was interrupted \(job .*"
                           r"cancelled by tester.*gets no verdict"):
            verdicts.verdicts_for_run(session, run_row.id, overrides={"window_s": 1.0,
                                                                      "hop_s": 1.0})
    assert done.error is not None and done.error.startswith("cancelled by tester: bench")


def test_cancel_a_running_push_between_devices(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_fleet(tmp_path)
    job = queue.submit(settings, "push", {"bundle": "fc", "forks": 1}, "all", actor="tester")
    real_push = deploy.push

    class CancelAfterFirstDevice:
        def __init__(self, inner: deploy.PushProgress) -> None:
            self.inner = inner

        def start(self, device: str, total: int) -> None:
            self.inner.start(device, total)

        def advance(self, device: str, n: int) -> None:
            self.inner.advance(device, n)

        def state(self, device: str, state: str) -> None:
            if state == "active":
                queue.cancel(settings, job.id, actor="tester")  # type: ignore[arg-type]
            self.inner.state(device, state)

    def push(settings_: Settings, bundle: Any, devices: Any, forks: int, timeout: Any,
             progress: deploy.PushProgress, **kwargs: Any) -> Any:
        return real_push(settings_, bundle, devices, forks, timeout,
                         CancelAfterFirstDevice(progress), **kwargs)

    monkeypatch.setattr(deploy, "push", push)
    done = job_runner.JobRunner(settings).run_one()
    assert done is not None and done.state == "cancelled"
    states = {d["device"]: d["state"] for d in done.result["devices"]}
    assert states == {"pi-a": "active", "pi-b": "failed"}
    with session_scope(settings) as session:
        rows = {d.device_name: d for d in session.exec(select(Deployment)).all()}
    assert rows["pi-a"].state == "active" and rows["pi-b"].bytes_sent == 0
    assert "was cancelled" in (rows["pi-b"].error or "")


# -- restart, claiming, threads ---------------------------------------------------------------


def test_restart_marks_only_jobs_of_dead_processes_interrupted(tmp_path: Path) -> None:
    settings = make_fleet(tmp_path, install=False)
    host = this_host()
    with session_scope(settings) as session:
        run_row = Run(bundle_name="fc", bundle_version="1", bundle_digest="d", targets="all",
                      created_by="x")
        session.add(run_row)
        session.flush()
        rows = {
            "dead": Job(kind="bench", state="running", worker=f"{host}:999999",
                        result={"run_ids": [run_row.id]}, run_id=run_row.id,
                        progress={"devices": {"pi-a": {"phase": "timed"}}}),
            "old-server-same-pid": Job(kind="push", state="running",
                                       worker=f"{host}:{os.getpid()}:deadbeef"),
            "live-other": Job(kind="push", state="running", worker=f"{host}:{os.getppid()}"),
            "live-cli-here": Job(kind="push", state="running", origin="cli",
                                 worker=f"{host}:{os.getpid()}"),
            "other-host": Job(kind="push", state="running", worker="elsewhere:999999"),
            "queued": Job(kind="telemetry", targets="all"),
        }
        session.add_all(rows.values())
        session.flush()
        ids = {key: job.id for key, job in rows.items()}
    runner = job_runner.JobRunner(settings, workers=0, telemetry_interval_s=None)
    runner.start()
    runner.stop()
    with session_scope(settings) as session:
        after = {key: session.get(Job, job_id) for key, job_id in ids.items()}
        run_after = session.get(Run, run_row.id)
        assert run_after is not None and run_after.state == "interrupted"
        assert run_after.finished_at is not None
    for key in ("dead", "old-server-same-pid"):
        job = after[key]
        assert job is not None and job.state == "interrupted" and job.finished_at is not None
        assert job.error is not None and job.error.startswith("the server running it (pid ")
        assert "stopped before it finished" in job.error and "are kept" in job.error
    assert after["dead"].result == {"run_ids": [run_row.id]}  # type: ignore[union-attr]
    assert after["dead"].run_id == run_row.id  # type: ignore[union-attr]
    assert after["dead"].progress["devices"]["pi-a"]["phase"] == "timed"  # type: ignore
    for key in ("live-other", "live-cli-here", "other-host"):
        assert after[key].state == "running" and after[key].finished_at is None  # type: ignore
    assert after["queued"].state == "queued"  # type: ignore[union-attr]


def test_two_runners_race_for_one_job_and_exactly_one_runs_it(tmp_path: Path) -> None:
    settings = make_fleet(tmp_path)
    job = queue.submit(settings, "telemetry", {}, "all", actor="tester")
    runners = [job_runner.JobRunner(settings, telemetry_interval_s=None) for _ in range(2)]
    barrier = threading.Barrier(2)
    got: list[Job | None] = [None, None]

    def race(index: int) -> None:
        barrier.wait()
        got[index] = runners[index].run_one()

    threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    winners = [g for g in got if g is not None]
    assert len(winners) == 1 and winners[0].id == job.id and winners[0].state == "succeeded"
    assert winners[0].worker in {r.worker_id for r in runners}
    with session_scope(settings) as session:
        assert len(session.exec(select(TelemetrySnapshot)).all()) == 2  # ran once, not twice


def wait_for(settings: Settings, job_id: int, states: tuple[str, ...],
             timeout_s: float = 20.0) -> Job:
    """Poll the job's row until it reaches one of ``states`` (bounded by a deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with session_scope(settings) as session:
            job = queue.get_job(session, job_id)
        if job.state in states or time.monotonic() > deadline:
            return job
        time.sleep(0.02)


def test_runner_threads_pick_up_a_submitted_job_at_once(tmp_path: Path) -> None:
    settings = make_fleet(tmp_path)
    # A long poll: only submit()'s wake-up can make this quick.
    runner = job_runner.JobRunner(settings, workers=2, poll_s=30.0, telemetry_interval_s=None)
    runner.start()
    try:
        job = queue.submit(settings, "telemetry", {}, "all", actor="tester")
        finished = wait_for(settings, job.id, queue.TERMINAL)  # type: ignore[arg-type]
    finally:
        runner.stop(timeout=10)
    assert finished.state == "succeeded", finished.error
    assert finished.worker == runner.worker_id
    assert runner._threads == []  # all stopped


def test_telemetry_poller(tmp_path: Path) -> None:
    empty = Settings(home=tmp_path / "empty", database_url=None)
    assert job_runner.JobRunner(empty, telemetry_interval_s=60).tick() == []  # no devices: quiet
    settings = make_fleet(tmp_path, install=False)
    runner = job_runner.JobRunner(settings, telemetry_interval_s=60)
    (polled,) = runner.tick()
    assert (polled.kind, polled.targets, polled.created_by) == ("telemetry", "all", queue.POLLER)
    assert runner.tick() == []  # not due yet
    again = job_runner.JobRunner(settings, telemetry_interval_s=60)
    assert again.tick() == []  # one already queued


def test_list_and_filter_jobs(tmp_path: Path) -> None:
    settings = make_fleet(tmp_path, install=False)
    first = queue.submit(settings, "telemetry", {}, "all", actor="tester")
    second = queue.submit(settings, "push", {"bundle": "fc"}, "pi-a", actor="tester")
    queue.cancel(settings, first.id, actor="tester")  # type: ignore[arg-type]
    with session_scope(settings) as session:
        assert [j.id for j in queue.list_jobs(session)] == [second.id, first.id]
        assert [j.id for j in queue.list_jobs(session, state="cancelled")] == [first.id]
        assert [j.id for j in queue.list_jobs(session, kind="push")] == [second.id]
        with pytest.raises(EdgeFleetError, match="job state 'done'"):
            queue.list_jobs(session, state="done")
    assert set(queue.job_public(second)) == {
        "id", "kind", "state", "params", "targets", "origin", "created_by", "progress",
        "result", "error", "run_id", "schedule_id", "cancel_requested", "created_at",
        "started_at", "finished_at", "worker"}


# -- CLI-started work -------------------------------------------------------------------------


def test_cli_push_and_bench_are_recorded_as_cli_jobs(cli: Cli, home: Path,
                                                     tmp_path: Path) -> None:
    settings = make_fleet(tmp_path, settings=Settings())
    assert settings.home == home
    pushed = cli("push", "fc", "all", "--json").json
    assert [d["state"] for d in pushed] == ["active", "active"]
    benched = cli("bench", "fc", "pi-a", "--threads", "1", "--warmup", "0", "--runs", "2",
                  "--json").json
    bench_job, push_job = all_jobs(settings)
    assert (push_job.kind, push_job.origin, push_job.state) == ("push", "cli", "succeeded")
    assert push_job.worker == f"{this_host()}:{os.getpid()}"
    assert push_job.params["bundle"] == "fc@1" and push_job.targets == "all"
    assert [d["bytes_sent"] for d in push_job.result["devices"]] == \
        [d["bytes_sent"] for d in pushed]
    assert push_job.progress["devices"]["pi-b"]["state"] == "active"
    assert (bench_job.kind, bench_job.origin, bench_job.state) == ("bench", "cli", "succeeded")
    assert bench_job.run_id == benched["id"]
    # A CLI job is validated like a queued one: nothing is recorded for a bad request.
    with pytest.raises(EdgeFleetError, match="bundle"), \
            job_tracker.track(settings, "push", {}, "all"):
        pass
    assert len(all_jobs(settings)) == 2


def test_cli_push_failure_marks_the_job_failed(cli: Cli, home: Path, tmp_path: Path) -> None:
    settings = make_fleet(tmp_path, names=("pi-a",), broken=("pi-broken",),
                          settings=Settings())
    cli("push", "fc", "all", expect=1)
    (job,) = all_jobs(settings)
    assert (job.origin, job.state) == ("cli", "failed") and "pi-broken" in (job.error or "")
