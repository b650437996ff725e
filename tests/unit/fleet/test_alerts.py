"""Webhook alerts against a real HTTP receiver (tests/webhook_receiver.py: http.server on
loopback): signatures a receiver can verify, retries with backoff, a hanging receiver that
slows nothing, dedupe, and no secret anywhere but in the HMAC.

The four event kinds firing on real transitions of real sshd hosts are in
tests/fleet/test_alerts_e2e.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter
from sqlmodel import select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Alert, Device
from orchestrator.core.utc import utcnow
from orchestrator.fleet import alerts
from orchestrator.jobs import queue
from orchestrator.notify import webhooks, wire
from tests.conftest import Cli
from tests.webhook_receiver import Receiver
from web.app import create_app
from web.schemas import AlertPublic

SECRET = "whsec-test-7f3a9c1e5b"
REGRESSION = {"device": "pi5-a", "bundle": "first-crack", "precision": "int8", "threads": 2,
              "run_id": 17, "ratio": 1.23, "ci95": (1.15, 1.31), "p_value": 0.0012,
              "p50_before_ms": 10.1, "p50_after_ms": 12.4, "bundle_version": "4"}


def make_settings(base: Path, url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"webhook_url": url, "webhook_secret": SECRET,
                              "webhook_backoff_s": 0.05, "webhook_timeout_s": 2.0}
    return Settings(home=base / "home", database_url=None, **(values | overrides))


def settle(timeout: float = 20.0) -> None:
    """Every delivery of this process finished (retries included)."""
    assert webhooks.DELIVERER.flush(timeout), "deliveries still pending"


def alert_rows(settings: Settings) -> list[Alert]:
    with session_scope(settings) as session:
        return list(session.exec(select(Alert).order_by(Alert.id)).all())


def readme_verify(secret: str, headers: Any, body: bytes, now: float) -> bool:
    """The receiver's check exactly as the README writes it (stdlib only, no EdgeFleet)."""
    timestamp = headers["X-EdgeFleet-Timestamp"]
    if abs(now - int(timestamp)) > 300:
        return False
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body,
                                    hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["X-EdgeFleet-Signature"])


def test_a_regression_is_posted_signed_and_once(tmp_path: Path, receiver: Receiver) -> None:
    settings = make_settings(tmp_path, receiver.url)
    alert_id = alerts.notify_regression(settings, **REGRESSION)
    assert alert_id is not None
    (got,) = receiver.wait_for(1)
    settle()
    assert got.path == "/hook"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-EdgeFleet-Event"] == "regression"
    assert got.headers["X-EdgeFleet-Delivery"] == str(alert_id)
    payload = json.loads(got.body)
    assert payload["id"] == alert_id and payload["event"] == "regression"
    assert payload["data"]["series"] == {"device": "pi5-a", "bundle": "first-crack",
                                         "precision": "int8", "threads": 2}
    assert payload["data"]["ratio"] == 1.23 and payload["data"]["ci95"] == [1.15, 1.31]
    assert payload["data"]["run_id"] == 17 and payload["data"]["p_value"] == 0.0012
    assert "1.23x slower from run 17" in payload["summary"]

    # The signature verifies with the README's recipe and with the helper; nothing else does.
    ts, sig = got.headers["X-EdgeFleet-Timestamp"], got.headers["X-EdgeFleet-Signature"]
    assert abs(int(ts) - time.time()) < 60
    assert readme_verify(SECRET, got.headers, got.body, time.time())
    assert wire.verify_signature(SECRET, got.body, ts, sig)
    assert not wire.verify_signature("another-secret", got.body, ts, sig)
    assert not wire.verify_signature(SECRET, got.body.replace(b"1.23", b"1.03"), ts, sig)
    assert not wire.verify_signature(SECRET, got.body, str(int(ts) + 1), sig)
    # A captured request replayed later is refused by its timestamp.
    assert not wire.verify_signature(SECRET, got.body, ts, sig, now=int(ts) + 301)
    assert not readme_verify(SECRET, got.headers, got.body, int(ts) + 301)

    (row,) = alert_rows(settings)
    assert (row.state, row.attempts, row.last_error) == ("delivered", 1, None)
    assert row.delivered_at is not None and row.payload == payload

    # The detector runs again and finds the same change point: no second alert. A change
    # that made the series faster is no regression.
    assert alerts.notify_regression(settings, **REGRESSION) is None
    assert alerts.notify_regression(settings, **(REGRESSION | {"ratio": 0.8,
                                                               "run_id": 18})) is None
    other = alerts.notify_regression(settings, **(REGRESSION | {"threads": 4}))
    assert other is not None and other != alert_id
    receiver.wait_for(2)
    settle()
    assert len(receiver.requests) == 2 and len(alert_rows(settings)) == 2


def test_retries_on_500_then_succeeds_with_backoff(tmp_path: Path, receiver: Receiver) -> None:
    settings = make_settings(tmp_path, receiver.url)
    receiver.statuses = [500, 503]
    alert_id = alerts.notify_regression(settings, **REGRESSION)
    first, second, third = receiver.wait_for(3)
    settle()
    (row,) = alert_rows(settings)
    assert (row.id, row.state, row.attempts) == (alert_id, "delivered", 3)
    assert row.last_error == f"attempt 2: 127.0.0.1:{receiver.port} answered HTTP 503"
    # Backoff: 0.05 s, then 0.1 s; each attempt is signed afresh over the same body.
    assert second.at - first.at >= 0.05 and third.at - second.at >= 0.1
    assert first.body == second.body == third.body
    assert [r.headers["X-EdgeFleet-Attempt"] for r in (first, second, third)] == ["1", "2", "3"]
    for request in (first, second, third):
        assert readme_verify(SECRET, request.headers, request.body, time.time())
    assert len(receiver.requests) == 3


def test_gives_up_after_the_attempts_and_at_once_on_a_4xx(tmp_path: Path,
                                                           receiver: Receiver) -> None:
    settings = make_settings(tmp_path, receiver.url, webhook_attempts=3)
    receiver.statuses = [500, 500, 500]
    alerts.notify_regression(settings, **REGRESSION)
    receiver.wait_for(3)
    settle()
    (row,) = alert_rows(settings)
    assert (row.state, row.attempts) == ("failed", 3)
    assert row.last_error == f"attempt 3: 127.0.0.1:{receiver.port} answered HTTP 500"

    receiver.statuses = [401]  # a receiver refusing the signature will not change its mind
    alerts.notify_regression(settings, **(REGRESSION | {"threads": 8}))
    receiver.wait_for(4)
    settle()
    refused = alert_rows(settings)[1]
    assert (refused.state, refused.attempts) == ("failed", 1)
    assert "HTTP 401" in (refused.last_error or "")
    assert len(receiver.requests) == 4


def test_an_odd_retry_after_is_ignored_and_the_attempts_still_end(tmp_path: Path,
                                                                   receiver: Receiver) -> None:
    """"²" passes str.isdigit: its float() failed outside any handler, the attempt was never
    recorded and the alert was retried past webhook_attempts, for ever."""
    settings = make_settings(tmp_path, receiver.url, webhook_attempts=2)
    receiver.statuses, receiver.retry_after = [503, 503], "\u00b2"
    alerts.notify_regression(settings, **REGRESSION)
    receiver.wait_for(2)
    settle()
    (row,) = alert_rows(settings)
    assert (row.state, row.attempts) == ("failed", 2), row
    assert row.last_error == f"attempt 2: 127.0.0.1:{receiver.port} answered HTTP 503"
    assert [wire.retry_after_s(t) for t in ("7", " 12 ", "\u00b2", "1e3", "9" * 10, None)] == [
        7.0, 12.0, None, None, None, None]
    assert webhooks.backoff_s(settings, 5000) == webhooks.MAX_BACKOFF_S  # 2 ** 4999: no overflow


def test_an_alert_whose_last_attempt_never_finished_fails_instead_of_trying_again(
        tmp_path: Path, receiver: Receiver) -> None:
    settings = make_settings(tmp_path, receiver.url, webhook_attempts=2, webhook_url=None)
    alert_id = alerts.notify_regression(settings, **REGRESSION)  # off: stored, not sent
    with session_scope(settings) as session:
        row = session.get(Alert, alert_id)
        assert row is not None
        row.state, row.attempts, row.last_error = "pending", 2, None  # killed mid-attempt 2
        session.add(row)
    sending = make_settings(tmp_path, receiver.url, webhook_attempts=2)
    assert webhooks.deliver_once(sending, alert_id) is None
    (row,) = alert_rows(sending)
    assert row.state == "failed" and "gave up after 2 attempts" in (row.last_error or "")
    assert receiver.requests == []


def test_a_receiver_answering_slowly_but_steadily_is_cut_off_at_the_attempt_deadline(
        receiver: Receiver) -> None:
    """Each read finishes well within the timeout, the answer never does: before, one
    attempt could take hours (100 kB at a byte per 10 ms), holding a delivery thread while
    the alert's claim lapsed and another process sent it again."""
    import threading

    receiver.drip_s = 0.01
    results: list[wire.AttemptResult] = []
    attempt = threading.Thread(target=lambda: results.append(
        wire.post(receiver.url, b"{}", {}, timeout_s=0.2)), daemon=True)
    attempt.start()
    attempt.join(60)
    assert not attempt.is_alive(), "the attempt is still reading a dripping answer"
    (result,) = results
    assert not result.ok and result.retry
    assert result.error == f"127.0.0.1:{receiver.port} did not finish answering within 0.6 s"


def test_a_hanging_receiver_slows_no_operation(tmp_path: Path, receiver: Receiver) -> None:
    """The receiver accepts and never answers. The failed job that raised the alert is
    recorded at once; the delivery times out on its own, in the background, and is retried."""
    settings = make_settings(tmp_path, receiver.url, webhook_timeout_s=1.0, webhook_attempts=2)
    receiver.hang = True
    started = time.monotonic()
    job = queue.record_failed(settings, "push", {"bundle": "fc@1"}, "all", "fc@1 was deleted",
                             origin="schedule")
    took = time.monotonic() - started
    receiver.wait_for(1)
    (row,) = alert_rows(settings)
    assert row.kind == "job_failed" and row.state == "pending"  # still being attempted
    # Not a timing goal (bench/ has those): less than one receiver timeout proves it did not
    # wait for the receiver (0.84 s was seen on a 2-core machine at load 20).
    assert took < 1.0, f"raising the alert took {took:.2f} s"
    # The same while a telemetry job's worth of failures is raised: nothing waits.
    started = time.monotonic()
    for n in range(3):
        alerts.notify_regression(settings, **(REGRESSION | {"run_id": 100 + n}))
    assert time.monotonic() - started < 1.0  # three alerts, still less than one timeout
    settle(30)
    rows = alert_rows(settings)
    assert [r.state for r in rows] == ["failed"] * 4
    assert rows[0].payload["data"]["job_id"] == job.id
    assert rows[0].attempts == 2
    assert rows[0].last_error == f"attempt 2: 127.0.0.1:{receiver.port} did not answer within 1 s"


def test_no_secret_in_logs_errors_db_or_api(tmp_path: Path, receiver: Receiver,
                                            caplog: pytest.LogCaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A URL may carry a token (path or query), the secret signs: neither appears in a log
    line, an alert's error, the DB file, the API or the CLI, whatever the failure."""
    caplog.set_level(logging.DEBUG)
    path_token, query_token = "PATHTOKEN8d2f61", "QUERYTOKEN55e0a9"
    url = f"{receiver.url}/{path_token}?key={query_token}"
    base = make_settings(tmp_path, url, webhook_attempts=2)
    assert SECRET not in repr(base) and SECRET not in str(base.model_dump())
    receiver.statuses = [500, 500]
    alerts.notify_regression(base, **REGRESSION)  # fails twice
    for bad in (f"ftp://user:{path_token}@example.invalid/{query_token}",  # not http(s)
                f"http://127.0.0.1:1/{path_token}?key={query_token}",  # nothing listens
                f"http://[::1/{path_token}"):  # urllib cannot parse it
        settings = base.model_copy(update={"webhook_url_job_failed": bad})
        queue.record_failed(settings, "bench", {"bundle": "fc@1"}, "all", "boom",
                           origin="schedule")
    settle()
    rows = alert_rows(base)
    assert [r.state for r in rows] == ["failed"] * 4
    errors = [r.last_error or "" for r in rows]
    assert "answered HTTP 500" in errors[0]
    assert "not http:// or https://" in errors[1]
    assert "could not reach 127.0.0.1:1" in errors[2]
    assert "not valid" in errors[3] or "could not reach" in errors[3]

    monkeypatch.setenv("EDGEFLEET_HOME", str(base.home))
    monkeypatch.setenv("EDGEFLEET_WEBHOOK_URL", url)
    monkeypatch.setenv("EDGEFLEET_WEBHOOK_SECRET", SECRET)
    listed = Cli(base.home)("alerts", "list", "--json").stdout
    tested = Cli(base.home)("alerts", "test", "--json").stdout  # its 500s are spent: 200
    with TestClient(create_app(base, run_jobs=False), base_url="http://localhost") as client:
        api = client.get("/api/alerts")
    assert api.status_code == 200 and len(api.json()) == 4
    db_bytes = b"".join(p.read_bytes() for p in base.home.glob("edgefleet.db*"))
    for text in (caplog.text, "\n".join(errors), listed, tested, api.text,
                 db_bytes.decode(errors="replace")):
        for secret in (SECRET, path_token, query_token):
            assert secret not in text
    assert "127.0.0.1" in caplog.text  # the host is named, so a failure can be traced
    assert json.loads(tested)[0]["ok"] is True  # the receiver answers 200 again


def test_alerts_test_posts_a_signed_test_event(tmp_path: Path, receiver: Receiver,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGEFLEET_WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("EDGEFLEET_WEBHOOK_URL_JOB_FAILED", "off")
    cli = Cli(tmp_path / "home")
    assert "No webhook configured" not in cli("alerts", "test").stdout  # unsigned, but sent
    monkeypatch.setenv("EDGEFLEET_WEBHOOK_SECRET", SECRET)
    (result,) = cli("alerts", "test", "--json").json
    assert result == {"kinds": ["regression", "device_offline", "device_throttled"],
                      "host": f"127.0.0.1:{receiver.port}", "signed": True, "ok": True,
                      "error": None}
    unsigned, signed = receiver.wait_for(2)
    assert "X-EdgeFleet-Signature" not in unsigned.headers
    assert json.loads(signed.body)["event"] == "test"
    assert readme_verify(SECRET, signed.headers, signed.body, time.time())
    assert cli("alerts", "list", "--json").json == []  # a test is not an alert
    receiver.statuses = [500]
    failed = cli("alerts", "test", expect=1).stdout
    assert f"127.0.0.1:{receiver.port} (signed): failed: 127.0.0.1:{receiver.port} answered " \
        "HTTP 500" in failed


def test_per_kind_urls_and_off(tmp_path: Path, receiver: Receiver) -> None:
    settings = make_settings(tmp_path, receiver.url + "/default",
                             webhook_url_job_failed=receiver.url + "/jobs",
                             webhook_url_regression="off")
    assert webhooks.webhook_url(settings, "device_offline") == receiver.url + "/default"
    assert webhooks.webhook_url(settings, "job_failed") == receiver.url + "/jobs"
    assert webhooks.webhook_url(settings, "regression") is None
    alerts.notify_regression(settings, **REGRESSION)  # recorded, not sent
    queue.record_failed(settings, "push", {"bundle": "fc@1"}, "all", "gone", origin="schedule")
    (got,) = receiver.wait_for(1)
    settle()
    assert got.path == "/hook/jobs"
    assert [(r.kind, r.state) for r in alert_rows(settings)] == [("regression", "off"),
                                                                 ("job_failed", "delivered")]
    nowhere = make_settings(tmp_path, None)
    assert all(webhooks.webhook_url(nowhere, k) is None for k in webhooks.KINDS)


def test_a_pending_alert_left_by_a_dead_process_is_swept(tmp_path: Path, receiver: Receiver,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A CLI that exited before its receiver answered leaves the alert pending under its
    claim; once the claim lapses, the server's scheduler (JobRunner.tick -> sweep) sends it."""
    from orchestrator.jobs.runner import JobRunner

    settings = make_settings(tmp_path, receiver.url)
    now = utcnow()
    with session_scope(settings) as session:
        session.add(Alert(kind="job_failed", subject="job:9", dedupe_key="job_failed:9",
                          summary="bench job 9 failed", state="pending", attempts=1,
                          last_error="attempt 1: could not reach", created_at=now,
                          payload={"id": 1, "event": "job_failed", "data": {"job_id": 9}},
                          next_attempt_at=now, claimed_by="elsewhere:1:dead0000",
                          claimed_until=now.replace(year=now.year + 1)))
    monkeypatch.setattr(webhooks, "SWEEP_INTERVAL_S", 0.0)
    JobRunner(settings, telemetry_interval_s=None).tick()
    assert webhooks.sweep(settings) == 0  # still claimed: not ours
    with session_scope(settings) as session:
        session.exec(select(Alert)).one().claimed_until = now
    JobRunner(settings, telemetry_interval_s=None).tick()
    (got,) = receiver.wait_for(1)
    settle()
    assert json.loads(got.body)["data"] == {"job_id": 9}
    assert got.headers["X-EdgeFleet-Attempt"] == "2"
    assert [(r.state, r.attempts) for r in alert_rows(settings)] == [("delivered", 2)]


def test_a_telemetry_job_failing_is_not_a_job_failed_alert(tmp_path: Path,
                                                           receiver: Receiver) -> None:
    settings = make_settings(tmp_path, receiver.url)
    queue.record_failed(settings, "telemetry", {}, "all", "pi-a did not answer",
                       origin="server")
    assert alert_rows(settings) == []


def test_the_api_lists_alerts_in_their_declared_shape(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, None)
    alerts.notify_regression(settings, **REGRESSION)
    queue.record_failed(settings, "push", {"bundle": "fc@1"}, "all", "gone", origin="schedule")
    with TestClient(create_app(settings, run_jobs=False), base_url="http://localhost") as client:
        listed = client.get("/api/alerts").json()
        only = client.get("/api/alerts?kind=job_failed").json()
        bad = client.get("/api/alerts?kind=nope")
    assert [a["kind"] for a in listed] == ["job_failed", "regression"]  # newest first
    assert [a["state"] for a in listed] == ["off", "off"]  # no webhook configured
    assert [a["kind"] for a in only] == ["job_failed"]
    assert bad.status_code == 400 and "choose one of" in bad.json()["detail"]
    for item in TypeAdapter(list[AlertPublic]).validate_python(listed):
        assert not item.model_extra
    with session_scope(settings) as session:
        expected = [alerts.alert_public(a) for a in alerts.list_alerts(session)]
    assert listed == expected


def test_offline_needs_the_threshold_and_alerts_once_per_outage(tmp_path: Path,
                                                                receiver: Receiver) -> None:
    """The rule on its own (the fleet test drives it through real polls of real hosts)."""
    settings = make_settings(tmp_path, receiver.url, alert_offline_minutes=10)
    now = utcnow()
    with session_scope(settings) as session:
        session.add(Device(name="pi-a", address="10.0.0.2", last_seen=now - timedelta(
            minutes=9)))
    assert alerts.check_offline(settings, "pi-a", "refused", now) is None  # 9 min: not yet
    later = now + timedelta(minutes=2)
    first = alerts.check_offline(settings, "pi-a", "refused", later)
    assert first is not None
    assert alerts.check_offline(settings, "pi-a", "refused", later + timedelta(minutes=5)) \
        is None  # the same outage
    with session_scope(settings) as session:  # it answered; then it went away again
        device = session.exec(select(Device)).one()
        device.last_seen = later + timedelta(minutes=6)
    assert alerts.check_offline(settings, "pi-a", None, later + timedelta(minutes=30)) \
        not in (None, first)
    receiver.wait_for(2)
    settle()
    summaries = [r.summary for r in alert_rows(settings)]
    assert summaries[0].startswith("pi-a has not answered for 11 min (last seen ")


# A command that raises an alert and exits, as the CLI does (the same atexit path as
# `edgefleet push` ending with a failed job).
RAISE_AND_EXIT = """
from orchestrator.jobs import queue
from orchestrator.core.config import get_settings
queue.record_failed(get_settings(), "push", {"bundle": "fc@1"}, "all", "gone", origin="cli")
"""
REPO = Path(__file__).resolve().parents[3]


def raise_and_exit(home: Path, url: str, **env: str) -> tuple[float, str]:
    import os
    import subprocess
    import sys

    environ = dict(os.environ, EDGEFLEET_HOME=str(home), EDGEFLEET_WEBHOOK_URL=url,
                   EDGEFLEET_WEBHOOK_SECRET=SECRET, **env)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", RAISE_AND_EXIT], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=60, check=True)
    return time.monotonic() - started, done.stderr


def test_a_command_delivers_before_it_exits(tmp_path: Path, receiver: Receiver) -> None:
    home = tmp_path / "home"
    raise_and_exit(home, receiver.url)
    assert len(receiver.requests) == 1  # already there when the process is gone
    (row,) = alert_rows(Settings(home=home, database_url=None))
    assert (row.kind, row.state) == ("job_failed", "delivered")


def test_a_command_does_not_wait_long_for_a_hanging_receiver(tmp_path: Path,
                                                             receiver: Receiver) -> None:
    """It waits ``webhook_exit_wait_s`` at most, not the receiver's timeout, then leaves the
    alert to a server: its claim released, the next sweep sends it."""
    home = tmp_path / "home"
    receiver.hang = True
    took, stderr = raise_and_exit(home, receiver.url, EDGEFLEET_WEBHOOK_TIMEOUT_S="30",
                                  EDGEFLEET_WEBHOOK_EXIT_WAIT_S="1")
    assert took < 15, took  # blocking on the receiver would take 30 s
    assert "1 alert(s) not delivered yet" in stderr
    settings = make_settings(tmp_path, receiver.url)
    (row,) = alert_rows(settings)
    assert (row.state, row.attempts) == ("pending", 1)  # the abandoned attempt counts
    receiver.hang = False
    assert webhooks.sweep(settings, min_interval_s=0) == 1  # no need to wait for the claim
    first, second = receiver.wait_for(2)
    settle()
    assert [(r.state, r.attempts) for r in alert_rows(settings)] == [("delivered", 2)]
    assert second.headers["X-EdgeFleet-Attempt"] == "2" and first.body == second.body


def test_throttle_rules_on_stored_readings(tmp_path: Path) -> None:
    """The rule on its own (the fleet test drives it through real polls): a first reading
    compares with a clean one, a device without the sensor says nothing, and a condition
    already alerted within the repeat window stays quiet."""
    from orchestrator.core.models import TelemetrySnapshot

    settings = make_settings(tmp_path, None)

    def reading(device: str, bits: int | None, now: list[str], boot: list[str]) -> None:
        with session_scope(settings) as session:
            session.add(TelemetrySnapshot(device_name=device, throttled_bits=bits,
                                          throttle_flags={"now": now, "since_boot": boot},
                                          temp_c=51.0))

    reading("no-sensor", None, [], [])
    assert alerts.check_throttled(settings, "no-sensor") is None
    assert alerts.check_throttled(settings, "never-polled") is None
    reading("pi-a", 0x50000, [], ["under_voltage", "throttled"])  # at boot, before any poll
    first = alerts.check_throttled(settings, "pi-a")
    assert first is not None
    assert alerts.check_throttled(settings, "pi-a") is None  # the same reading again
    reading("pi-a", 0x50001, ["under_voltage"], ["under_voltage", "throttled"])
    assert alerts.check_throttled(settings, "pi-a") is None  # alerted 0 min ago
    later = utcnow() + timedelta(minutes=61)
    reading("pi-a", 0x50000, [], ["under_voltage", "throttled"])
    reading("pi-a", 0x50001, ["under_voltage"], ["under_voltage", "throttled"])
    again = alerts.check_throttled(settings, "pi-a", now=later)
    assert again is not None
    summaries = [r.summary for r in alert_rows(settings)]
    assert summaries == ["pi-a: under-voltage since boot, throttled since boot "
                         "(get_throttled 0x50000, 51.0 °C)",
                         "pi-a: under-voltage now (get_throttled 0x50001, 51.0 °C)"]
