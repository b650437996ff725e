"""One-shot telemetry snapshots: temperature, frequency, throttling (decoded), load, memory,
disk — read by a shell poll or the agent (``read_telemetry``), stored per device, and
reflected on the device row, with what the device says it runs (and any interrupted change it
reverted: devices.record_device_report)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, col, select

from agent import shellpoll
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Device, TelemetrySnapshot
from orchestrator.fleet import alerts
from orchestrator.fleet.agentclient import call_agent
from orchestrator.fleet.answers import checked_answer
from orchestrator.fleet.fanout import Outcome, fan_out
from orchestrator.inventory.devices import get_device, record_device_report, to_target
from orchestrator.transport import Connection, Target, connect
from orchestrator.transport.base import RemotePath


def take_snapshots(settings: Settings, devices: Sequence[Device], forks: int = 10,
                   timeout: float | None = None) -> list[Outcome]:
    def step(target: Target) -> Outcome:
        with connect(target, settings, timeout, poll=True) as conn:
            data = checked_answer(read_telemetry(conn, timeout))  # the device's JSON: untrusted
        recovered = store_snapshot(settings, target.name, data)
        row = snapshot_row(data)
        if recovered:
            row["recovered"] = recovered
        problems = [data[key] for key in ("current_error", "state_error") if data.get(key)]
        if problems:  # the snapshot was taken; what is wrong with the bundle store is said
            row["problem"] = "; ".join(str(p) for p in problems)
        return Outcome(target.name, True, "ok", data=row)

    outcomes = fan_out([to_target(d) for d in devices], step, forks)
    alerts.after_telemetry(settings, outcomes)  # newly throttled, offline too long
    return outcomes


def read_telemetry(conn: Connection, timeout: float | None = None) -> dict[str, Any]:
    """A device's telemetry: a shell poll that starts no Python on the device
    (agent.shellpoll), or the agent's ``telemetry`` whenever that says the agent must answer
    (a repair to make, no agent installed, anything unusual): the same answer either way."""
    target = conn.target
    result = conn.run(shellpoll.argv(RemotePath(target.root), target.agent_path),
                      env=dict(target.env), timeout=timeout)
    data = shellpoll.parse(result.stdout) if result.exit_code == 0 else None
    return data if data is not None else call_agent(conn, "telemetry", timeout=timeout)


def store_snapshot(settings: Settings, name: str, data: dict[str, Any]) -> list[str]:
    """Record one device's telemetry answer: the snapshot, the sensors on the device row, what
    it says it runs (record_device_report; returns what that reverted). One short write
    transaction: a fan-out of 200 stores them one after the other (core.sqlitewrite)."""
    sensors = data.get("sensors") or {}
    now = datetime.now(UTC)
    # The snapshot's INSERT first: it opens the write transaction (core.sqlitewrite's gate on
    # SQLite; on PostgreSQL the row is read FOR UPDATE), so the device row is read inside it
    # and the facts merged below cannot overwrite what another writer (``record_facts``)
    # committed meanwhile (tests/faults/test_facts_race.py). One SELECT of the device
    # (``record_device_report`` is handed the row), one more flush at commit.
    with session_scope(settings) as session:
        session.add(TelemetrySnapshot(
            device_name=name, taken_at=now, temp_c=sensors.get("temp_c"),
            freq_mhz=sensors.get("freq_mhz"), throttled_bits=sensors.get("throttled"),
            throttle_flags=sensors.get("throttle_flags") or {},
            load_1m=data.get("load_1m"), mem_available_mb=data.get("mem_available_mb"),
            disk_free_bytes=data.get("disk_free_bytes")))
        session.flush()
        device = get_device(session, name, for_update=True)
        device.facts = {**(device.facts or {}), "sensors": sensors}
        return record_device_report(session, name, data, device=device, now=now)


def snapshot_row(data: dict[str, Any]) -> dict[str, Any]:
    """Flat fields for tables and --json."""
    sensors = data.get("sensors") or {}
    flags = sensors.get("throttle_flags") or {}
    return {
        "temp_c": sensors.get("temp_c"),
        "freq_mhz": sensors.get("freq_mhz"),
        "throttled_hex": sensors.get("throttled_hex"),
        "throttle_now": flags.get("now"),
        "throttle_since_boot": flags.get("since_boot"),
        "load_1m": data.get("load_1m"),
        "cores": data.get("cores"),
        "mem_available_mb": data.get("mem_available_mb"),
        "mem_total_mb": data.get("mem_total_mb"),
        "disk_free_bytes": data.get("disk_free_bytes"),
        "simulated": data.get("simulated"),
    }


HISTORY_LIMIT = 500  # a few days of minute polls: enough to see a hot afternoon


def device_history(session: Session, name: str, limit: int = HISTORY_LIMIT, *,
                   since: datetime | None = None,
                   until: datetime | None = None) -> list[TelemetrySnapshot]:
    """The latest ``limit`` snapshots of one device, oldest first (for a time axis); with
    ``since``/``until``, the latest ``limit`` taken in that time range (the device page's
    1 h / 24 h / 7 d / custom)."""
    query = select(TelemetrySnapshot).where(TelemetrySnapshot.device_name == name)
    if since is not None:
        query = query.where(col(TelemetrySnapshot.taken_at) >= since)
    if until is not None:
        query = query.where(col(TelemetrySnapshot.taken_at) <= until)
    rows = session.exec(query
                        .order_by(col(TelemetrySnapshot.taken_at).desc(),
                                  col(TelemetrySnapshot.id).desc())
                        .limit(limit)).all()
    return list(reversed(rows))
