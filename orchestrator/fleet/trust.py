"""Trusting devices' SSH host keys: the one step where EdgeFleet learns a key instead of
checking it (every connection afterwards refuses an unknown or changed key).

A service of its own, not a loop in the CLI, so the step is audited like every other change
(``devices.trust``: who trusted or replaced which fingerprints) and any door can offer it.
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.access import audit
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError
from orchestrator.core.models import Device
from orchestrator.fleet.fanout import Outcome, fan_out
from orchestrator.inventory.devices import to_target
from orchestrator.transport import Target
from orchestrator.transport.hostkeys import trust
from orchestrator.transport.ssh import ssh_destination


def trust_devices(settings: Settings, devices: Sequence[Device], forks: int = 10,
                  timeout: float | None = None, replace: bool = False, *, actor: str = "",
                  targets: str) -> list[Outcome]:
    """Record each device's host key in the shared database (``replace``: a changed key too,
    after the user checked it), where every worker reads it; local devices have none. One
    ``devices.trust`` event says what each device's key is now, so a replaced key is never a
    silent change."""

    def step(target: Target) -> Outcome:
        if target.connection == "local":
            return Outcome(target.name, True, "local", data={"fingerprint": None})
        # ~/.ssh/config's HostName and Port, as the SSH connection will use them
        address, port = ssh_destination(target.address, target.port)
        try:
            result = trust(target.name, address, port, settings,
                           timeout or settings.timeout_s, replace=replace)
        except OSError as exc:
            raise EdgeFleetError(
                f"{target.name}: cannot reach {address}:{port}: {exc}") from None
        return Outcome(target.name, True, result.status,
                       data={"key_type": result.key_type, "fingerprint": result.fingerprint,
                             "previous_fingerprint": result.previous_fingerprint})

    outcomes = fan_out([to_target(d) for d in devices], step, forks)
    with session_scope(settings) as session:
        audit.add_event(session, actor, "devices.trust", f"devices:{targets}", {
            "replace": replace,
            "devices": [{"name": o.device, "status": o.state,
                         "key_type": o.data.get("key_type"),
                         "fingerprint": o.data.get("fingerprint"),
                         "previous_fingerprint": o.data.get("previous_fingerprint")}
                        for o in outcomes]})
    return outcomes
