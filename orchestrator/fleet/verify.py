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
from orchestrator.core.numbers import count
from orchestrator.fleet.agentclient import call_agent
from orchestrator.fleet.answers import checked_smoke, texts
from orchestrator.fleet.fanout import Outcome, fan_out
from orchestrator.fleet.leases import leased
from orchestrator.inventory.devices import history_ref, record_device_report, to_target
from orchestrator.transport import Target, connect

# What one verify outcome keeps of a device's lists: enough to say what is off and where.
MOST_PROBLEMS = 20
MOST_FILES = 100


def verify_outcome(device: str, result: dict[str, Any]) -> Outcome:
    """The agent's ``verify`` result as one outcome; the error lists everything that is off and
    says how to repair it. Every field is checked and every list clipped: the answer is the
    device's, and the outcome goes into the job's result and its error."""
    known = history_ref(result.get("active"))
    ref = known[0] if known else None
    files = result.get("files") if isinstance(result.get("files"), dict) else {}
    raw_smoke = result.get("smoke")
    smoke = checked_smoke(raw_smoke) if isinstance(raw_smoke, dict) else None
    problems = texts(result.get("problems"), MOST_PROBLEMS)
    by_file = files.get("problems")
    if isinstance(by_file, dict):
        problems += [f"{str(path)[:300]}: {str(why)[:300]}"
                     for path, why in sorted(by_file.items(), key=str)[:MOST_PROBLEMS]]
    if smoke is not None and not smoke["ok"]:
        message = raw_smoke.get("message")  # type: ignore[union-attr]
        problems.append("golden outputs: " + str(
            message[:500] if isinstance(message, str) else smoke["error"]))
    data = {
        "bundle": ref, "digest": known[1] if known else None,
        "files_checked": count(files.get("checked")) or 0,
        "failed_files": texts(files.get("failed"), MOST_FILES),
        "smoke": None if smoke is None else ("passed" if smoke["ok"] else "failed"),
        "max_abs": smoke["max_abs"] if smoke else None,
        "max_rel": smoke["max_rel"] if smoke else None,
        "smoke_ms": smoke["ms"] if smoke else None,
    }
    if result.get("ok") is True:
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
