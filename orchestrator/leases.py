"""Per-device leases: a device never runs two benchmarks, or a push and a benchmark, at once —
even when they come from two CLI processes or the CLI and the server.

A lease is a row keyed by device name, taken with an INSERT (atomic in the DB) or by replacing an
expired row with a conditional UPDATE; it expires so a crashed holder cannot lock a device forever.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from orchestrator.config import Settings
from orchestrator.db import session_scope
from orchestrator.errors import EdgeFleetError
from orchestrator.models import DeviceLease

DEFAULT_TTL_S = 6 * 3600.0


class DeviceBusy(EdgeFleetError):
    pass


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def acquire(settings: Settings, device: str, operation: str, holder: str,
            ttl_s: float = DEFAULT_TTL_S) -> None:
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=ttl_s)
    try:
        with session_scope(settings) as session:
            session.add(DeviceLease(device_name=device, holder=holder, operation=operation,
                                    acquired_at=now, expires_at=expires))
        return
    except IntegrityError:
        pass
    with session_scope(settings) as session:
        taken = session.execute(
            update(DeviceLease)
            .where(DeviceLease.device_name == device, DeviceLease.expires_at < now)
            .values(holder=holder, operation=operation, acquired_at=now, expires_at=expires)
        ).rowcount
        if taken:
            return
        current = session.get(DeviceLease, device)
    if current is None:  # released between our two statements: try once more
        return acquire(settings, device, operation, holder, ttl_s)
    raise DeviceBusy(
        f"{device}: busy with a {current.operation} (since "
        f"{current.acquired_at:%Y-%m-%d %H:%M:%S} UTC, by {current.holder}); try again when it "
        "finishes"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def release_dead_holders(settings: Settings) -> list[str]:
    """Free leases whose holder was a process on this host that no longer exists (a crashed
    CLI or a killed server): otherwise the device stays locked until the lease expires."""
    host = socket.gethostname()
    freed = []
    with session_scope(settings) as session:
        for lease in session.exec(select(DeviceLease)).all():
            owner_host, _, rest = lease.holder.partition(":")
            pid = rest.partition(":")[0]
            if owner_host == host and pid.isdigit() and not _pid_alive(int(pid)):
                session.delete(lease)
                freed.append(lease.device_name)
    return freed


def release(settings: Settings, device: str, holder: str) -> None:
    with session_scope(settings) as session:
        session.execute(delete(DeviceLease).where(DeviceLease.device_name == device,
                                                  DeviceLease.holder == holder))


@contextmanager
def leased(settings: Settings, device: str, operation: str) -> Iterator[str]:
    holder = holder_id()
    acquire(settings, device, operation, holder)
    try:
        yield holder
    finally:
        release(settings, device, holder)
