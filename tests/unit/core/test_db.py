"""The database is made by alembic migrations, and the models never drift from them."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlmodel import SQLModel, select

import orchestrator.core.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from orchestrator.core.config import Settings
from orchestrator.core.db import (
    MIGRATIONS_DIR,
    alembic_config,
    current_revision,
    get_engine,
    session_scope,
)
from orchestrator.core.db import head_revision as cheap_head_revision
from orchestrator.core.models import Bundle, Device, UTCDateTime
from tests import pg_server

REPO = Path(__file__).resolve().parents[3]


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    heads = script.get_heads()
    assert len(heads) == 1, f"migrations have several heads: {heads}"
    return heads[0]


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """As migrations/env.py: procrastinate's tables are not our models."""
    return not (type_ == "table" and (name or "").startswith("procrastinate_"))


def schema_diffs(engine: sa.engine.Engine, metadata: sa.MetaData) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True,
                        "render_as_batch": True, "include_name": include_name})
        return list(compare_metadata(context, metadata))


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """A home whose database does not exist yet (SQLite), or is empty (PostgreSQL run)."""
    if pg_server.backend() == "postgresql":
        url = request.getfixturevalue("pg").create_database(empty=True)
        return Settings(home=tmp_path / "home", DATABASE_URL=url)
    return Settings(home=tmp_path / "home")


TABLES = {"alembic_version", "device", "bundle", "deployment", "run", "result", "devicelease",
          "telemetrysnapshot", "job", "schedule", "apitoken", "auditevent", "dataset",
          "browsersession", "alert", "signingkey", "hostkey"}
# On PostgreSQL, migration 0013 also applies the task engine's schema (orchestrator.jobs.engine).
PROCRASTINATE = {"procrastinate_jobs", "procrastinate_workers", "procrastinate_events",
                 "procrastinate_periodic_defers"}


def tables_of(engine: sa.engine.Engine) -> set[str]:
    """The tables at head: ours, plus procrastinate's on PostgreSQL."""
    return TABLES | (PROCRASTINATE if engine.dialect.name == "postgresql" else set())


def test_migrations_form_one_chain_ending_at_head() -> None:
    scripts = sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("*.py"))
    chain = [rev.revision for rev in ScriptDirectory.from_config(
        alembic_config("sqlite://")).walk_revisions()]
    assert len(chain) == len(scripts), (chain, scripts)
    assert scripts[-1].startswith(head_revision())
    assert MIGRATIONS_DIR == REPO / "migrations"


def test_the_cheap_head_revision_is_alembics() -> None:
    """get_engine compares the DB's alembic_version with a head read from the scripts' text
    (importing alembic costs more than the rest of a light command); it must be alembic's."""
    assert cheap_head_revision() == head_revision()


def test_the_db_is_created_by_migrations_on_postgresql(settings: Settings) -> None:
    if pg_server.backend() != "postgresql":
        pytest.skip("the PostgreSQL run's check (EDGEFLEET_TEST_DATABASE=postgresql)")
    engine = get_engine(settings)
    assert set(sa.inspect(engine).get_table_names()) == tables_of(engine)
    assert current_revision(engine) == head_revision()
    assert (settings.home / "blobs").is_dir() and (settings.home / "keys").is_dir()


@pytest.mark.sqlite_only
def test_the_db_is_created_by_migrations(settings: Settings) -> None:
    db_file = settings.home / "edgefleet.db"
    assert not db_file.exists()
    engine = get_engine(settings)
    assert db_file.is_file()
    with engine.connect() as conn:  # the engine's own connections get the pragmas
        assert conn.exec_driver_sql("pragma foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("pragma busy_timeout").scalar() == 30_000
    with sqlite3.connect(db_file) as raw:
        tables = {row[0] for row in raw.execute("select name from sqlite_master "
                                                "where type = 'table'")}
        versions = raw.execute("select version_num from alembic_version").fetchall()
        journal = raw.execute("pragma journal_mode").fetchone()[0]
    assert tables == TABLES
    assert versions == [(head_revision(),)]  # at head, stamped by alembic, not create_all
    assert journal == "wal"
    assert (settings.home / "blobs").is_dir() and (settings.home / "keys").is_dir()


def test_second_get_engine_on_the_same_url(settings: Settings) -> None:
    first = get_engine(settings)
    assert get_engine(Settings(home=settings.home, DATABASE_URL=settings.database_url)) is first
    with session_scope(settings) as session:
        session.add(Device(name="pi5-a", address="10.0.0.1"))


def _devices_seen_by_a_new_process(settings: Settings, expression: str) -> str:
    """What a fresh interpreter on this home prints for ``[expression for d in devices]``
    (it opens the DB as any command does: the version check, an upgrade if needed)."""
    env = dict(os.environ, EDGEFLEET_HOME=str(settings.home), DATABASE_URL=settings.db_url)
    code = ("from orchestrator.core.db import session_scope\n"
            "from orchestrator.core.models import Device\n"
            "from sqlmodel import select\n"
            "with session_scope() as s:\n"
            f"    print([{expression} for d in s.exec(select(Device))])\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_new_process_on_an_existing_db_upgrades_nothing_and_keeps_data(
    settings: Settings,
) -> None:
    with session_scope(settings) as session:
        session.add(Device(name="pi5-a", address="10.0.0.1", labels={"cooler": "none"}))
    assert _devices_seen_by_a_new_process(settings, "(d.name, d.labels)") == \
        "[('pi5-a', {'cooler': 'none'})]"


def test_a_new_process_upgrades_a_db_left_at_an_older_revision(settings: Settings) -> None:
    """The cheap check sees the older version and alembic upgrades, keeping the data."""
    with session_scope(settings) as session:
        session.add(Device(name="pi5-a", address="10.0.0.1"))
    engine = get_engine(settings)
    command.downgrade(alembic_config(settings.db_url), "-1")
    older = current_revision(engine)
    assert older is not None and older != head_revision()
    assert _devices_seen_by_a_new_process(settings, "d.name") == "['pi5-a']"
    assert current_revision(engine) == head_revision()
    assert schema_diffs(engine, SQLModel.metadata) == []


@pytest.mark.sqlite_only
def test_database_url_overrides_the_home_db(tmp_path: Path, settings: Settings) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    other = Settings(home=settings.home, DATABASE_URL=url)
    assert other.db_url == url
    with session_scope(other) as session:
        session.add(Bundle(name="fc", version="1", digest="0" * 64, size_bytes=1,
                           manifest_json="{}"))
    assert (tmp_path / "elsewhere.db").is_file()
    assert not (settings.home / "edgefleet.db").exists()
    with session_scope(other) as session:
        assert [b.name for b in session.exec(select(Bundle))] == ["fc"]


def test_models_match_the_migrations(settings: Settings) -> None:
    """`alembic check`: a model change without a migration fails here."""
    engine = get_engine(settings)
    assert schema_diffs(engine, SQLModel.metadata) == []


def test_the_drift_check_can_fail(settings: Settings) -> None:
    """The same comparison, against models with one column added and one index dropped."""
    engine = get_engine(settings)
    changed = sa.MetaData()
    for table in SQLModel.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["device"].append_column(sa.Column("firmware", sa.String(), nullable=True))
    deployment = changed.tables["deployment"]
    deployment.indexes = {i for i in deployment.indexes if i.name != "ix_deployment_device_name"}
    diffs = schema_diffs(engine, changed)
    kinds = sorted(str(d[0]) for d in diffs if isinstance(d, tuple))
    assert kinds == ["add_column", "remove_index"], diffs


def test_downgrade_to_base_and_back(settings: Settings) -> None:
    engine = get_engine(settings)
    config = alembic_config(settings.db_url)
    command.downgrade(config, "base")
    assert set(sa.inspect(engine).get_table_names()) == {"alembic_version"}
    command.upgrade(config, "head")
    assert set(sa.inspect(engine).get_table_names()) == tables_of(engine)
    assert schema_diffs(engine, SQLModel.metadata) == []


def test_constraints_from_the_migration_hold(settings: Settings) -> None:
    with session_scope(settings) as session:
        session.add(Bundle(name="fc", version="1", digest="a" * 64, size_bytes=1,
                           manifest_json="{}"))
    with pytest.raises(sa.exc.IntegrityError), session_scope(settings) as session:
        session.add(Bundle(name="fc", version="1", digest="b" * 64, size_bytes=1,
                           manifest_json="{}"))
    with pytest.raises(sa.exc.IntegrityError), session_scope(settings) as session:
        session.add(Device(name="pi", address="a"))
        session.add(Device(name="pi", address="b"))
    with session_scope(settings) as session:
        assert [b.digest for b in session.exec(select(Bundle))] == ["a" * 64]
        assert list(session.exec(select(Device))) == []


def test_every_datetime_column_is_utc(settings: Settings) -> None:
    """One column type for time (orchestrator.core.utc): a new datetime column left to SQLModel's
    default would hand back naive values on older SQLModel versions, and code would start
    patching tzinfo again. Its impl is the migrations' DateTime(timezone=True)."""
    datetime_columns = [c for t in SQLModel.metadata.tables.values() for c in t.columns
                        if isinstance(getattr(c.type, "impl", c.type), sa.DateTime)]
    assert len(datetime_columns) >= 20
    for column in datetime_columns:
        assert isinstance(column.type, UTCDateTime), column
        assert isinstance(column.type.impl, sa.DateTime) and column.type.impl.timezone


def test_datetimes_come_back_aware_in_utc_and_naive_ones_are_refused(
        settings: Settings) -> None:
    cet = datetime(2026, 11, 21, 10, 30, tzinfo=timezone(timedelta(hours=1)))
    with session_scope(settings) as session:
        session.add(Device(name="pi", address="a", last_seen=cet))
    with session_scope(settings) as session:
        device = session.exec(select(Device)).one()
        assert device.last_seen == cet and device.last_seen.tzinfo is UTC
        assert device.created_at.tzinfo is UTC
        assert session.exec(select(Device).where(Device.last_seen == cet)).one() is device
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), \
            session_scope(settings) as session:
        session.add(Device(name="pi2", address="b", last_seen=datetime(2026, 11, 21, 9, 30)))


def test_byte_counts_hold_64_bits(settings: Settings) -> None:
    """Migration 0009: PostgreSQL's INTEGER stopped at 2**31 - 1 (a Pi with 79 GB free failed
    every telemetry insert); SQLite never did, so this matters on the PostgreSQL run."""
    from orchestrator.core.models import Deployment, TelemetrySnapshot

    big = 79 * 10**9
    with session_scope(settings) as session:
        session.add(TelemetrySnapshot(device_name="pi", disk_free_bytes=big))
        session.add(Bundle(name="llm", version="1", digest="c" * 64, size_bytes=big * 2,
                           manifest_json="{}"))
        session.add(Deployment(device_name="pi", bytes_sent=big * 3))
    with session_scope(settings) as session:
        assert session.exec(select(TelemetrySnapshot.disk_free_bytes)).one() == big
        assert session.exec(select(Bundle.size_bytes)).one() == big * 2
        assert session.exec(select(Deployment.bytes_sent)).one() == big * 3


def test_a_postgresql_server_that_never_answers_is_given_up_on(tmp_path: Path) -> None:
    """A server that accepts the connection and never answers (a hung host, a half-open
    link): libpq's default waited for ever, in whichever thread connected (a heartbeat's
    too). Now the connection attempt ends with an error after ``connect_timeout``."""
    import socket
    import threading
    import time as clock

    from sqlalchemy.exc import OperationalError

    from orchestrator.core.db import PG_LIVENESS, make_engine, pg_liveness

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel accepts; nobody ever answers
    port = silent.getsockname()[1]
    engine = make_engine(f"postgresql+psycopg://edgefleet:pw@127.0.0.1:{port}/edgefleet")
    outcome: list[BaseException | None] = []

    def connect() -> None:
        started = clock.monotonic()
        try:
            with engine.connect():
                outcome.append(None)
        except OperationalError as exc:
            outcome.append(exc)
        outcome.append(clock.monotonic() - started)  # type: ignore[arg-type]

    trying = threading.Thread(target=connect, daemon=True)
    try:
        trying.start()
        trying.join(PG_LIVENESS["connect_timeout"] * 3 + 30)  # type: ignore[operator]
        assert not trying.is_alive(), "still waiting for a server that never answers"
        assert isinstance(outcome[0], OperationalError), outcome
    finally:
        engine.dispose()
        silent.close()
    # the URL's own setting wins over the default
    assert "connect_timeout" not in pg_liveness("postgresql+psycopg://u:p@h/d?connect_timeout=3")
    assert pg_liveness("postgresql+psycopg://u:p@h/d") == PG_LIVENESS
