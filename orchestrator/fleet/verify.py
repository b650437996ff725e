"""``devices verify``: re-check on demand that each device runs what it was given.

The agent re-hashes every file of the active version (no cache: the question is "are these
still the bytes", and the cache would answer from a stat) and re-runs the golden-output smoke
test (agent/smoke.py). A failed check is an outcome with details, not an exception, so one
table shows every device's files and differences. What the device reports as active is
recorded, so `devices list` matches the device even after a rollback done by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from agent.protocol import E_NOTHING_ACTIVE
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import AgentError
from orchestrator.core.models import Device
from orchestrator.fleet.agentclient import call_agent
from orchestrator.fleet.fanout import Outcome, fan_out
from orchestrator.fleet.leases import leased
from orchestrator.inventory.devices import record_device_report, to_target
from orchestrator.transport import Target, connect


def _ref(active: dict[str, Any] | None) -> str | None:
    return f"{active.get('name')}@{active.get('version')}" if active else None


def verify_outcome(device: str, result: dict[str, Any]) -> Outcome:
    """The agent's ``verify`` result as one outcome; the error lists everything that is off and
    says how to repair it."""
    ref = _ref(result.get("active"))
    files = result.get("files") or {}
    smoke = result.get("smoke")
    problems: list[str] = list(result.get("problems") or [])
    problems += [f"{path}: {why}" for path, why in sorted((files.get("problems") or {}).items())]
    if smoke and not smoke.get("ok"):
        problems.append("golden outputs: " + str(smoke.get("message") or smoke.get("error")))
    data = {
        "bundle": ref, "digest": (result.get("active") or {}).get("digest"),
        "files_checked": files.get("checked", 0), "failed_files": files.get("failed", []),
        "smoke": None if smoke is None else ("passed" if smoke.get("ok") else "failed"),
        "max_abs": smoke.get("max_abs") if smoke else None,
        "max_rel": smoke.get("max_rel") if smoke else None,
        "smoke_ms": smoke.get("ms") if smoke else None,
    }
    if result.get("ok"):
        return Outcome(device, True, "verified", data=data)
    error = (f"{device}: {ref} fails verification: " + "; ".join(problems)
             + f". Push it again to repair the files (edgefleet push {ref} {device})")
    return Outcome(device, False, "failed", error, data=data)


def _record(settings: Settings, name: str, result: dict[str, Any]) -> None:
    with session_scope(settings) as session:
        record_device_report(session, name, result)


def verify_devices(settings: Settings, devices: Sequence[Device], forks: int = 10,
                   timeout: float | None = None,
                   before: Callable[[str], None] | None = None) -> list[Outcome]:
    """One outcome per device: ``verified``, ``failed`` (with details) or ``nothing-active``.
    ``before(device)`` runs first on each device and may raise to stop it (a cancelled job)."""

    def step(target: Target) -> Outcome:
        if before is not None:
            before(target.name)
        try:
            # Leased: the smoke test loads the model, which would disturb a benchmark.
            with leased(settings, target.name, "verify"), \
                    connect(target, settings, timeout) as conn:
                result = call_agent(conn, "verify", {}, timeout=timeout)
        except AgentError as exc:
            if exc.code == E_NOTHING_ACTIVE:
                return Outcome(target.name, False, "nothing-active", str(exc))
            raise
        _record(settings, target.name, result)
        return verify_outcome(target.name, result)

    return fan_out([to_target(d) for d in devices], step, forks)
