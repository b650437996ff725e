"""One writer at a time per SQLite file inside this process, in arrival order.

Why: SQLite lets one connection write at a time and makes the others poll (its busy handler
sleeps and retries, in no order) until ``busy_timeout``. A fan-out of 50 or 200 threads that
each store a result (telemetry, a push's deployment row) then had threads polling while the
holder of the lock waited for the GIL behind them, and some gave up: "database is locked" at
forks 50 and 200 (bench/fleet_scale.py, issue 14). Here a thread's first INSERT/UPDATE/DELETE
of a transaction first takes this process's gate for that file, FIFO, and its commit or
rollback (or the pool's reset of the connection) gives it back: SQLite sees one writer from
this process, the waiting threads sleep instead of polling, and nobody times out while the
queue moves. Other processes (a CLI next to a server) still meet at SQLite's own lock.

Reads never take the gate: with the driver's default (deferred) transactions a SELECT runs
outside any transaction, so pages and lists never wait for writers (WAL).

A thread that already holds the gate through one connection and writes through a second
(a nested session) does not wait for itself; SQLite then decides, as it would without the
gate. The gate's wait is bounded (``GATE_WAIT_S`` without the queue moving), so a code path
that holds a write open while waiting for another thread's write fails with SQLite's "database
is locked", as before, instead of hanging. Bounded by the queue's progress, not by the total
wait: at 1,000 devices and forks 200 on a loaded 2-core machine each write took long enough
that the 200th in line waited past 120 s while every write before it went through, and 525
snapshots failed with "database is locked" (bench/fleet_scale.py, 2026-12-03).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

GATE_WAIT_S = 120.0
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


class WriteGate:
    """A FIFO lock held by one connection at a time, which the thread holding it does not wait
    for again (its second connection passes), and which whoever ends that connection's
    transaction releases (a pool reset may run in another thread)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0  # ticket handed to the next arrival
        self._serving = 0  # the ticket whose turn it is
        self._abandoned: set[int] = set()  # tickets whose holders stopped waiting
        self._thread: int | None = None  # the holder's thread
        self._conn: object | None = None  # the holder's DBAPI connection
        # Turns given (not skipped): what a waiter counts as the queue moving. A waiter that
        # gives up behind a stuck holder advances ``_serving`` without a write, and must not
        # restart the others' wait.
        self._granted = 0

    @property
    def holder(self) -> object | None:
        return self._conn

    def acquire(self, conn: object, timeout: float = GATE_WAIT_S) -> bool:
        """Wait for our turn, then hold the gate for ``conn``. False, holding nothing, when the
        holder is this thread (a nested session: SQLite decides) or the wait ran out."""
        me = threading.get_ident()
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._thread == me:
                return False
            ticket = self._next
            self._next += 1
            seen = self._granted
            while self._serving != ticket or self._conn is not None:
                if self._granted != seen:  # a write got its turn: only a stuck queue times out
                    seen, deadline = self._granted, time.monotonic() + timeout
                left = deadline - time.monotonic()
                if left <= 0:
                    self._abandoned.add(ticket)
                    self._skip_abandoned()
                    self._cond.notify_all()
                    return False
                self._cond.wait(left)
            self._thread, self._conn = me, conn
            self._serving += 1
            self._granted += 1
            self._skip_abandoned()
            return True

    def release(self, conn: object) -> None:
        """Give the gate back if ``conn`` holds it (any other connection: nothing to do)."""
        with self._cond:
            if self._conn is conn:
                self._thread = self._conn = None
                self._cond.notify_all()

    def _skip_abandoned(self) -> None:
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1


def _is_write(statement: str) -> bool:
    return statement.lstrip()[:7].upper().startswith(_WRITES)


def _raw(conn: Any) -> Any:
    """The sqlite3 connection behind a pool's proxy (or itself)."""
    return getattr(conn, "dbapi_connection", None) or conn


def install(engine: Engine) -> WriteGate:
    """Give ``engine`` (one SQLite file) its gate: taken before a transaction's first write,
    given back once the transaction has ended, however it ends (after the commit itself, so
    the next writer never meets SQLite's lock and its polling)."""
    gate = WriteGate()
    dialect = engine.dialect
    commit, rollback = dialect.do_commit, dialect.do_rollback

    def before_execute(_conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        raw = cursor.connection
        if gate.holder is not raw and _is_write(statement):
            gate.acquire(raw)

    def do_commit(dbapi_connection: Any) -> None:
        try:
            commit(dbapi_connection)
        finally:
            gate.release(_raw(dbapi_connection))

    def do_rollback(dbapi_connection: Any) -> None:
        try:
            rollback(dbapi_connection)
        finally:
            gate.release(_raw(dbapi_connection))

    def gone(dbapi_connection: Any, *_args: Any) -> None:
        gate.release(_raw(dbapi_connection))

    dialect.do_commit = do_commit  # type: ignore[method-assign]
    dialect.do_rollback = do_rollback  # type: ignore[method-assign]
    event.listen(engine, "before_cursor_execute", before_execute)
    event.listen(engine.pool, "invalidate", gone)
    event.listen(engine.pool, "close", gone)
    return gate
