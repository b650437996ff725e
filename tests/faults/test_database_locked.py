"""A fan-out of 200 threads storing telemetry into one SQLite file: nobody gets "database is
locked" (bench/fleet_scale.py at forks 50 and 200 did, issue 14).

The fault, for real: 200 threads released at once, each storing a device's telemetry answer
through the product's own path (``telemetry.store_snapshot``: a snapshot row, the device row,
what it runs) into one SQLite file, with SQLite's busy timeout cut to 0.5 s so that a writer
left polling SQLite's lock for longer fails fast. Without the write gate (core.sqlitewrite)
this fails with "database is locked"; with it the threads queue in this process and all 200
are stored. The gate's own rules (order, a nested session, a bounded wait) are tested apart.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import select

from orchestrator.core import db
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Device, TelemetrySnapshot
from orchestrator.core.sqlitewrite import WriteGate
from orchestrator.fleet.telemetry import store_snapshot

THREADS = 200


def answer(i: int) -> dict:
    return {"sensors": {"temp_c": 40.0 + i % 30, "throttled": 0, "throttle_flags": {}},
            "load_1m": 0.5, "mem_available_mb": 3000, "disk_free_bytes": 79 * 10**9,
            "active": None}


@pytest.mark.sqlite_only
def test_200_threads_store_telemetry_without_database_locked(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 500)
    settings = Settings()
    names = [f"pi{i:03d}" for i in range(THREADS)]
    with session_scope(settings) as session:
        for name in names:
            session.add(Device(name=name, address="127.0.0.1"))
    start = threading.Barrier(THREADS)

    def store(i: int) -> list[str]:
        start.wait()
        return store_snapshot(settings, names[i], answer(i))

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(store, range(THREADS)))  # re-raises "database is locked"
    assert results == [[]] * THREADS
    with session_scope(settings) as session:
        stored = session.exec(select(func.count()).select_from(TelemetrySnapshot)).one()
        seen = session.exec(select(func.count()).select_from(Device)
                            .where(Device.last_seen.is_not(None))).one()  # type: ignore[union-attr]
    assert (stored, seen) == (THREADS, THREADS)


def test_the_gate_lets_writers_in_in_arrival_order() -> None:
    gate = WriteGate()
    first = object()
    assert gate.acquire(first)
    order: list[int] = []
    arrived = threading.Semaphore(0)

    def writer(i: int) -> None:
        conn = object()
        arrived.release()
        assert gate.acquire(conn)
        order.append(i)
        gate.release(conn)

    threads = []
    for i in range(5):  # each waits before the next arrives: tickets 1..5 in this order
        thread = threading.Thread(target=writer, args=(i,))
        thread.start()
        arrived.acquire()
        deadline = time.monotonic() + 10
        while gate._next != i + 2 and time.monotonic() < deadline:  # noqa: SLF001
            time.sleep(0.001)  # polls for a condition (its ticket is drawn), bounded
        threads.append(thread)
    gate.release(first)
    for thread in threads:
        thread.join(10)
    assert order == [0, 1, 2, 3, 4]


def test_a_nested_session_of_the_holder_passes_and_a_bounded_wait_gives_up() -> None:
    gate = WriteGate()
    outer, inner, other = object(), object(), object()
    assert gate.acquire(outer)
    assert gate.acquire(inner) is False  # the same thread: not made to wait for itself
    gate.release(inner)  # not the holder: nothing happens
    assert gate.holder is outer
    waited: list[bool] = []
    thread = threading.Thread(target=lambda: waited.append(gate.acquire(other, timeout=0.2)))
    thread.start()
    thread.join(10)
    assert waited == [False] and gate.holder is outer  # gave up, took nothing
    gate.release(outer)
    assert gate.acquire(other) and gate.holder is other  # the abandoned ticket is skipped


def test_a_long_queue_that_moves_never_gives_up() -> None:
    """The wait is bounded by the queue's progress, not by its length: 8 writers each holding
    the gate 0.3 s, each willing to wait 1.5 s for the queue to move, all get their turn (the
    last after ~2.4 s). Before, the last ones gave up (at 1,000 devices and forks 200: 525
    snapshots failed with "database is locked" while the queue moved)."""
    gate = WriteGate()
    got: list[bool] = []

    def writer() -> None:
        conn = object()
        took = gate.acquire(conn, timeout=1.5)
        got.append(took)
        if took:
            time.sleep(0.3)  # the write itself (work, not synchronisation)
            gate.release(conn)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert got == [True] * 8


def test_waiters_behind_a_stuck_holder_give_up_after_one_wait_each() -> None:
    """A waiter that gives up behind a holder that never ends its write must not count as the
    queue moving for those behind it: each gives up after its own wait (1 s here), not after
    the sum of the waits before it (6 s for the sixth)."""
    gate = WriteGate()
    assert gate.acquire(object())  # never released
    ended: list[float] = []
    started = time.monotonic()

    def writer() -> None:
        assert gate.acquire(object(), timeout=1.0) is False
        ended.append(time.monotonic() - started)

    threads = [threading.Thread(target=writer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(ended) == 6 and max(ended) < 2.5, ended
