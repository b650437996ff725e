"""Per-device leases: a device never runs two benchmarks, or a push and a benchmark, at once —
even when they come from two CLI processes, or the CLI and the server, or two hosts.

A lease is a row keyed by device name, taken with an INSERT (atomic in the DB) or by replacing
an expired row with a conditional UPDATE. Its holder heartbeats it (every quarter of the TTL,
from one thread per process), so a lease outlives its holder by at most ``lease_ttl_s``
(default 60 s): a killed or frozen (SIGSTOP) holder on any host frees the device within a
minute, while a holder that is alive keeps it however long its benchmark takes. A holder on
*this* host whose process is gone is detected at once, by its pid, and its lease taken over.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError
from orchestrator.core.models import DeviceLease

log = logging.getLogger(__name__)


class DeviceBusy(EdgeFleetError):
    pass


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def holder_gone(holder: str) -> bool:
    """Whether ``holder`` (host:pid:token) was a process on this host that no longer exists.
    Another host's holders cannot be checked from here: their heartbeat decides."""
    owner_host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    return owner_host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid))


def acquire(settings: Settings, device: str, operation: str, holder: str,
            ttl_s: float | None = None) -> None:
    ttl = settings.lease_ttl_s if ttl_s is None else ttl_s
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=ttl)
    try:
        with session_scope(settings) as session:
            session.add(DeviceLease(device_name=device, holder=holder, operation=operation,
                                    acquired_at=now, expires_at=expires))
        return
    except IntegrityError:
        pass
    with session_scope(settings) as session:
        current = session.get(DeviceLease, device)
        if current is None:  # released between our two statements: try once more
            pass
        else:
            stale = DeviceLease.expires_at < now  # type: ignore[operator]
            if holder_gone(current.holder):
                stale = DeviceLease.holder == current.holder  # type: ignore[assignment]
            taken = session.execute(
                update(DeviceLease).where(DeviceLease.device_name == device, stale)
                .values(holder=holder, operation=operation, acquired_at=now, expires_at=expires)
            ).rowcount
            if taken:
                if current.holder != holder:
                    log.warning("%s: took over the lease of %s (%s)", device, current.holder,
                                "its process is gone" if holder_gone(current.holder)
                                else "it expired")
                return
            busy = (current.operation, current.acquired_at, current.holder)
    if current is None:
        return acquire(settings, device, operation, holder, ttl_s)
    raise DeviceBusy(
        f"{device}: busy with a {busy[0]} (since {busy[1]:%Y-%m-%d %H:%M:%S} UTC, by "
        f"{busy[2]}); try again when it finishes"
    )


def release_dead_holders(settings: Settings) -> list[str]:
    """Free leases whose holder was a process on this host that no longer exists (a crashed
    CLI or a killed server)."""
    freed = []
    with session_scope(settings) as session:
        for lease in session.exec(select(DeviceLease)).all():
            if holder_gone(lease.holder):
                session.delete(lease)
                freed.append(lease.device_name)
    return freed


def release(settings: Settings, device: str, holder: str) -> None:
    with session_scope(settings) as session:
        session.execute(delete(DeviceLease).where(DeviceLease.device_name == device,
                                                  DeviceLease.holder == holder))


def renew(settings: Settings, device: str, holder: str) -> bool:
    """Push the lease's expiry a TTL ahead; False if it is no longer ours (it expired while
    this process was frozen, and someone took it)."""
    expires = datetime.now(UTC) + timedelta(seconds=settings.lease_ttl_s)
    with session_scope(settings) as session:
        return bool(session.execute(
            update(DeviceLease).where(DeviceLease.device_name == device,
                                      DeviceLease.holder == holder)
            .values(expires_at=expires)).rowcount)


class _Heartbeat:
    """One daemon thread per process renewing every lease this process holds."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], Settings] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def hold(self, settings: Settings, device: str, holder: str) -> None:
        with self._lock:
            self._held[(device, holder)] = settings
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._beat, daemon=True,
                                                name="edgefleet-lease-heartbeat")
                self._thread.start()
            self._wake.notify()

    def drop(self, device: str, holder: str) -> None:
        with self._lock:
            self._held.pop((device, holder), None)

    def _beat(self) -> None:
        while True:
            with self._lock:
                if not self._held:
                    self._thread = None
                    return
                interval = min(s.lease_ttl_s for s in self._held.values()) / 4
                self._wake.wait(max(0.05, interval))
                held = list(self._held.items())
            for (device, holder), settings in held:
                try:
                    if not renew(settings, device, holder):
                        log.warning("%s: lost its lease (expired while this process was "
                                    "stopped?); another operation may now use it", device)
                except OperationalError as exc:  # the DB was busy: the next beat retries
                    log.warning("%s: lease heartbeat failed: %s", device, exc)


_heartbeat = _Heartbeat()


@contextmanager
def leased(settings: Settings, device: str, operation: str) -> Iterator[str]:
    holder = holder_id()
    acquire(settings, device, operation, holder)
    _heartbeat.hold(settings, device, holder)
    try:
        yield holder
    finally:
        _heartbeat.drop(device, holder)
        release(settings, device, holder)
