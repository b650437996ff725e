"""Devices in the DB: sync from an inventory, select by pattern, turn into transport Targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import case
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, col, func, select

from orchestrator.core.errors import EdgeFleetError, NotFoundError
from orchestrator.core.listings import device_public as device_public
from orchestrator.core.listings import select_by_pattern
from orchestrator.core.models import Deployment, Device
from orchestrator.transport import Target

if TYPE_CHECKING:  # the YAML reader (PyYAML) is for syncing; a push only needs the rows
    from orchestrator.inventory.reader import Inventory, InventoryHost


@dataclass
class SyncReport:
    added: list[str] = field(default_factory=list)
    # device name -> field -> [old, new]
    changed: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"added": self.added, "changed": self.changed, "removed": self.removed,
                "unchanged": self.unchanged}


def _fields(host: InventoryHost) -> dict[str, Any]:
    return {
        "address": host.address, "port": host.port, "user": host.user,
        "key_file": host.key_file, "connection": host.connection, "root": host.root,
        "python": host.python, "env": dict(host.env), "labels": dict(host.labels),
        "groups": list(host.groups),
    }


def _redacted(key: str, old_new: list[Any]) -> list[Any]:
    """``edgefleet_env`` may carry tokens: a diff names the variables, never their values; a
    key file's path is not shown either (README: key paths are not printed), only whether
    there is one."""
    if key == "key_file":
        return ["<a key file>" if side else None for side in old_new]
    if key != "env":
        return old_new
    return [{name: "<redacted>" for name in side} for side in old_new]


def is_simulated(env: dict[str, str]) -> bool:
    return env.get("EDGEFLEET_SYSFS", "/sys") not in ("", "/sys")


def sync_inventory(session: Session, inventory: Inventory, apply: bool = True) -> SyncReport:
    """Make the DB's devices match the inventory; idempotent. ``apply=False`` only reports."""
    report = SyncReport()
    existing = {d.name: d for d in session.exec(select(Device)).all()}
    now = datetime.now(UTC)
    for name, host in inventory.hosts.items():
        wanted = _fields(host)
        device = existing.pop(name, None)
        if device is None:
            report.added.append(name)
            if apply:
                session.add(Device(name=name, source=host.source,
                                   simulated=is_simulated(wanted["env"]), **wanted))
            continue
        diff = {key: _redacted(key, [getattr(device, key), value])
                for key, value in wanted.items() if getattr(device, key) != value}
        if not diff:
            report.unchanged.append(name)
        else:
            report.changed[name] = diff
        if apply:
            for key, value in wanted.items():
                setattr(device, key, value)
            device.source = host.source
            device.simulated = is_simulated(wanted["env"])
            if diff:
                device.updated_at = now
            session.add(device)
    for name, device in existing.items():
        report.removed.append(name)
        if apply:
            session.delete(device)
    return report


def all_devices(session: Session) -> list[Device]:
    return list(session.exec(select(Device).order_by(col(Device.name))).all())


def select_devices(session: Session, pattern: str) -> list[Device]:
    return select_by_pattern(all_devices(session), pattern, lambda d: (d.name, d.groups))


@dataclass(frozen=True)
class DevicePage:
    """One page of devices by name: ``total`` = the whole fleet, ``matched`` = what the pattern
    selects (the whole fleet without one), ``devices`` = rows ``offset`` .. ``offset+limit``."""

    devices: list[Device]
    total: int
    matched: int
    offset: int
    limit: int

    @property
    def next_offset(self) -> int | None:
        following = self.offset + self.limit
        return following if following < self.matched else None


TEMP_LIMIT_C = 80.0  # where Pi firmware soft-throttles; web.pages.view badges it the same


def _facts_key(*path: str) -> Any:
    return col(Device.facts)[path]


def _throttle_key() -> ColumnElement[Any]:
    """How much throttling a device reports: 100 per "now" flag (over 80 °C counts as one, as
    its badge does), plus 1 per "since boot" flag; so what is happening now sorts above what
    happened once. No telemetry counts as none (0), as the table shows it. COALESCE because
    json_array_length of a missing path is 0 in SQLite and NULL in PostgreSQL."""
    now = func.coalesce(func.json_array_length(_facts_key("sensors", "throttle_flags", "now")), 0)
    boot = func.coalesce(func.json_array_length(
        _facts_key("sensors", "throttle_flags", "since_boot")), 0)
    hot = case((_facts_key("sensors", "temp_c").as_float() >= TEMP_LIMIT_C, 1), else_=0)
    return (now + hot) * 100 + boot


DEVICE_SORTS: dict[str, str] = {
    "name": "asc", "status": "desc", "model": "asc", "temp": "desc", "throttle": "desc",
    "bundle": "asc", "agent": "asc"}
"""The Fleet table's sortable columns (``?sort=``) and the order a first click asks for: names
and versions A to Z; status (online first, then the most recently seen), temperature and
throttling worst first, which is what an operator sorts them for."""


def _sort_key(sort: str) -> Any:
    """The SQL expression a column sorts by; the latest telemetry lives in the facts JSON
    (``facts.sensors``), so it is read there in SQL (json_extract / #>>), never in Python."""
    if sort == "temp":
        return _facts_key("sensors", "temp_c").as_float()
    if sort == "throttle":
        return _throttle_key()
    if sort == "model":
        return _facts_key("pi_model").as_string()
    return {"name": col(Device.name), "status": col(Device.last_seen),
            "bundle": col(Device.active_bundle), "agent": col(Device.agent_version)}[sort]


def device_order(sort: str = "name", order: str | None = None) -> tuple[str, str]:
    """``(sort, order)`` checked against DEVICE_SORTS; ``order`` None/"" = the column's first
    order. Raises EdgeFleetError naming the allowed values (a page shows it, an API says 422)."""
    if sort not in DEVICE_SORTS:
        raise EdgeFleetError(f"cannot sort by {sort!r}: use one of {', '.join(DEVICE_SORTS)}")
    if order and order not in ("asc", "desc"):
        raise EdgeFleetError(f"order {order!r} is not asc or desc")
    return sort, order or DEVICE_SORTS[sort]


def _ordering(sort: str, order: str) -> list[Any]:
    """ORDER BY for a window: devices without the value last in either direction (as a
    spreadsheet does), then by name so that LIMIT/OFFSET pages are a total order."""
    key = _sort_key(sort)
    if sort == "name":
        return [key.desc() if order == "desc" else key.asc()]
    # NULLS LAST (SQLite >= 3.30, PostgreSQL) rather than a CASE on the key: the key is then
    # computed once a row, and for telemetry that is a JSON parse of the facts
    return [(key.desc() if order == "desc" else key.asc()).nulls_last(), col(Device.name).asc()]


def devices_window(session: Session, pattern: str | None, offset: int,
                   limit: int, sort: str = "name", order: str | None = None) -> DevicePage:
    """A window of the fleet for lists that must stay fast at 1,000+ devices (the Fleet page,
    ``GET /api/devices``), sorted across the whole fleet by ``sort`` (a DEVICE_SORTS key) in
    ``order`` before the cut, so page 1 by temperature holds the hottest of the fleet, not of
    the first names. Without a pattern the window is cut in SQL (COUNT + ORDER BY +
    LIMIT/OFFSET, so only ``limit`` rows and their facts JSON are loaded); a target pattern is
    matched like the CLI matches it (group membership and negations in Python) over
    (name, groups) already in that order, then cut. Raises EdgeFleetError for a bad pattern
    (as select_devices does) or sort."""
    sort, order = device_order(sort, order)
    ordering = _ordering(sort, order)
    offset, limit = max(0, offset), max(1, limit)
    total = session.exec(select(func.count()).select_from(Device)).one()
    if pattern:
        # match on (name, groups) alone: loading 1,000 rows with their facts JSON to show 100
        # cost the Fleet page most of its time (bench/fleet_scale.py)
        pairs = session.exec(select(Device.name, Device.groups).order_by(*ordering)).all()
        matched = select_by_pattern(list(pairs), pattern, lambda p: (p[0], p[1]))
        names = [p[0] for p in matched[offset:offset + limit]]
        rows = session.exec(select(Device).where(col(Device.name).in_(names))).all()
        by_name = {d.name: d for d in rows}
        return DevicePage([by_name[n] for n in names], total, len(matched), offset, limit)
    if sort == "name":  # the unique index walks in order: no sort, no JSON to read
        rows = session.exec(select(Device).order_by(*ordering).offset(offset).limit(limit)).all()
        return DevicePage(list(rows), total, total, offset, limit)
    # sort names alone, then load the window's rows: sorting whole rows made SQLite's sorter
    # carry 1,000 facts JSON blobs to keep 100 (bench/fleet_scale.py, "Fleet p5 by temp")
    names = list(session.exec(select(Device.name).order_by(*ordering).offset(offset)
                              .limit(limit)).all())
    by_name = {d.name: d for d in session.exec(
        select(Device).where(col(Device.name).in_(names))).all()}
    return DevicePage([by_name[n] for n in names], total, total, offset, limit)


def get_device(session: Session, name: str, *, for_update: bool = False) -> Device:
    """The device named ``name``; ``for_update``: its row locked until the transaction ends
    (PostgreSQL's row lock; SQLite has none, and its write gate serialises writers instead),
    for a read-modify-write of its JSON facts that another writer must not interleave."""
    query = select(Device).where(Device.name == name)
    device = session.exec(query.with_for_update() if for_update else query).first()
    if device is None:
        raise NotFoundError(f"no device named {name!r}; see `edgefleet devices list`")
    return device


def to_target(device: Device) -> Target:
    return Target.of_device(device)


def record_facts(session: Session, name: str, facts: dict[str, Any],
                 agent_python: str | None = None) -> None:
    device = get_device(session, name)
    device.facts = facts
    device.agent_version = facts.get("agent_version")
    if agent_python:
        device.agent_python = agent_python
    record_device_report(session, name, facts)


@dataclass
class DeviceReport:
    """What the results of one contact said about the device (``active``, ``recovered``),
    gathered across the calls of an agent session for :func:`record_device_report`."""

    data: dict[str, Any] = field(default_factory=dict)

    def note(self, result: dict[str, Any]) -> dict[str, Any]:
        """Keep what ``result`` (a command's data, or an error's detail) says; returns it.
        Untrusted: only an ``active`` that is an object (or null) and ``recovered`` entries that
        are objects are kept; anything else is ignored, as if the device had said nothing."""
        recovered = result.get("recovered")
        if isinstance(recovered, list):
            self.data.setdefault("recovered", []).extend(
                r for r in recovered if isinstance(r, dict))
        active = result.get("active")
        if "active" in result and (active is None or is_history_entry(active)) \
                and not result.get("state_error"):
            self.data["active"] = active
        return result


def is_history_entry(entry: object) -> bool:
    """Whether a device's ``active``/``abandoned`` is a history entry we can record: an object
    whose name, version and digest are strings."""
    return isinstance(entry, dict) and all(
        isinstance(entry.get(key), str) for key in ("name", "version", "digest"))


DIGEST_LIMIT = 128  # a sha256 digest is 64 hex characters; a device may send anything


def _ref(entry: dict[str, Any]) -> str:
    return f"{entry['name'][:200]}@{entry['version'][:100]}"


def history_ref(entry: object) -> tuple[str, str] | None:
    """(NAME@VERSION, digest) of a device's history entry, clipped as the DB keeps them; None
    when it is not one (``is_history_entry``)."""
    if not is_history_entry(entry):
        return None
    assert isinstance(entry, dict)
    return _ref(entry), entry["digest"][:DIGEST_LIMIT]


def record_device_report(session: Session, name: str, report: dict[str, Any], *,
                         device: Device | None = None, now: datetime | None = None,
                         ) -> list[str]:
    """Correct the DB from what a device's agent said about itself in a result (any command:
    agent.cli.handle adds it): the version it runs (``active``, the committed one, null for
    none; ignored with ``state_error``) and the interrupted changes its journal reverted first
    (``recovered``: one Deployment row each, operation ``recover``). Returns their messages.

    Why here and not only after a push: a push whose agent was killed (reboot, power cut, OOM)
    ends in a transport error, and the device decides what it runs on its next command; the
    control plane learns it from whichever contact comes next (push, telemetry, facts, bench,
    eval, verify, rollback). ``device``: its row, when the caller has it loaded already."""
    device = device if device is not None else get_device(session, name)
    now = now or datetime.now(UTC)
    recovered = report.get("recovered")
    recovered = [r for r in recovered if isinstance(r, dict)] \
        if isinstance(recovered, list) else []
    if "active" in report:
        known, active = True, report["active"]
    elif recovered:  # an error result: its reports still say what is active now
        known, active = True, recovered[-1].get("active")
    else:
        known, active = False, None
    if known and (active is None or is_history_entry(active)) and not report.get("state_error"):
        device.active_bundle = _ref(active) if active else None
        device.active_digest = active["digest"][:DIGEST_LIMIT] if active else None
    for item in recovered:
        entry = next((e for e in (item.get("abandoned"), item.get("active"))
                      if is_history_entry(e)), {})
        session.add(Deployment(
            device_name=name, operation="recover", state=str(item.get("action"))[:40],
            bundle_name=entry.get("name"), bundle_version=entry.get("version"),
            bundle_digest=entry.get("digest"), error=_message(item),
            started_at=now, finished_at=now))
    device.last_seen = now
    session.add(device)
    return [_message(item) or "" for item in recovered]


def _message(item: dict[str, Any]) -> str | None:
    """A recovery report's message: text, clipped (a device may send anything)."""
    message = item.get("message")
    return None if message is None else str(message)[:2000]


RECENT_DEPLOYMENTS = 20  # a device's history at a glance: a page, not an archive


def recent_deployments(session: Session, device: str | None = None,
                       limit: int = RECENT_DEPLOYMENTS, *, operation: str | None = None,
                       state: str | None = None, bundle: str | None = None
                       ) -> list[Deployment]:
    """The newest deployments (push, rollback, recover), newest first; of one device when
    ``device`` is given. One query and one default bound for `devices show`, the API's device
    view and the device page, which used to run three copies with three limits. The device
    page's history filter narrows by ``operation``, ``state`` and ``bundle`` (a name, or
    NAME@VERSION)."""
    query = select(Deployment)
    if device is not None:
        query = query.where(Deployment.device_name == device)
    if operation:
        query = query.where(Deployment.operation == operation)
    if state:
        query = query.where(Deployment.state == state)
    if bundle:
        name, _, version = bundle.partition("@")
        query = query.where(Deployment.bundle_name == name)
        if version:
            query = query.where(Deployment.bundle_version == version)
    return list(session.exec(query.order_by(col(Deployment.id).desc())
                             .limit(max(1, int(limit)))).all())
