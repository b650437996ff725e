"""Staged rollouts: the plan (canary, inventory order, batch sizes, the halting rule), the job
params' checks, a rollout run by a server worker on real local devices, and the API's 422s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError
from orchestrator.core.models import AuditEvent, Deployment, Device
from orchestrator.fleet import deploy, rollout
from orchestrator.jobs import queue
from orchestrator.jobs import runner as job_runner
from tests.unit.jobs.test_jobs import all_jobs, make_fleet, run
from web.app import create_app


def device(name: str, line: int | None, groups: tuple[str, ...] = ()) -> Device:
    return Device(name=name, address="127.0.0.1", groups=list(groups),
                  source=None if line is None else f"/inv/fleet.yml:{line}")


FLEET = [device("a", 30), device("b", 10, ("roastery",)), device("c", 20), device("d", None),
         device("e", 40, ("roastery",))]


def shape(batches: list[rollout.Batch]) -> list[tuple[str, list[str]]]:
    return [(b.kind, b.devices) for b in batches]


def test_canary_first_then_batches_in_inventory_order() -> None:
    options = rollout.RolloutOptions(canary="e", batch="2")
    # Inventory order is the file's (b line 10, c 20, a 30); d has no source: last, by name.
    assert shape(rollout.plan(FLEET, options)) == [
        ("canary", ["e"]), ("batch", ["b", "c"]), ("batch", ["a", "d"])]
    assert shape(rollout.plan(FLEET, rollout.RolloutOptions(canary="roastery"))) == [
        ("canary", ["b", "e"]), ("batch", ["c", "a", "d"])]
    assert shape(rollout.plan(FLEET, rollout.RolloutOptions(batch="1"))) == [
        ("batch", [n]) for n in ("b", "c", "a", "e", "d")]


@pytest.mark.parametrize(("batch", "sizes"), [
    ("50%", [2, 2]), ("25%", [1, 1, 1, 1]), ("30%", [2, 2]), ("100%", [4]), ("1%", [1] * 4),
    ("3", [3, 1]), (None, [4])])
def test_batch_share_rounds_up_to_at_least_one(batch: str | None, sizes: list[int]) -> None:
    planned = rollout.plan(FLEET, rollout.RolloutOptions(canary="a", batch=batch))
    assert [len(b.devices) for b in planned[1:]] == sizes


def test_a_batch_halts_when_its_failures_exceed_max_fail() -> None:
    batch = rollout.Batch(1, "batch", ["a", "b", "c", "d"], failed=["a"])
    assert rollout.exceeds(batch, 0) and not rollout.exceeds(batch, 25)
    assert rollout.exceeds(batch, 24.9)
    assert not rollout.exceeds(rollout.Batch(1, "batch", ["a"]), 0)
    # The canary tolerates no failure, whatever --max-fail says.
    assert rollout.exceeds(rollout.Batch(0, "canary", ["a", "b"], failed=["a"]), 100)


@pytest.mark.parametrize(("value", "expected"), [
    ({}, rollout.RolloutOptions()),
    ({"batch": 2, "max_fail": "10%"}, rollout.RolloutOptions(batch="2", max_fail=10.0)),
    ({"batch": " 50 % ", "max_fail": 0}, rollout.RolloutOptions(batch="50%")),
    ({"canary": " pi-1 ", "health_bench": True, "rollback_on_fail": True},
     rollout.RolloutOptions(canary="pi-1", health_bench=True, rollback_on_fail=True)),
])
def test_options_are_normalized(value: dict[str, Any],
                                expected: rollout.RolloutOptions) -> None:
    assert rollout.check_options(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    ({"batch": 0}, "rollout 'batch' must be a device count such as 2 or a share such as 50%"),
    ({"batch": "0%"}, "(got '0%')"),
    ({"batch": "150%"}, "(got '150%')"),
    ({"batch": 1.5}, "(got 1.5)"),
    ({"batch": "two"}, "(got 'two')"),
    ({"max_fail": 101}, "'max_fail' must be a percentage from 0 to 100"),
    ({"max_fail": "-1"}, "'max_fail' must be a percentage"),
    ({"max_fail": True}, "'max_fail' must be a percentage"),
    ({"health_bench": "yes"}, "'health_bench' must be true or false"),
    ({"canary": ""}, "'canary' must be a target pattern"),
    ({"serial": 2}, "unknown rollout option(s) 'serial'"),
    ("canary", "must be an object"),
])
def test_bad_options_name_the_problem(value: Any, message: str) -> None:
    with pytest.raises(EdgeFleetError) as info:
        rollout.check_options(value)
    assert message in str(info.value)


@pytest.fixture(scope="module")
def records_only(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_fleet(tmp_path_factory.mktemp("rollout-records"), install=False)


@pytest.mark.parametrize(("params", "targets", "message"), [
    ({"canary": "pi-zzz"}, "all", "the canary must select devices among the targets"),
    ({"canary": "pi-b"}, "pi-a", "the canary must select devices among the targets"),
    ({"batch": "0"}, "all", "'batch' must be a device count"),
])
def test_bad_rollouts_are_refused_before_anything_is_queued(
        records_only: Settings, params: dict[str, Any], targets: str, message: str) -> None:
    with pytest.raises(EdgeFleetError) as info:
        queue.submit(records_only, "push", {"bundle": "fc", "rollout": params}, targets,
                     actor="tester")
    assert message in str(info.value)
    assert all_jobs(records_only) == []


def test_the_api_answers_a_bad_rollout_with_a_422_naming_it(records_only: Settings) -> None:
    with TestClient(create_app(records_only, run_jobs=False),
                    base_url="http://localhost") as client:
        for rollout_params, message in (({"batch": "0"}, "'batch' must be a device count"),
                                        ({"max_fail": 200}, "'max_fail' must be a percentage"),
                                        ({"canary": "ghost"}, "the canary must select"),
                                        ([1], "must be an object")):
            answer = client.post("/api/jobs", json={
                "kind": "push", "targets": "all",
                "params": {"bundle": "fc", "rollout": rollout_params}})
            assert answer.status_code == 422, answer.text
            assert message in answer.json()["detail"]
        assert client.get("/api/jobs").json() == []
        good = client.post("/api/jobs", json={
            "kind": "push", "targets": "all",
            "params": {"bundle": "fc", "rollout": {"canary": "pi-a", "batch": "50%"}}})
        assert good.status_code == 201, good.text
        assert good.json()["params"]["rollout"] == {
            "canary": "pi-a", "batch": "50%", "max_fail": 0.0, "health_bench": False,
            "rollback_on_fail": False}
        client.post(f"/api/jobs/{good.json()['id']}/cancel")


def test_a_server_rollout_halts_on_a_broken_device_and_leaves_the_rest(tmp_path: Path) -> None:
    settings = make_fleet(tmp_path, names=("pi-a", "pi-c", "pi-d"), broken=("pi-b",))
    job = run(settings, "push", {"bundle": "fc", "rollout": {
        "canary": "pi-a", "batch": 2, "max_fail": 0, "rollback_on_fail": True}})
    assert job.state == "failed"
    assert job.error is not None and job.error.startswith("rollout halted at batch 1 of 3")
    view = job.result["rollout"]
    # Inventory order is the file's: yaml.safe_dump sorted the hosts by name.
    assert [(b["devices"], b["state"]) for b in view["batches"]] == [
        (["pi-a"], "ok"), (["pi-b", "pi-c"], "failed"), (["pi-d"], "not started")]
    assert job.progress["rollout"]["batches"] == view["batches"]
    assert job.progress["devices"]["pi-d"]["state"] == "not started"
    assert sorted(r["device"] for r in view["rolled_back"]) == ["pi-a", "pi-c"]
    with session_scope(settings) as session:
        rows = session.exec(select(Deployment)).all()
        assert "pi-d" not in {r.device_name for r in rows}
        assert sorted((r.device_name, r.operation) for r in rows) == [
            ("pi-a", "push"), ("pi-a", "rollback"), ("pi-b", "push"), ("pi-c", "push"),
            ("pi-c", "rollback")]
        events = session.exec(select(AuditEvent).where(AuditEvent.action == "rollout.halt")
                              ).all()
        assert [(e.actor, e.target) for e in events] == [("tester", f"job:{job.id}")]


def test_a_cancelled_rollout_starts_no_further_batch(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_fleet(tmp_path, names=("pi-a", "pi-b", "pi-c"))
    job = queue.submit(settings, "push", {"bundle": "fc", "rollout": {"batch": "1"}}, "all",
                       actor="tester")
    real_push = deploy.push

    def push(settings_: Settings, bundle: Any, devices: Any, forks: int, timeout: Any,
             progress: deploy.PushProgress, **kwargs: Any) -> Any:
        done = real_push(settings_, bundle, devices, forks, timeout, progress, **kwargs)
        queue.cancel(settings, job.id, actor="tester")  # type: ignore[arg-type]
        return done

    monkeypatch.setattr(deploy, "push", push)
    done = job_runner.JobRunner(settings).run_one()
    assert done is not None and done.state == "cancelled"
    assert done.error is not None and "2 devices not started (pi-b, pi-c)" in done.error
    assert [b["state"] for b in done.result["rollout"]["batches"]] == [
        "ok", "not started", "not started"]
    with session_scope(settings) as session:
        assert [d.device_name for d in session.exec(select(Deployment)).all()] == ["pi-a"]
