"""Pick the transport for a device from its ``ansible_connection``."""

from __future__ import annotations

from orchestrator.config import Settings
from orchestrator.transport.base import Connection, Target


def connect(target: Target, settings: Settings, timeout: float | None = None) -> Connection:
    timeout = timeout or settings.timeout_s
    if target.connection == "local":
        from orchestrator.transport.local import LocalConnection

        return LocalConnection(target)
    from orchestrator.transport.ssh import SshConnection

    return SshConnection(target, settings.known_hosts, timeout)
