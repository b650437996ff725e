"""Per-device leases: a device never runs two benchmarks, or a push and a benchmark, at once —
even when they come from two CLI processes, or the CLI and the server, or two hosts.

A lease is a row keyed by device name, taken with an INSERT (atomic in the DB) or by replacing
an expired row with a conditional UPDATE. Its holder heartbeats it (every quarter of the TTL,
from one thread per process), so a lease outlives its holder by at most ``lease_ttl_s``
(default 60 s): a killed or frozen (SIGSTOP) holder on any host frees the device within a
minute, while a holder that is alive keeps it however long its benchmark takes. A holder on
*this* host whose process is gone is detected at once, by its pid, and its lease taken over;
expired leases are also deleted by every worker's periodic pass (``release_expired``), and a dead
worker's leases with its jobs (``release_held_by``, orchestrator.jobs.liveness).

A job's work waits for a busy device instead of failing (``waiting_as``: the job sets how long,
what to show — "waiting for pi3: bench #12" — and its cancel check). Carried in a context
variable, which the fan-out copies into each device's thread, so the device steps in deploy,
runs and evals need no extra parameter; outside a job (a library call, a test) a busy device
still raises DeviceBusy at once.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, tuple_, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.dbclock import db_now
from orchestrator.core.errors import EdgeFleetError
from orchestrator.core.heartbeat import Heartbeat
from orchestrator.core.hostid import this_host
from orchestrator.core.models import DeviceLease
from orchestrator.core.utc import as_utc
from orchestrator.transport import abort_device, under_lease

log = logging.getLogger(__name__)


class DeviceBusy(EdgeFleetError):
    """The device is leased by another operation: which, and (if run as a job) which job."""

    def __init__(self, message: str, device: str = "", operation: str = "",
                 job_id: int | None = None, holder: str = "") -> None:
        super().__init__(message)
        self.device, self.operation, self.job_id, self.holder = device, operation, job_id, holder

    @property
    def waiting(self) -> str:
        """What a job waiting for the device shows: ``waiting for pi3: bench #12``."""
        who = f"#{self.job_id}" if self.job_id is not None else f"(by {self.holder})"
        return f"waiting for {self.device}: {self.operation} {who}"


class LeaseLost(EdgeFleetError):
    """The device's lease went to another operation while this one held it."""


@dataclass(frozen=True)
class Waiting:
    """How a job's work waits for a busy device (``waiting_as``)."""

    job_id: int | None  # recorded on the leases it takes
    wait_s: float  # then the device fails "busy"
    # (device, "waiting for pi3: bench #12"), and (device, None) once it has the lease.
    on_wait: Callable[[str, str | None], None]
    check: Callable[[str], None]  # called while waiting; raises to stop (a cancelled job)
    poll_s: float = 0.5


_waiting: ContextVar[Waiting | None] = ContextVar("edgefleet_lease_waiting", default=None)


@contextmanager
def waiting_as(policy: Waiting) -> Iterator[None]:
    """Leases taken in this block (and the fan-out threads it starts) wait per ``policy``."""
    token = _waiting.set(policy)
    try:
        yield
    finally:
        _waiting.reset(token)


def holder_id() -> str:
    return f"{this_host()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


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
    return owner_host == this_host() and pid.isdigit() and not _pid_alive(int(pid))


def acquire(settings: Settings, device: str, operation: str, holder: str,
            ttl_s: float | None = None, job_id: int | None = None) -> None:
    ttl = settings.lease_ttl_s if ttl_s is None else ttl_s
    try:
        with session_scope(settings) as session:
            now = db_now(session)  # one clock for every host (core.dbclock)
            expires = now + timedelta(seconds=ttl)
            session.add(DeviceLease(device_name=device, holder=holder, operation=operation,
                                    acquired_at=now, expires_at=expires, job_id=job_id))
        return
    except IntegrityError:
        pass
    with session_scope(settings) as session:
        current = session.get(DeviceLease, device)
        if current is None:  # released between our two statements: try once more
            pass
        else:
            now = db_now(session)
            expires = now + timedelta(seconds=ttl)
            stale = DeviceLease.expires_at < now  # type: ignore[operator]
            if holder_gone(current.holder):
                stale = DeviceLease.holder == current.holder  # type: ignore[assignment]
            taken = session.execute(
                update(DeviceLease).where(DeviceLease.device_name == device, stale)
                .values(holder=holder, operation=operation, acquired_at=now, expires_at=expires,
                        job_id=job_id)
            ).rowcount
            if taken:
                if current.holder != holder:
                    log.warning("%s: took over the lease of %s (%s)", device, current.holder,
                                "its process is gone" if holder_gone(current.holder)
                                else "it expired")
                return
            busy = (current.operation, current.acquired_at, current.holder, current.job_id)
    if current is None:
        return acquire(settings, device, operation, holder, ttl_s, job_id)
    job = f" (job #{busy[3]})" if busy[3] is not None else ""
    raise DeviceBusy(
        f"{device}: busy with a {busy[0]}{job} (since {busy[1]:%Y-%m-%d %H:%M:%S} UTC, by "
        f"{busy[2]}); try again when it finishes", device, busy[0], busy[3], busy[2])


def acquire_waiting(settings: Settings, device: str, operation: str, holder: str,
                    policy: Waiting | None) -> None:
    """``acquire``, waiting while the device is busy when a job's ``policy`` says so (at most
    ``wait_s``; then DeviceBusy saying how long it waited)."""
    if policy is None:
        return acquire(settings, device, operation, holder)
    deadline = time.monotonic() + policy.wait_s
    shown: str | None = None
    while True:
        try:
            acquire(settings, device, operation, holder, job_id=policy.job_id)
        except DeviceBusy as busy:
            if time.monotonic() >= deadline:
                raise DeviceBusy(f"{busy}; waited {policy.wait_s:g} s for it "
                                 "(EDGEFLEET_LEASE_WAIT_S)", busy.device, busy.operation,
                                 busy.job_id, busy.holder) from None
            if busy.waiting != shown:
                shown = busy.waiting
                log.info("%s", shown)
                policy.on_wait(device, shown)
            policy.check(device)
            time.sleep(policy.poll_s)  # the poll interval of a bounded wait for the lease
            continue
        if shown is not None:
            policy.on_wait(device, None)
        return


def release_expired(settings: Settings) -> list[str]:
    """Delete leases past their expiry (their holder stopped heartbeating, on any host): the
    devices they name are free again, and the Fleet page no longer shows them busy."""
    with session_scope(settings) as session:
        now = db_now(session)
        # Not the leases this process renews: a live holder whose renewal waited on a busy
        # database is slow, not dead (as the job sweep spares the jobs it beats).
        expired = [lease for lease in session.exec(select(DeviceLease).where(
            DeviceLease.expires_at < now)).all()  # type: ignore[operator]
            if not _heartbeat.holds((lease.device_name, lease.holder))]
        for lease in expired:
            session.execute(delete(DeviceLease).where(
                DeviceLease.device_name == lease.device_name,
                DeviceLease.holder == lease.holder,
                DeviceLease.expires_at < now))  # type: ignore[operator]
    return [lease.device_name for lease in expired]


def release_held_by(settings: Settings, process: str, job_ids: Sequence[int]) -> list[str]:
    """Delete the leases of the process ``host:pid`` whose jobs ``job_ids`` were found dead by
    their heartbeats, and its other leases that have expired (a dead process renews none).

    Not every lease it holds: a live process whose one job could not record its end (the
    database was busy past its timeout) stops that job's heartbeat only, and its other jobs'
    leases are renewed and theirs; deleting them made those jobs lose their devices."""
    host, _, pid = process.partition(":")
    with session_scope(settings) as session:
        now = db_now(session)
        held = [lease for lease in session.exec(select(DeviceLease)).all()
                if lease.holder.split(":")[:2] == [host, pid.partition(":")[0]]
                and (lease.job_id in job_ids or as_utc(lease.expires_at) < now)]
        freed = []
        for lease in held:
            # By holder as read, not by device: a live process may have taken the device
            # over since the read (acquire: holder_gone), and its lease is not ours to free.
            if lease.job_id in job_ids:
                still = DeviceLease.job_id == lease.job_id
            else:
                still = DeviceLease.expires_at < now  # type: ignore[assignment,operator]
            if session.execute(delete(DeviceLease).where(
                    DeviceLease.device_name == lease.device_name,
                    DeviceLease.holder == lease.holder, still)).rowcount:
                freed.append(lease.device_name)
    return freed


def release_dead_holders(settings: Settings) -> list[str]:
    """Free leases whose holder was a process on this host that no longer exists (a crashed
    CLI or a killed server)."""
    freed = []
    with session_scope(settings) as session:
        for lease in session.exec(select(DeviceLease)).all():
            # By holder as read: a waiting job may have taken the device over since the read.
            if holder_gone(lease.holder) and session.execute(delete(DeviceLease).where(
                    DeviceLease.device_name == lease.device_name,
                    DeviceLease.holder == lease.holder)).rowcount:
                freed.append(lease.device_name)
    return freed


def release(settings: Settings, device: str, holder: str) -> None:
    with session_scope(settings) as session:
        session.execute(delete(DeviceLease).where(DeviceLease.device_name == device,
                                                  DeviceLease.holder == holder))


def renew(settings: Settings, device: str, holder: str) -> bool:
    """Push the lease's expiry a TTL ahead; False if it is no longer ours (it expired while
    this process was frozen, and someone took it). ``renew_all`` of one."""
    return (device, holder) in renew_all(settings, [(device, holder)])


def held_by(settings: Settings, device: str, holder: str) -> bool:
    """Whether ``holder`` still holds ``device``'s lease (a read: the block's end asks it,
    then releases)."""
    with session_scope(settings) as session:
        return session.exec(select(DeviceLease.device_name).where(
            DeviceLease.device_name == device, DeviceLease.holder == holder)).first() is not None


def is_held(settings: Settings, device: str) -> bool:
    """Whether any live lease holds ``device`` now (a read; an expired one does not count)."""
    with session_scope(settings) as session:
        now = db_now(session)
        return session.exec(select(DeviceLease.device_name).where(
            DeviceLease.device_name == device,
            DeviceLease.expires_at >= now)).first() is not None  # type: ignore[operator]


_lost: set[tuple[str, str]] = set()  # (device, holder) whose lease another process took


def renew_all(settings: Settings, pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Renew every (device, holder) lease of ``pairs`` in one UPDATE; the pairs still held.

    One statement per beat, not one transaction per lease: at forks 200 on SQLite each
    write waits its turn at the write gate, and 200 renewals queued one after another made
    leases of a live process expire (then its own sweep freed them and it aborted its work)."""
    if not pairs:
        return set()
    key = tuple_(DeviceLease.device_name, DeviceLease.holder)
    with session_scope(settings) as session:
        expires = db_now(session) + timedelta(seconds=settings.lease_ttl_s)
        session.execute(update(DeviceLease).where(key.in_(list(pairs)))
                        .values(expires_at=expires))
        return {(device, holder) for device, holder in session.execute(
            select(DeviceLease.device_name, DeviceLease.holder).where(key.in_(list(pairs))))}


def _renew(held: list[tuple[tuple[str, str], Settings]]) -> None:
    by_db: dict[str, tuple[Settings, list[tuple[str, str]]]] = {}
    for pair, settings in held:
        by_db.setdefault(settings.db_url, (settings, []))[1].append(pair)
    for settings, pairs in by_db.values():
        try:
            renewed = renew_all(settings, pairs)
        except OperationalError as exc:  # the DB was busy: the next beat retries
            log.warning("%s: lease heartbeat failed: %s", ", ".join(d for d, _ in pairs), exc)
            continue
        for device, holder in pairs:
            if (device, holder) not in renewed and (device, holder) not in _lost \
                    and _heartbeat.holds((device, holder)):
                # (Still held: not a lease its block released since this beat began, as
                # ``leased`` stops renewing before it releases.)
                # Frozen past the TTL (SIGSTOP, a stalled VM) and someone took the device:
                # two operations must never drive it at once, so ours stops here.
                # Marked first: a block that its aborted connection lets end at once must
                # already see the loss, or it would pass for a success (abort_device logs,
                # and does not raise, what one connection's teardown raises).
                _lost.add((device, holder))
                aborted = abort_device(device, holder)
                log.error("%s: lost its lease (expired while this process was stopped?) to "
                          "another operation; %d connection(s) to it aborted", device, aborted)


_heartbeat: Heartbeat[tuple[str, str]] = Heartbeat(
    "edgefleet-lease-heartbeat", lambda s: s.lease_ttl_s, _renew)


@contextmanager
def leased(settings: Settings, device: str, operation: str) -> Iterator[str]:
    """Hold ``device`` for ``operation`` while the block runs. If another process takes the
    lease meanwhile (this one was frozen past its TTL), this process's connections to the
    device are aborted and the block ends in ``LeaseLost``, whatever it did: those it opened in
    the block (or ``transport.adopt``-ed), not a lease-free telemetry poll's."""
    holder = holder_id()
    acquire_waiting(settings, device, operation, holder, _waiting.get())
    _heartbeat.hold(settings, (device, holder))
    lost = LeaseLost(f"{device}: stopped: its lease was taken by another operation while this "
                     "process was not renewing it (frozen past EDGEFLEET_LEASE_TTL_S?); what it "
                     "did meanwhile is not to be trusted: run the command again")
    try:
        with under_lease(holder):
            yield holder
    except BaseException as exc:
        if (device, holder) in _lost:
            raise lost from exc
        raise
    else:  # an aborted command may also just end (its output cut short): the same verdict
        if (device, holder) in _lost:
            raise lost
        # Asked once more, now: a holder thawed after another operation took the device may
        # end its block (its answer already read) before the next heartbeat would notice,
        # and what it did there must not pass for a success.
        _heartbeat.drop((device, holder))
        try:
            still_ours = held_by(settings, device, holder)
        except OperationalError as exc:  # busy: as a heartbeat would, take it as renewed
            log.warning("%s: lease check at the end failed: %s", device, exc)
            still_ours = True
        if not still_ours:
            raise lost
    finally:
        _heartbeat.drop((device, holder))
        _lost.discard((device, holder))
        try:
            release(settings, device, holder)
        except OperationalError as exc:
            # The block's outcome stands (a push that activated stays a success); with its
            # heartbeat dropped the lease expires within its TTL and the next sweep frees it.
            log.warning("%s: releasing the lease failed (it expires within %g s): %s", device,
                        settings.lease_ttl_s, exc)
