"""Finding runs: the Runs page's filters (bundle, device, kind, state, date range) and its pages,
cut in SQL so a lab with thousands of runs pages through them instead of seeing the newest 200.

Filters are typed by people, so each is checked here and a bad one raises EdgeFleetError
saying what is wrong and what would do (the page shows it above the unfiltered list)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from orchestrator.core.errors import EdgeFleetError
from orchestrator.core.models import Device, Result, Run

KINDS = ("bench", "eval")
STATES = ("running", "succeeded", "partial", "failed", "cancelled", "interrupted")


@dataclass
class RunFilter:
    """What the Runs page filters on; empty strings mean "any"."""

    bundle: str = ""  # NAME or NAME@VERSION
    device: str = ""
    kind: str = ""
    state: str = ""
    since: str = ""  # YYYY-MM-DD, UTC, inclusive
    until: str = ""  # YYYY-MM-DD, UTC, inclusive

    def active(self) -> dict[str, str]:
        """The filters set, for links that keep them (the pager's)."""
        return {k: v for k, v in vars(self).items() if v}


@dataclass
class RunPage:
    runs: list[Run]
    matched: int
    offset: int
    limit: int
    devices: dict[int, list[str]] = field(default_factory=dict)  # run id -> device names


def _day(text: str, what: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise EdgeFleetError(f"{what} date {text!r} is not a date: use YYYY-MM-DD "
                             f"(e.g. {datetime.now(UTC).date().isoformat()})") from None


def _conditions(f: RunFilter) -> list[Any]:
    where: list[Any] = []
    if f.bundle.strip():
        name, _, version = f.bundle.strip().partition("@")
        where.append(col(Run.bundle_name) == name)
        if version:
            where.append(col(Run.bundle_version) == version)
    if f.device.strip():
        where.append(col(Run.id).in_(select(Result.run_id)
                                     .where(col(Result.device_name) == f.device.strip())))
    if f.kind:
        if f.kind not in KINDS:
            raise EdgeFleetError(f"kind {f.kind!r}: choose one of {', '.join(KINDS)}")
        where.append(col(Run.kind) == f.kind)
    if f.state:
        if f.state not in STATES:
            raise EdgeFleetError(f"state {f.state!r}: choose one of {', '.join(STATES)}")
        where.append(col(Run.state) == f.state)
    since = _day(f.since, "from") if f.since.strip() else None
    until = _day(f.until, "to") if f.until.strip() else None
    if since and until and until < since:
        raise EdgeFleetError(f"the date range ends ({until}) before it starts ({since})")
    if since:
        where.append(col(Run.created_at) >= datetime.combine(since, time(), UTC))
    if until and until < date.max:  # the last day there is: no upper bound (no day after)
        where.append(col(Run.created_at) < datetime.combine(until + timedelta(days=1), time(),
                                                              UTC))
    return where


def runs_window(session: Session, f: RunFilter, offset: int, limit: int) -> RunPage:
    """Runs matching ``f``, newest first, rows ``offset`` .. ``offset+limit`` and how many match;
    with the devices each shown run measured on (one query for the page)."""
    where = _conditions(f)
    offset, limit = max(0, offset), max(1, limit)
    matched = session.exec(select(func.count()).select_from(Run).where(*where)).one()
    runs = list(session.exec(select(Run).where(*where).order_by(col(Run.id).desc())
                             .offset(offset).limit(limit)).all())
    devices: dict[int, list[str]] = {}
    if runs:
        pairs = session.exec(select(Result.run_id, Result.device_name).distinct()
                             .where(col(Result.run_id).in_([r.id for r in runs]))
                             .order_by(col(Result.device_name))).all()
        for run_id, name in pairs:
            devices.setdefault(run_id, []).append(name)
    return RunPage(runs, matched, offset, limit, devices)


def filter_choices(session: Session) -> dict[str, list[str]]:
    """What the filter's fields suggest (HTML datalists): bundle names with runs, and devices."""
    names = session.exec(select(Run.bundle_name).distinct().order_by(col(Run.bundle_name))).all()
    devices = session.exec(select(Device.name).order_by(col(Device.name))).all()
    return {"bundles": list(names), "devices": list(devices)}


def bundle_results(session: Session, name: str, limit: int = 60) -> list[dict[str, Any]]:
    """A bundle's result history across its versions, newest run first (the bundle page):
    ``result_public`` summaries, raw latencies not loaded."""
    from sqlalchemy.orm import defer

    from orchestrator.measure.runs import result_public

    pairs = session.exec(select(Result, Run).join(Run, col(Result.run_id) == col(Run.id))
                         .where(col(Run.bundle_name) == name)
                         .options(defer(Result.latencies), defer(Result.telemetry_samples))
                         .order_by(col(Result.run_id).desc(), col(Result.device_name),
                                   col(Result.threads))
                         .limit(max(1, limit))).all()
    return [result_public(result, run) for result, run in pairs]
