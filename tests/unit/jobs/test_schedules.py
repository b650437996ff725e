"""Schedules: cron validation and next-fire times (UTC), firing once per due time, one-offs,
deletion — real SQLite through migrations; the end-to-end case runs a real telemetry job on
local simulated devices."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError, NotFoundError
from orchestrator.core.models import Bundle, Job, Schedule
from orchestrator.jobs import runner as job_runner
from orchestrator.jobs import schedules
from tests.unit.jobs.test_jobs import make_fleet

T0 = datetime(2026, 11, 23, 1, 30, tzinfo=UTC)  # a Monday


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_fleet(tmp_path, install=False)


def stored(settings: Settings, schedule_id: int) -> Schedule:
    with session_scope(settings) as session:
        return schedules.get_schedule(session, schedule_id)


def schedule_jobs(settings: Settings) -> list[Job]:
    with session_scope(settings) as session:
        return list(session.exec(select(Job).where(Job.origin == "schedule")).all())


@pytest.mark.parametrize(("cron", "message"), [
    ("61 * * * *", "cron expression '61 * * * *' is not valid"),
    ("every day", "cron expression 'every day' has 2 field(s)"),
    ("0 3 * * * *", "has 6 field(s); use five fields"),
    ("0 0 30 2 *", "cron expression '0 0 30 2 *' is not valid"),  # never fires
])
def test_bad_cron_is_refused_naming_the_expression(settings: Settings, cron: str,
                                                   message: str) -> None:
    with pytest.raises(EdgeFleetError) as info:
        schedules.create(settings, "telemetry", {}, "all", cron=cron, actor="tester")
    assert message in str(info.value)
    with session_scope(settings) as session:
        assert schedules.list_schedules(session) == []


@pytest.mark.parametrize(("text", "expected"), [
    ("2030-01-01T03:00:00Z", datetime(2030, 1, 1, 3, tzinfo=UTC)),
    ("2030-01-01 03:00", datetime(2030, 1, 1, 3, tzinfo=UTC)),  # no offset: UTC
    ("2030-01-01T05:00:00+02:00", datetime(2030, 1, 1, 3, tzinfo=UTC)),
])
def test_parse_time_reads_iso_times_as_utc(text: str, expected: datetime) -> None:
    parsed = schedules.parse_time(text)
    assert parsed == expected and parsed.tzinfo == UTC


@pytest.mark.parametrize(("text", "message"), [
    ("0", "time '0': use YYYY-MM-DD HH:MM (UTC)"),
    ("tomorrow", "time 'tomorrow': use YYYY-MM-DD HH:MM (UTC)"),
    # valid ISO, but in UTC before year 1 / after 9999: an OverflowError (a 500) before
    ("0001-01-01T00:00:00+01:00", "is out of range: in UTC it falls before year 1 or after"),
    ("9999-12-31T23:59:59-01:00", "is out of range"),
])
def test_parse_time_refuses_what_it_cannot_read_naming_it(text: str, message: str) -> None:
    with pytest.raises(EdgeFleetError, match=re.escape(message)):
        schedules.parse_time(text)


def test_exactly_one_of_cron_or_run_at(settings: Settings) -> None:
    for kwargs in ({}, {"cron": "* * * * *", "run_at": T0}):
        with pytest.raises(EdgeFleetError, match="exactly one of cron"):
            schedules.create(settings, "telemetry", {}, "all", actor="tester", **kwargs)  # type: ignore[arg-type]


def test_params_are_checked_at_creation(settings: Settings) -> None:
    with pytest.raises(EdgeFleetError, match="no bundle nope"):
        schedules.create(settings, "push", {"bundle": "nope"}, "all", cron="0 3 * * *",
                         actor="tester")


def test_next_fire_is_utc_and_strictly_after() -> None:
    assert schedules.next_fire("0 3 * * 1-5", T0) == T0.replace(hour=3, minute=0)
    assert schedules.next_fire("0 3 * * 1-5", T0.replace(hour=3, minute=0)) == \
        datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
    # Another zone's time is converted, not read as UTC.
    cet = T0.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert schedules.next_fire("*/15 * * * *", cet) == T0 + timedelta(minutes=15)


def test_cron_schedule_fires_once_per_due_time_and_advances(settings: Settings) -> None:
    created = schedules.create(settings, "push", {"bundle": "fc"}, "pi-a", cron="0 3 * * *",
                               actor="alice")
    now = datetime.now(UTC)
    first = created.next_run_at
    assert first is not None and now < first <= now + timedelta(days=1)
    assert (first.hour, first.minute, first.second) == (3, 0, 0)
    public = schedules.schedule_public(created)
    assert public["next_run_at"] == first.isoformat() and public["run_at"] is None
    assert public["params"]["bundle"] == "fc" and public["enabled"] is True

    assert schedules.due(settings, first - timedelta(seconds=1)) == []
    # Three days late (the server was down): one job, not three, and the next time is after now.
    late = first + timedelta(days=3, minutes=5)
    (job,) = schedules.due(settings, late)
    assert (job.kind, job.state, job.origin, job.schedule_id, job.created_by, job.targets) == \
        ("push", "queued", "schedule", created.id, "alice", "pi-a")
    after = stored(settings, created.id)  # type: ignore[arg-type]
    assert after.enabled and after.last_job_id == job.id
    assert after.next_run_at == (first + timedelta(days=4))
    assert schedules.due(settings, late) == []  # fired already
    assert len(schedule_jobs(settings)) == 1


def test_a_firing_whose_job_the_database_failed_to_store_fires_at_the_next_tick(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim (next time moved on) shares the job's transaction: when storing the job fails
    for the database's sake (busy, gone), the claim rolls back instead of the period lost."""
    from sqlalchemy.exc import OperationalError

    from orchestrator.jobs import queue

    created = schedules.create(settings, "push", {"bundle": "fc"}, "pi-a", cron="0 3 * * *",
                               actor="alice")
    first = created.next_run_at
    assert first is not None
    real_add = queue.add_job

    def locked(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OperationalError("INSERT INTO jobs", {}, Exception("database is locked"))

    monkeypatch.setattr(queue, "add_job", locked)
    assert schedules.due(settings, first + timedelta(minutes=1)) == []
    assert stored(settings, created.id).next_run_at == first  # type: ignore[arg-type]
    monkeypatch.setattr(queue, "add_job", real_add)
    (job,) = schedules.due(settings, first + timedelta(minutes=2))  # the next tick
    assert job.schedule_id == created.id and len(schedule_jobs(settings)) == 1


def test_one_off_fires_once_then_disables(settings: Settings) -> None:
    naive = datetime(2026, 12, 1, 12, 0)  # naive means UTC
    created = schedules.create(settings, "telemetry", {}, "", run_at=naive, actor="tester")
    assert created.next_run_at == naive.replace(tzinfo=UTC)
    assert created.targets == "all"
    assert schedules.due(settings, naive.replace(tzinfo=UTC) - timedelta(minutes=1)) == []
    (job,) = schedules.due(settings, naive.replace(tzinfo=UTC) + timedelta(minutes=1))
    assert job.schedule_id == created.id and job.kind == "telemetry"
    after = stored(settings, created.id)  # type: ignore[arg-type]
    assert not after.enabled and after.next_run_at is None and after.last_job_id == job.id
    assert schedules.due(settings, naive.replace(tzinfo=UTC) + timedelta(days=1)) == []


def test_a_schedule_that_can_no_longer_start_records_a_failed_job(settings: Settings) -> None:
    created = schedules.create(settings, "push", {"bundle": "fc@1"}, "all", run_at=T0,
                               actor="tester")
    with session_scope(settings) as session:  # the bundle goes away before the schedule fires
        session.delete(session.exec(select(Bundle)).one())
    (job,) = schedules.due(settings, T0)
    assert job.state == "failed" and job.finished_at is not None
    assert job.error == f"schedule {created.id} could not start: no bundle fc@1; " \
        "build it with `edgefleet bundle build`"
    assert stored(settings, created.id).last_job_id == job.id  # type: ignore[arg-type]


def test_delete(settings: Settings) -> None:
    keep = schedules.create(settings, "telemetry", {}, "all", cron="*/5 * * * *", actor="tester")
    now = datetime.now(UTC)
    gone = schedules.create(settings, "telemetry", {}, "all", run_at=now, actor="tester")
    (job,) = schedules.due(settings, now)  # the cron one is not due yet
    schedules.delete(settings, gone.id, actor="tester")  # type: ignore[arg-type]
    with session_scope(settings) as session:
        assert [s.id for s in schedules.list_schedules(session)] == [keep.id]
        assert session.get(Job, job.id) is not None  # its jobs stay
    with pytest.raises(NotFoundError, match=f"no schedule {gone.id}"):
        schedules.delete(settings, gone.id, actor="tester")  # type: ignore[arg-type]


def test_runner_tick_fires_a_due_schedule_and_runs_it(tmp_path: Path) -> None:
    settings = make_fleet(tmp_path)
    created = schedules.create(settings, "telemetry", {}, "all",
                               run_at=datetime.now(UTC) - timedelta(seconds=1), actor="tester")
    runner = job_runner.JobRunner(settings, telemetry_interval_s=None)
    (queued,) = runner.tick()
    done = runner.run_one()
    assert done is not None and done.id == queued.id and done.schedule_id == created.id
    assert done.state == "succeeded", done.error
    assert runner.tick() == []


def test_a_schedule_that_breaks_unexpectedly_is_refused_and_starves_no_other(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A firing that raises something no check foresaw (a bug, a stored manifest that no
    longer parses) is recorded as a failed job like a refused one and the schedule moves on;
    re-raised, it rolled its claim back and failed the same way at every tick, ahead of
    every schedule due after it."""
    from orchestrator.jobs import execute

    broken = schedules.create(settings, "push", {"bundle": "fc"}, "pi-a", run_at=T0,
                              actor="alice")
    fine = schedules.create(settings, "telemetry", {}, "all", run_at=T0 + timedelta(minutes=1),
                            actor="alice")
    checked = execute.validate_params

    def breaks_on_push(session, kind, params, targets):  # type: ignore[no-untyped-def]
        if kind == "push":
            raise ValueError("manifest.json: Expecting value: line 1 column 1")
        return checked(session, kind, params, targets)

    monkeypatch.setattr(execute, "validate_params", breaks_on_push)
    failed, fired = schedules.due(settings, T0 + timedelta(minutes=2))
    assert (failed.schedule_id, failed.state) == (broken.id, "failed")
    assert failed.error == f"schedule {broken.id} could not start: ValueError: " \
        "manifest.json: Expecting value: line 1 column 1"
    assert (fired.schedule_id, fired.state) == (fine.id, "queued")
    assert schedules.due(settings, T0 + timedelta(minutes=3)) == []  # each fired once
