"""Pick the transport for a device from its ``ansible_connection``."""

from __future__ import annotations

from orchestrator.config import Settings
from orchestrator.transport.base import Connection, OutputLimits, Target


def connect(target: Target, settings: Settings, timeout: float | None = None) -> Connection:
    timeout = timeout or settings.timeout_s
    limits = OutputLimits.from_mb(settings.max_line_mb, settings.max_output_mb)
    if target.connection == "local":
        from orchestrator.transport.local import LocalConnection

        return LocalConnection(target, limits)
    from orchestrator.transport.ssh import SshConnection

    return SshConnection(target, settings.known_hosts, timeout, limits)
