"""Alerts from real transitions of real sshd hosts (simulated sensors through EDGEFLEET_SYSFS),
delivered to a real HTTP receiver on loopback: a device newly throttled, a device offline
longer than the threshold, a failed job — each once; the regression hook is called directly
(the change-point detector calls it), as in tests/unit/fleet/test_alerts.py."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from orchestrator.core.config import get_settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Alert
from orchestrator.fleet import alerts
from orchestrator.jobs import queue
from orchestrator.jobs.runner import JobRunner
from orchestrator.notify import webhooks, wire

from ..conftest import Cli
from ..webhook_receiver import Receiver
from .test_push_e2e import model_folder, setup_fleet

SECRET = "e2e-webhook-secret-2b9d"


@pytest.fixture
def alerting(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> Receiver:
    """Webhooks on for the test's home, through the environment as a user sets them."""
    monkeypatch.setenv("EDGEFLEET_WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("EDGEFLEET_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("EDGEFLEET_WEBHOOK_BACKOFF_S", "0.05")
    # Offline as soon as a poll goes unanswered (the rule is "longer than N minutes"; the
    # minutes themselves are tested in tests/unit/fleet/test_alerts.py).
    monkeypatch.setenv("EDGEFLEET_ALERT_OFFLINE_MINUTES", "0")
    return receiver


def delivered(receiver: Receiver, n: int) -> list[dict[str, Any]]:
    """The payloads of the first ``n`` requests, each checked for its signature; and no more
    than ``n`` requests once every delivery of this process is done."""
    requests = receiver.wait_for(n)
    assert webhooks.DELIVERER.flush(20)
    assert len(receiver.requests) == n, [json.loads(r.body)["summary"]
                                         for r in receiver.requests]
    for r in requests:
        assert wire.verify_signature(SECRET, r.body, r.headers["X-EdgeFleet-Timestamp"],
                                         r.headers["X-EdgeFleet-Signature"])
    return [json.loads(r.body) for r in requests]


def test_a_device_newly_throttled_alerts_once(cli: Cli, sshd_factory, tmp_path: Path,
                                              alerting: Receiver) -> None:
    hot, cool = sshd_factory(2)
    setup_fleet(cli, tmp_path, [hot, cool])
    cli("telemetry", "pis")  # clean readings: nothing to say
    assert delivered(alerting, 0) == []

    hot.sim.set_throttled(0x50005)  # under-voltage and throttled, now
    cli("telemetry", "pis")
    (event,) = delivered(alerting, 1)
    assert (event["event"], event["subject"]) == ("device_throttled", hot.name)
    assert event["data"]["new"] == ["under_voltage", "throttled"]
    assert event["data"]["now"] == ["under_voltage", "throttled"]
    assert event["data"]["throttled_hex"] == "0x50005"
    assert event["summary"] == (f"{hot.name}: under-voltage now, throttled now "
                                "(get_throttled 0x50005, 48.0 °C)")

    cli("telemetry", "pis")  # still throttled: the same condition, no news
    hot.sim.set_throttled(0x50000)  # over now (the sticky bits stay)
    cli("telemetry", "pis")
    hot.sim.set_throttled(0x50005)  # back within the repeat window: not again
    cli("telemetry", "pis")
    cool.sim.set_throttled(0x80000)  # soft temperature limit between two polls: news
    cli("telemetry", "pis")
    events = delivered(alerting, 2)
    assert events[1]["subject"] == cool.name
    assert events[1]["data"]["new"] == ["soft_temp_limit"]
    assert events[1]["summary"].startswith(f"{cool.name}: soft temp limit since the last "
                                           "reading (get_throttled 0x80000")
    with session_scope(get_settings()) as session:
        states = session.exec(select(Alert.state)).all()
    assert states == ["delivered", "delivered"]


def test_a_device_offline_alerts_once_per_outage(cli: Cli, sshd_factory, tmp_path: Path,
                                                 alerting: Receiver) -> None:
    up, flaky = sshd_factory(2)
    setup_fleet(cli, tmp_path, [up, flaky])
    cli("telemetry", "pis")
    flaky.stop()
    failed = cli("telemetry", "pis", "--json", expect=1).json
    assert [d["state"] for d in failed] == ["ok", "failed"]
    (event,) = delivered(alerting, 1)
    assert (event["event"], event["subject"]) == ("device_offline", flaky.name)
    assert event["data"]["last_seen"] is not None and event["data"]["error"]
    assert event["summary"].startswith(f"{flaky.name} has not answered for 0 min (last seen ")

    # The server's poller keeps polling: the same outage, no second alert, and the poll job
    # failing (the device does not answer) is not a job_failed alert either.
    runner = JobRunner(get_settings(), telemetry_interval_s=0)
    for _ in range(2):
        (polled,) = runner.tick()
        assert runner.run_one().state == "failed"  # type: ignore[union-attr]
        assert polled.kind == "telemetry"
    cli("telemetry", "pis", expect=1)
    assert len(delivered(alerting, 1)) == 1

    flaky.start()  # back (same port, same host key)...
    cli("telemetry", "pis")
    flaky.stop()  # ...and gone again: a new outage
    cli("telemetry", "pis", expect=1)
    second = delivered(alerting, 2)[1]
    assert second["event"] == "device_offline" and second["id"] != event["id"]
    assert second["data"]["last_seen"] > event["data"]["last_seen"]


def test_a_failed_job_alerts_once_server_or_cli(cli: Cli, sshd_factory, tmp_path: Path,
                                                alerting: Receiver) -> None:
    ok, down = sshd_factory(2)
    setup_fleet(cli, tmp_path, [ok, down])
    cli("bundle", "build", model_folder(tmp_path), "--name", "fc")
    down.stop()
    settings = get_settings()

    # A job run by the server's worker...
    queued = queue.submit(settings, "push", {"bundle": "fc"}, "pis", actor="tester")
    done = JobRunner(settings, telemetry_interval_s=None).run_one()
    assert done is not None and done.id == queued.id and done.state == "failed"
    (event,) = delivered(alerting, 1)
    assert event["event"] == "job_failed" and event["subject"] == f"job:{queued.id}"
    data = event["data"]
    assert (data["job_id"], data["kind"], data["targets"], data["bundle"], data["origin"]) == (
        queued.id, "push", "pis", "fc", "server")
    assert down.name in data["error"] and data["created_by"] == "tester"
    assert event["summary"].startswith(f"push job {queued.id} (fc on pis) failed: push failed "
                                       "on 1 of 2 devices")

    # ... and one the CLI runs itself (its job row ends failed the same way).
    cli("push", "fc", "pis", expect=1)
    events = delivered(alerting, 2)
    assert events[1]["event"] == "job_failed" and events[1]["data"]["origin"] == "cli"
    assert events[1]["data"]["job_id"] != queued.id

    # A job that succeeds says nothing.
    down.start()
    cli("push", "fc", "pis")
    assert len(delivered(alerting, 2)) == 2


def test_a_hanging_receiver_does_not_slow_a_poll(cli: Cli, sshd_factory, tmp_path: Path,
                                                 alerting: Receiver,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The receiver holds every request without answering. A poll that raises an alert takes
    as long as one that raises none; the delivery times out in the background."""
    monkeypatch.setenv("EDGEFLEET_WEBHOOK_TIMEOUT_S", "1")
    monkeypatch.setenv("EDGEFLEET_WEBHOOK_ATTEMPTS", "2")
    (host,) = sshd_factory(1)
    setup_fleet(cli, tmp_path, [host])
    alerting.hang = True
    started = time.monotonic()
    cli("telemetry", "pis")
    quiet = time.monotonic() - started
    host.sim.set_throttled(0x1)
    started = time.monotonic()
    cli("telemetry", "pis")
    loud = time.monotonic() - started
    alerting.wait_for(1)  # the receiver has it, and is not answering
    settings = get_settings()
    with session_scope(settings) as session:
        (alert,) = session.exec(select(Alert)).all()
    assert alert.state == "pending"  # the poll returned before its alert was delivered
    # Waiting for the receiver would add its 2 attempts x 1 s timeout; a margin for ssh noise.
    assert loud < quiet + 1.5, (quiet, loud)
    assert webhooks.DELIVERER.flush(30)
    with session_scope(settings) as session:
        (alert,) = session.exec(select(Alert)).all()
    assert (alert.state, alert.attempts) == ("failed", 2)
    assert alert.last_error == (f"attempt 2: 127.0.0.1:{alerting.port} did not answer "
                                "within 1 s")


def test_the_regression_hook_payload(home: Path, alerting: Receiver) -> None:
    """What the change-point detector's call produces (its shape is the README's)."""
    settings = get_settings()
    alert_id = alerts.notify_regression(
        settings, device="pi1", bundle="fc", precision="fp32", threads=1, run_id=3,
        ratio=1.31, ci95=[1.2, 1.45], p_value=0.003, p50_before_ms=2.0, p50_after_ms=2.62,
        bundle_version="3")
    (event,) = delivered(alerting, 1)
    assert event == {
        "id": alert_id, "event": "regression", "at": event["at"], "source": "edgefleet",
        "subject": "pi1/fc/fp32/1",
        "summary": "pi1, fc@3 fp32, 1 thread: p50 1.31x slower from run 3 (95% CI 1.20-1.45, "
                   "p=0.003)",
        "data": {"series": {"device": "pi1", "bundle": "fc", "precision": "fp32",
                            "threads": 1},
                 "run_id": 3, "bundle_version": "3", "ratio": 1.31, "ci95": [1.2, 1.45],
                 "p_value": 0.003, "p50_before_ms": 2.0, "p50_after_ms": 2.62,
                 "detail": {}}}
