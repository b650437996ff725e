"""A worker host whose clock runs two minutes ahead (a lab machine without NTP), on the real
database of the run (SQLite, or PostgreSQL in the PostgreSQL run).

Its clock is skewed for real where the control plane reads one: Python's ``datetime.now`` in
the lease and heartbeat modules. Before core.dbclock each host's clock decided both "expires
at" and "is it past": the skewed host took a live lease (two processes on one Pi) and marked a
healthy worker's running job interrupted. Now both are judged by the database's clock."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from orchestrator.core import utc
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.hostid import this_host
from orchestrator.core.models import DeviceLease, Job
from orchestrator.fleet import leases
from orchestrator.jobs import liveness, queue
from tests.conftest import Cli

from .procs import REPO

SKEW = timedelta(minutes=2)


class AheadClock(datetime):
    """``datetime`` on a host whose clock is SKEW ahead."""

    @classmethod
    def now(cls, tz=None):  # type: ignore[no-untyped-def, override]
        return datetime.now(tz) + SKEW


@pytest.fixture
def skewed_host(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (leases, liveness):
        monkeypatch.setattr(module, "datetime", AheadClock, raising=False)


def test_a_host_ahead_does_not_take_a_live_lease(home: Path, skewed_host: None) -> None:
    settings = Settings(home=home, lease_ttl_s=45)
    with pytest.MonkeyPatch.context() as on_time:  # the holder's host keeps good time
        for module in (leases, liveness):
            on_time.setattr(module, "datetime", datetime, raising=False)
        holder = f"{this_host()}:{os.getpid()}:aaaa0000"  # alive: this process
        leases.acquire(settings, "pi1", "bench", holder)
    with pytest.raises(leases.DeviceBusy, match="busy with a bench"):
        leases.acquire(settings, "pi1", "push", "lab-b.example:4242:bbbb1111")
    assert leases.release_expired(settings) == []
    assert leases.renew(settings, "pi1", holder)
    with session_scope(settings) as session:
        (lease,) = session.exec(select(DeviceLease)).all()
        assert lease.holder == holder
        # expiry written by the database's clock, a TTL ahead, not the skewed host's
        assert lease.expires_at - datetime.now(UTC) < timedelta(seconds=60)


def test_a_host_ahead_does_not_interrupt_a_healthy_workers_job(
        home: Path, skewed_host: None) -> None:
    settings = Settings(home=home, job_ttl_s=45)
    now = datetime.now(UTC)
    with session_scope(settings) as session:
        job = Job(kind="bench", state="running", targets="pi1", worker="lab-c.example:99:ff00",
                  started_at=now, heartbeat_at=now)
        session.add(job)
        session.flush()
        job_id = job.id
    assert job_id is not None
    assert liveness.sweep(settings) == []
    assert liveness.beat(settings, [job_id]) == 1
    assert liveness.sweep(settings) == []
    with session_scope(settings) as session:
        stored = session.get(Job, job_id)
        assert stored is not None and stored.state == "running"
        assert stored.heartbeat_at is not None
        assert stored.heartbeat_at - datetime.now(UTC) < timedelta(seconds=60)


def test_a_job_queued_on_a_host_ahead_is_dated_by_the_database(
        cli: Cli, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``engine.redefer_lost`` compares with the database's clock: the job's creation."""
    cli("inventory", "sync", REPO / "inventory" / "example.yml")
    monkeypatch.setattr(utc, "datetime", AheadClock)  # the models' default timestamps too
    job = queue.submit(Settings(home=home), "telemetry", {}, "all", actor="tester")
    assert abs(job.created_at - datetime.now(UTC)) < timedelta(seconds=60)


def test_a_host_ahead_does_not_take_a_live_alert_delivery_claim(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another live process is delivering an alert (its claim runs 30 s more, by the
    database's clock); a host two minutes ahead sweeping for undelivered alerts must leave it
    alone (it used to take it: duplicate POSTs, attempts counted twice)."""
    from orchestrator.core.dbclock import db_now
    from orchestrator.core.models import Alert
    from orchestrator.notify import webhooks

    settings = Settings(home=home, webhook_url="http://127.0.0.1:9/never-reached")
    with session_scope(settings) as session:
        now = db_now(session)
        alert = Alert(kind="job_failed", subject="job:1", dedupe_key="job_failed:1",
                      summary="push job 1 failed", payload={}, state="pending",
                      created_at=now, next_attempt_at=now, claimed_by="lab-c.example:99:ff00",
                      claimed_until=now + timedelta(seconds=30))
        session.add(alert)
        session.flush()
        alert_id = alert.id
    assert alert_id is not None
    monkeypatch.setattr(utc, "datetime", AheadClock)  # utcnow() on this host
    assert webhooks.sweep(settings, min_interval_s=0) == 0
    assert webhooks.deliver_once(settings, alert_id) is None  # not ours to try
    with session_scope(settings) as session:
        stored = session.get(Alert, alert_id)
        assert stored is not None and stored.claimed_by == "lab-c.example:99:ff00"
        assert stored.attempts == 0
