"""Schedules: a job to create later — once at ``run_at``, or on a cron expression (UTC).

Why cron through croniter: next-fire times of "every weekday at 03:00" expressions are easy to
get subtly wrong by hand (day-of-month vs day-of-week, month lengths). Expressions are the
classic five fields (minute hour day-of-month month day-of-week) in UTC.

The server's scheduler thread calls ``due()`` every poll. A schedule fires at most once per
pass: one that was due several times while the server was down fires once, then moves to its
next time after now (a missed nightly bench is run once, not replayed N times). Firing is claimed
with a conditional UPDATE on ``next_run_at``, so two server processes never fire it twice, in
the transaction that stores its job, so a process dying between the two loses no period.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from croniter import CroniterError, croniter
from sqlalchemy import update
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col, select

from orchestrator.access import audit
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError, NotFoundError
from orchestrator.core.models import Job, Schedule
from orchestrator.core.utc import as_utc
from orchestrator.fleet import alerts
from orchestrator.jobs import execute, queue

log = logging.getLogger(__name__)


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (``2030-01-01T03:00:00Z``, ``2030-01-01 03:00``) as an aware UTC
    datetime; without an offset it is UTC. EdgeFleetError naming the text for anything else,
    including a time that only its offset pushes before year 1 or past 9999 (OverflowError
    converting it to UTC). One parser for the API and the pages, so both accept the same."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise EdgeFleetError(f"time {text!r}: use YYYY-MM-DD HH:MM (UTC) or an ISO time such "
                             "as 2030-01-01T03:00:00Z") from None
    try:
        return as_utc(moment)
    except OverflowError:
        raise EdgeFleetError(f"time {text!r} is out of range: in UTC it falls before year 1 "
                             "or after 9999") from None


PAST_GRACE = timedelta(minutes=1)  # an "at" time this far back is a typo, not "right now"


def parse_future(text: str, now: datetime | None = None) -> datetime:
    """A one-off time a person typed (the CLI's ``--at``, the page's field): ``parse_time``,
    refused when already past: a mistyped year (2020 for 2030) fired the job the moment a
    worker polled. (The service itself takes any time: the API may ask for "at once".)"""
    moment = parse_time(text)
    now = now or datetime.now(UTC)
    if moment < now - PAST_GRACE:
        raise EdgeFleetError(f"time {moment:%Y-%m-%d %H:%M} UTC has passed (it is "
                             f"{now:%Y-%m-%d %H:%M} UTC now)")
    return moment


def next_fire(cron: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` matching ``cron`` (UTC); EdgeFleetError naming
    the expression if it is not a valid five-field cron expression."""
    expr = " ".join(cron.split())
    hint = ("use five fields: minute hour day-of-month month day-of-week (UTC), "
            "e.g. '0 3 * * 1-5'")
    if len(expr.split()) != 5:
        raise EdgeFleetError(f"cron expression {cron!r} has {len(expr.split())} field(s); {hint}")
    try:
        fire = croniter(expr, after.astimezone(UTC)).get_next(datetime)
    except (CroniterError, ValueError, KeyError) as exc:
        raise EdgeFleetError(f"cron expression {cron!r} is not valid ({exc}); {hint}") from None
    return fire.astimezone(UTC)


def create(settings: Settings, kind: str, params: dict[str, Any] | None, targets: str, *,
           actor: str, cron: str | None = None, run_at: datetime | None = None) -> Schedule:
    """A schedule firing once at ``run_at`` (naive means UTC) or on ``cron``; params are checked
    now, like a job's, so a typo fails here rather than at 3 a.m. Created by ``actor`` (its
    ``created_by``, under which its jobs run) and audited as ``schedule.create`` in the same
    transaction; the jobs it fires later are not audited again."""
    if (cron is None) == (run_at is None):
        raise EdgeFleetError("a schedule needs exactly one of cron (repeating) or run_at (once)")
    now = datetime.now(UTC)
    if cron is not None:
        cron = " ".join(cron.split())
        first = next_fire(cron, now)
    else:
        assert run_at is not None
        run_at = first = as_utc(run_at)  # an input: naive means UTC
    targets = execute.default_targets(kind, targets)
    with session_scope(settings) as session:
        checked = execute.validate_params(session, kind, params, targets)
        schedule = Schedule(kind=kind, params=checked, targets=targets, cron=cron,
                            run_at=run_at, next_run_at=first, created_by=actor)
        session.add(schedule)
        session.flush()
        audit.add_event(session, actor, "schedule.create", f"schedule:{schedule.id}",
                        _described(schedule) | {"params": schedule.params})
    return schedule


def _described(schedule: Schedule) -> dict[str, Any]:
    """What an audit event says about a schedule (the rest of the row is in the log already
    for ``schedule.create``, and gone after ``schedule.delete``)."""
    run_at = schedule.run_at
    return {"kind": schedule.kind, "targets": schedule.targets, "cron": schedule.cron,
            "run_at": run_at.isoformat() if run_at else None}


def list_schedules(session: Session) -> list[Schedule]:
    return list(session.exec(select(Schedule).order_by(col(Schedule.id))).all())


def get_schedule(session: Session, schedule_id: int) -> Schedule:
    schedule = session.get(Schedule, schedule_id)
    if schedule is None:
        raise NotFoundError(f"no schedule {schedule_id}")
    return schedule


def delete(settings: Settings, schedule_id: int, *, actor: str) -> None:
    """Remove a schedule, audited as ``schedule.delete`` by ``actor`` in the same transaction;
    the jobs it created stay (their schedule_id then names a deleted schedule)."""
    with session_scope(settings) as session:
        schedule = get_schedule(session, schedule_id)
        audit.add_event(session, actor, "schedule.delete", f"schedule:{schedule_id}",
                        _described(schedule))
        session.delete(schedule)


def schedule_public(s: Schedule) -> dict[str, Any]:
    iso = (lambda v: v.isoformat() if v else None)  # noqa: E731
    return {
        "id": s.id, "kind": s.kind, "params": s.params, "targets": s.targets, "cron": s.cron,
        "run_at": iso(s.run_at), "next_run_at": iso(s.next_run_at),
        "enabled": s.enabled, "created_by": s.created_by,
        "created_at": iso(s.created_at), "last_job_id": s.last_job_id,
    }


def due(settings: Settings, now: datetime) -> list[Job]:
    """Submit a job (origin "schedule") for every enabled schedule whose time has come; advance
    cron schedules past ``now``, disable one-offs. A job that cannot be submitted (its bundle
    was deleted, its targets match nothing any more) is recorded as a failed job."""
    now = as_utc(now)
    with session_scope(settings) as session:
        ready = session.exec(select(Schedule).where(
            col(Schedule.enabled), col(Schedule.next_run_at) <= now)
            .order_by(col(Schedule.next_run_at))).all()
    created: list[Job] = []
    for schedule in ready:
        following = next_fire(schedule.cron, now) if schedule.cron else None
        alert_id: int | None = None
        refused = False
        try:
            # One transaction: the claim, the job it fires and last_job_id commit together, so
            # a crash (or a failing database) between them loses no period and fires none
            # twice; a rollback puts the schedule back as it was, for the next tick.
            with session_scope(settings) as session:
                claimed = session.execute(
                    update(Schedule).where(col(Schedule.id) == schedule.id,
                                           col(Schedule.enabled),
                                           col(Schedule.next_run_at) == schedule.next_run_at)
                    .values(next_run_at=following, enabled=following is not None)).rowcount
                if not claimed:  # another process fired it, or it was deleted or changed
                    continue
                why: str | None = None
                try:
                    with session.begin_nested():  # after the claim's write: a savepoint
                        job = queue.add_job(session, settings, schedule.kind, schedule.params,
                                            schedule.targets, actor=None, origin="schedule",
                                            created_by=schedule.created_by,
                                            schedule_id=schedule.id)
                except EdgeFleetError as exc:
                    log.warning("schedule %s could not start a job: %s", schedule.id, exc)
                    why = str(exc)
                except DBAPIError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a bug or a broken stored manifest
                    # Refused like a bad parameter: re-raised, it would roll the claim back
                    # and fail the same way at every tick, starving every later schedule.
                    log.exception("schedule %s could not start a job", schedule.id)
                    why = f"{type(exc).__name__}: {exc}"
                if why is not None:
                    refused = True
                    job = queue.add_failed(session, schedule.kind, schedule.params,
                                           schedule.targets,
                                           f"schedule {schedule.id} could not start: {why}",
                                           origin="schedule", created_by=schedule.created_by,
                                           schedule_id=schedule.id)
                    alert_id = queue.add_failure_alert(session, settings, job.id)  # type: ignore[arg-type]
                session.execute(update(Schedule).where(col(Schedule.id) == schedule.id)
                                .values(last_job_id=job.id))
        except DBAPIError:  # the database, not the schedule: the period must not be lost
            log.exception("schedule %s: starting its job failed; it fires at the next tick",
                          schedule.id)
            continue
        queue.wake_runners(settings)
        if alert_id is not None:
            alerts.deliver(settings, alert_id)
        elif refused:
            alerts.job_failed(settings, job.id)  # type: ignore[arg-type]
        created.append(job)
    return created


def schedule_state(s: Schedule) -> str:
    """``active``, ``paused`` (an operator stopped it; it keeps its place) or ``done`` (a
    one-off that fired: disabled by ``due`` with no next time)."""
    if s.enabled:
        return "active"
    return "paused" if s.next_run_at is not None else "done"


def set_paused(settings: Settings, schedule_id: int, paused: bool, *, actor: str) -> Schedule:
    """Pause or resume, audited as ``schedule.pause`` / ``schedule.resume``. A resumed cron
    schedule moves to its next time after now (what it missed while paused is not made up);
    a resumed one-off keeps its time, and fires at the next poll if that time has passed."""
    with session_scope(settings) as session:
        schedule = get_schedule(session, schedule_id)
        state = schedule_state(schedule)
        if state == "done":
            raise EdgeFleetError(f"schedule {schedule_id} ran once at its time and is done; "
                                 "create a new one (or edit it to give it a new time)")
        if (state == "paused") == paused:
            return schedule  # already so: nothing to change, nothing to audit
        schedule.enabled = not paused
        if not paused and schedule.cron:
            schedule.next_run_at = next_fire(schedule.cron, datetime.now(UTC))
        audit.add_event(session, actor, "schedule.pause" if paused else "schedule.resume",
                        f"schedule:{schedule_id}", _described(schedule))
        session.flush()
        session.expunge(schedule)
    return schedule


def update_schedule(settings: Settings, schedule_id: int, params: dict[str, Any],
                    targets: str, *, actor: str, cron: str | None = None,
                    run_at: datetime | None = None) -> Schedule:
    """Change what a schedule runs and when (its kind stays), checked like ``create`` (nothing
    changes if anything is wrong), audited as ``schedule.update`` with the new params. The
    next time is computed again from now; a paused schedule stays paused, a done one-off given
    a new time becomes active."""
    if (cron is None) == (run_at is None):
        raise EdgeFleetError("a schedule needs exactly one of cron (repeating) or run_at (once)")
    now = datetime.now(UTC)
    with session_scope(settings) as session:
        schedule = get_schedule(session, schedule_id)
        targets = execute.default_targets(schedule.kind, targets)
        checked = execute.validate_params(session, schedule.kind, params, targets)
        was = schedule_state(schedule)
        if cron is not None:
            cron = " ".join(cron.split())
            schedule.cron, schedule.run_at = cron, None
            schedule.next_run_at = next_fire(cron, now)
        else:
            assert run_at is not None
            schedule.cron, schedule.run_at = None, as_utc(run_at)
            schedule.next_run_at = schedule.run_at
        schedule.params, schedule.targets = checked, targets
        schedule.enabled = was != "paused"
        audit.add_event(session, actor, "schedule.update", f"schedule:{schedule_id}",
                        _described(schedule) | {"params": checked})
        session.flush()
        session.expunge(schedule)
    return schedule


def run_now(settings: Settings, schedule_id: int, *, actor: str) -> Job:
    """Queue the schedule's job now, as ``actor`` (audited as that job kind is), without moving
    its next time; the job is linked to the schedule and becomes its last job."""
    with session_scope(settings) as session:
        schedule = get_schedule(session, schedule_id)
        kind, params, targets = schedule.kind, dict(schedule.params), schedule.targets
    job = queue.submit(settings, kind, params, targets, actor=actor, schedule_id=schedule_id)
    with session_scope(settings) as session:
        session.execute(update(Schedule).where(col(Schedule.id) == schedule_id)
                        .values(last_job_id=job.id))
    return job
