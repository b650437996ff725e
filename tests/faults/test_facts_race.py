"""A telemetry store and a facts refresh of the same device at once: the facts the refresh
wrote are not overwritten by the snapshot's older copy of them.

The fault, for real: ``telemetry.store_snapshot`` merges the new sensors into the device's
JSON facts (read, modify, write). Were the row read before its write transaction began, an
``agents`` facts refresh (``record_facts``) committing in between would be lost when the
snapshot commits its stale copy. Here the snapshot is held right after it has read the device
row (an engine event in its thread) while the refresh runs in a second thread; then the
snapshot goes on. The refresh must land after the snapshot (SQLite: the write gate it waits at;
PostgreSQL: the row lock of the snapshot's FOR UPDATE read), so its facts survive.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlmodel import select

from orchestrator.core.config import Settings
from orchestrator.core.db import get_engine, session_scope
from orchestrator.core.models import Device, TelemetrySnapshot
from orchestrator.fleet.telemetry import store_snapshot
from orchestrator.inventory.devices import record_facts

WAIT_S = 30.0  # bound on every wait: a broken build fails instead of hanging


def test_a_facts_refresh_during_a_telemetry_store_is_not_overwritten(home: Path) -> None:
    settings = Settings()
    with session_scope(settings) as session:
        session.add(Device(name="pi1", address="127.0.0.1", facts={"hostname": "stale"}))
    engine = get_engine(settings)
    snapshot_read = threading.Event()  # the snapshot has read the device row
    go_on = threading.Event()  # ... and may continue
    refresh_read = threading.Event()  # the refresh has read the row (and will write it)
    threads: dict[str, int] = {}

    def after(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sql = statement.lstrip().upper()
        if not (sql.startswith("SELECT") and "FROM DEVICE" in sql):
            return
        if threading.get_ident() == threads.get("refresh"):
            refresh_read.set()
        elif threading.get_ident() == threads.get("snapshot") and not snapshot_read.is_set():
            snapshot_read.set()
            assert go_on.wait(WAIT_S)

    errors: list[BaseException] = []

    def run(role: str, work: Any) -> threading.Thread:
        def body() -> None:
            threads[role] = threading.get_ident()
            try:
                work()
            except BaseException as exc:  # re-raised by the test below
                errors.append(exc)
        thread = threading.Thread(target=body, name=role)
        thread.start()
        return thread

    def refresh() -> None:
        with session_scope(settings) as session:
            record_facts(session, "pi1", {"hostname": "pi1", "agent_version": "9.9"})

    event.listen(engine, "after_cursor_execute", after)
    try:
        snapshot = run("snapshot", lambda: store_snapshot(
            settings, "pi1", {"sensors": {"temp_c": 77.0, "throttled": 0xE0000}}))
        assert snapshot_read.wait(WAIT_S)
        writer = run("refresh", refresh)
        assert refresh_read.wait(WAIT_S)
        # Unsafe code lets the refresh write and commit now (well within this bound); safe code
        # keeps it waiting for the snapshot, and the bound runs out.
        writer.join(2.0)
        go_on.set()
        snapshot.join(WAIT_S)
        writer.join(WAIT_S)
    finally:
        go_on.set()
        event.remove(engine, "after_cursor_execute", after)
    assert not errors, errors
    assert not snapshot.is_alive() and not writer.is_alive()
    with session_scope(settings) as session:
        device = session.exec(select(Device).where(Device.name == "pi1")).one()
        assert device.facts == {"hostname": "pi1", "agent_version": "9.9"}
        assert device.agent_version == "9.9"
        snapshots = session.exec(select(TelemetrySnapshot)).all()
        assert [s.temp_c for s in snapshots] == [77.0]
