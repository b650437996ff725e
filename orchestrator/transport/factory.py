"""Pick the transport for a device from its ``ansible_connection``."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.core.errors import TransportError
from orchestrator.transport.base import Connection, OutputLimits, Target

if TYPE_CHECKING:  # pydantic-settings: no light command should import it to reach a Target
    from orchestrator.core.config import Settings
    from orchestrator.core.envsettings import EnvSettings

log = logging.getLogger(__name__)


# Every connection this process opened (weakly: a closed one just drops out), so that a
# Ctrl-C can abort them all at once (``abort_all``); after it, no new one opens.
_open: weakref.WeakSet[Connection] = weakref.WeakSet()
_aborted = threading.Event()
# The device lease (its holder id) under which this context opens connections: set by
# ``fleet.leases.leased`` for its block (fan-out threads copy it), so that a lost lease aborts
# that operation's connections only, never a lease-free telemetry poll of the same device.
_lease_holder: ContextVar[str | None] = ContextVar("edgefleet_lease_holder", default=None)


@contextmanager
def under_lease(holder: str) -> Iterator[None]:
    """Connections opened (or ``adopt``-ed) in this block belong to the lease ``holder``."""
    token = _lease_holder.set(holder)
    try:
        yield
    finally:
        _lease_holder.reset(token)


def adopt(conn: Connection) -> Connection:
    """Put a connection opened before its lease was taken (a CLI push's early session) under
    the current lease, as if it had been opened in it."""
    conn.lease_holder = _lease_holder.get()
    return conn


def connect(target: Target, settings: Settings | EnvSettings,
            timeout: float | None = None, *, poll: bool = False) -> Connection:
    """Open ``target``'s connection. Both SSH transports check the host against the same keys
    (``hostkeys``: the database's for this host, then the known_hosts files) and log in with
    this worker's key (``worker_key``). ``poll``: for a telemetry poll, whose key exchange
    may be the cheaper classical one (``sshclient.poll_kex``; paramiko has no other)."""
    timeout = timeout or settings.timeout_s
    limits = OutputLimits.from_mb(settings.max_line_mb, settings.max_output_mb)
    _refuse_if_aborted(target)
    conn: Connection
    if target.connection == "local":
        from orchestrator.transport.local import LocalConnection

        conn = LocalConnection(target, limits)
    else:
        from orchestrator.transport.hostkeys import known_hosts_entry

        entry = known_hosts_entry(target.address, target.port)
        target = worker_key(target, settings)
        if ssh_connector(target, settings) == "openssh":
            from orchestrator.transport.hostkeys import trusted_keys
            from orchestrator.transport.openssh import OpenSshConnection

            conn = OpenSshConnection(target, trusted_keys(settings, entry), timeout, limits,
                                     poll=poll, persist_s=settings.ssh_persist_s,
                                     login_s=settings.ssh_login_timeout_s)
        else:
            from orchestrator.transport.hostkeys import load_known
            from orchestrator.transport.ssh import SshConnection

            conn = SshConnection(target, load_known(settings, entry), timeout, limits,
                                 login_s=settings.ssh_login_timeout_s)
    conn.lease_holder = _lease_holder.get()
    _open.add(conn)
    if _aborted.is_set():  # opened while abort_all ran
        conn.cancel()
        _refuse_if_aborted(target)
    return conn


def worker_key(target: Target, settings: Settings | EnvSettings) -> Target:
    """The target with the private key this worker logs in with. ``EDGEFLEET_SSH_KEY_FILE``
    (a per-worker setting: keys are never shared through the DB) replaces the inventory's
    ``ansible_ssh_private_key_file``, a path on the host that loaded the inventory, which
    another worker's host need not have; without it, a key path missing here is named."""
    if settings.ssh_key_file is not None:
        return replace(target, key_file=str(settings.ssh_key_file))
    if target.key_file and not Path(target.key_file).is_file():
        raise TransportError(
            f"{target.name}: the SSH key {target.key_file} (ansible_ssh_private_key_file) is "
            "not on this host; set EDGEFLEET_SSH_KEY_FILE to this worker's private key")
    return target


def ssh_connector(target: Target, settings: Settings | EnvSettings) -> str:
    """``openssh`` (the system ``ssh``) or ``paramiko`` for an SSH device: the inventory's
    ``ansible_connection: openssh|paramiko`` decides for its device; plain ``ssh`` (Ansible's
    default, which is OpenSSH there too) follows ``EDGEFLEET_SSH_CONNECTOR``, whose default
    ``auto`` takes OpenSSH where ``ssh`` is on PATH."""
    if target.connection in ("openssh", "paramiko"):
        return target.connection
    if settings.ssh_connector != "auto":
        return settings.ssh_connector
    from orchestrator.transport.sshclient import available

    return "openssh" if available() else "paramiko"


def _refuse_if_aborted(target: Target) -> None:
    if _aborted.is_set():
        raise TransportError(f"{target.name}: not contacted: the operation was cancelled")


def abort_all() -> None:
    """Abort every device connection of this process and refuse new ones: the in-flight
    sessions of a cancelled CLI command end now instead of when their device finishes (the
    device's agent, its output gone, stops too). For a process doing one operation (the
    CLI); the server cancels its jobs one by one (jobs.execute)."""
    _aborted.set()
    for conn in list(_open):
        try:
            conn.cancel()
        except Exception as exc:  # one device's teardown error must not spare the others
            log.warning("%s: abort failed: %s", conn.target.name, exc)


def abort_device(name: str, holder: str) -> int:
    """Abort this process's open connections to the device ``name`` under the lease ``holder``
    (lost: another operation now owns the device, so ours must stop touching it). Lease-free
    ones (a telemetry poll) and another lease's live on. How many were aborted."""
    aborted = 0
    for _ in range(100):  # a connect() in another thread may change the set mid-copy
        try:
            opened = list(_open)
            break
        except RuntimeError:
            continue
    else:
        opened = []
    for conn in opened:
        if conn.target.name == name and conn.lease_holder == holder:
            try:
                conn.cancel()
                aborted += 1
            except Exception as exc:  # noqa: BLE001 - the others must still be aborted
                log.warning("%s: abort failed: %s", name, exc)
    return aborted
