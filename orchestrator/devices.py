"""Devices in the DB: sync from an inventory, select by pattern, turn into transport Targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, col, select

from orchestrator.errors import NotFoundError
from orchestrator.inventory import Inventory, InventoryHost
from orchestrator.models import Device
from orchestrator.patterns import match
from orchestrator.transport import Target

# Inventory-owned fields; anything else on a Device (facts, active bundle) is learned from it.
SYNCED_FIELDS = ("address", "port", "user", "key_file", "connection", "root", "python", "env",
                 "labels", "groups")


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
    """``edgefleet_env`` may carry tokens: a diff names the variables, never their values."""
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
    devices = all_devices(session)
    if not devices:
        raise NotFoundError("no devices yet: run `edgefleet inventory sync FILE` first")
    names = match(pattern, [(d.name, d.groups) for d in devices])
    by_name = {d.name: d for d in devices}
    return [by_name[name] for name in names]


def get_device(session: Session, name: str) -> Device:
    device = session.exec(select(Device).where(Device.name == name)).first()
    if device is None:
        raise NotFoundError(f"no device named {name!r}; see `edgefleet devices list`")
    return device


def to_target(device: Device) -> Target:
    return Target(
        name=device.name, address=device.address, port=device.port, user=device.user,
        key_file=device.key_file, connection=device.connection, root=device.root,
        python=device.agent_python or device.python, env=dict(device.env),
    )


def device_public(device: Device) -> dict[str, Any]:
    """The JSON shape for one device: no key paths, no environment values."""
    facts = device.facts or {}
    sensors = facts.get("sensors") or {}
    return {
        "name": device.name,
        "address": device.address,
        "port": device.port,
        "connection": device.connection,
        "groups": device.groups,
        "labels": device.labels,
        "simulated": device.simulated,
        "agent_version": device.agent_version,
        "active_bundle": device.active_bundle,
        "active_digest": device.active_digest,
        "last_seen": device.last_seen.isoformat() if device.last_seen else None,
        "pi_model": facts.get("pi_model"),
        "arch": facts.get("arch"),
        "cores": facts.get("cores"),
        "ram_mb": facts.get("ram_mb"),
        "onnxruntime": (facts.get("onnxruntime") or {}).get("version"),
        "temp_c": sensors.get("temp_c"),
        "throttled_hex": sensors.get("throttled_hex"),
        "throttle_flags": sensors.get("throttle_flags"),
        "source": device.source,
    }


def record_facts(session: Session, name: str, facts: dict[str, Any],
                 agent_python: str | None = None) -> None:
    device = get_device(session, name)
    device.facts = facts
    device.agent_version = facts.get("agent_version")
    active = facts.get("active")
    if active:
        device.active_bundle = f"{active['name']}@{active['version']}"
        device.active_digest = active["digest"]
    if agent_python:
        device.agent_python = agent_python
    device.last_seen = datetime.now(UTC)
    session.add(device)
