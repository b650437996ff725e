"""Engine and sessions. The database is created and upgraded by alembic migrations, never by
``create_all``: the same path runs for a fresh demo home and for a years-old fleet DB.

Every CLI command opens the DB, so the check that the schema is current must be cheap: the
DB's ``alembic_version`` row is read with plain SQL and compared with the newest migration's
id, read from the scripts' text (``orchestrator.core.dbfile``). Only when they differ is alembic
imported and run, under a lock (``orchestrator.core.schema``; importing and running it to find
nothing to do cost ~0.4 s of CPU per command when it ran on every start)."""

from __future__ import annotations

import atexit
import json
import math
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, DatabaseError, DBAPIError, OperationalError
from sqlmodel import Session, create_engine

from orchestrator.core import sqlitewrite
from orchestrator.core.config import Settings, get_settings
from orchestrator.core.dbfile import MAX_ROW_ID as MAX_ROW_ID
from orchestrator.core.dbfile import MIGRATIONS_DIR as MIGRATIONS_DIR
from orchestrator.core.dbfile import head_revision as head_revision
from orchestrator.core.dbfile import sqlite_file
from orchestrator.core.errors import EdgeFleetError

if TYPE_CHECKING:
    from alembic.config import Config

    from orchestrator.core.schema import Status

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def alembic_config(url: str) -> Config:
    """An alembic Config on our migrations (orchestrator.core.schema)."""
    from orchestrator.core.schema import alembic_config as config

    return config(url)


def current_revision(engine: Engine) -> str | None:
    """The revision the DB is stamped with (its ``alembic_version`` row); None for a new DB
    (no such table) or one with no single row."""
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").fetchall()
    except DBAPIError:  # no table yet: a new DB
        return None
    return rows[0][0] if len(rows) == 1 else None


def ensure_schema(engine: Engine, url: str) -> None:
    """Bring the DB to the newest migration; the one path by which the schema changes. A DB
    already there costs one SELECT; otherwise ``schema.upgrade`` upgrades it under a lock (a
    fresh home, an older fleet DB, many processes started at once) or refuses a DB newer than
    this code (SchemaError naming both revisions)."""
    head = head_revision()
    if head is not None and current_revision(engine) == head:
        return
    from orchestrator.core import schema  # here, not at the top: see the module docstring

    schema.upgrade(engine, url)


def json_text(value: Any) -> str:
    """JSON as every JSON column stores it: NaN and +-Infinity (not JSON, RFC 8259, though
    Python writes them by default) become null. Why: one such float in a device's facts (a
    hostile or broken device's reply) made SQLite's JSON functions call the column malformed,
    and the Fleet page and sorted device lists failed for everyone; PostgreSQL refuses the
    row. The common case costs one ``json.dumps``; only a value that has one is walked."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def make_engine(url: str) -> Engine:
    """A new engine on ``url``, without touching its schema (``edgefleet db`` reads where it
    stands and upgrades explicitly; everyone else goes through :func:`get_engine`)."""
    if url.startswith("sqlite"):
        path = sqlite_file(url)
        if path is not None:  # a DATABASE_URL outside the home: its folder, like the home's
            path.parent.mkdir(parents=True, exist_ok=True)
        # A fan-out of up to 200 threads stores results through one engine: 50 connections
        # (pooled 5, the rest opened as needed) and the write gate (core.sqlitewrite), so
        # writers queue in order in this process instead of polling SQLite's lock.
        engine = create_engine(url, connect_args={"check_same_thread": False},
                               pool_size=5, max_overflow=45, pool_timeout=60,
                               json_serializer=json_text)
        event.listen(engine, "connect", _sqlite_pragmas)
        sqlitewrite.install(engine)
        return engine
    try:
        return create_engine(url, pool_pre_ping=True, json_serializer=json_text,
                             connect_args=pg_liveness(url))
    except (ArgumentError, ValueError) as exc:  # not a URL, a port that is not a number
        from orchestrator.core.schema import redact

        raise EdgeFleetError(
            f"DATABASE_URL {redact(url)} is not a database URL ({type(exc).__name__}); write "
            "it as postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB, or unset it for the "
            "SQLite file under EDGEFLEET_HOME") from None
    except ModuleNotFoundError as exc:  # postgresql:// means psycopg2 to SQLAlchemy
        from orchestrator.core.schema import redact

        raise EdgeFleetError(
            f"DATABASE_URL {redact(url)}: its driver ({exc.name}) is not installed. For "
            "PostgreSQL: pip install 'edgefleet[postgres]' and write the URL as "
            "postgresql+psycopg://USER:PASSWORD@HOST/DB") from None


# libpq's defaults wait for ever: a connect to a server that accepted and never answered, or
# a query on a connection whose peer vanished (a host gone without a FIN), hung the thread that
# made it: a heartbeat thread among them, so this process's leases and jobs lapsed while it
# waited. Bounded here unless the DATABASE_URL sets its own.
PG_LIVENESS = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30,
               "keepalives_interval": 10, "keepalives_count": 3, "tcp_user_timeout": 60_000}


def pg_liveness(url: str) -> dict[str, object]:
    """``PG_LIVENESS``, less what ``url``'s query already says."""
    from sqlalchemy.engine import make_url

    given = make_url(url).query
    return {key: value for key, value in PG_LIVENESS.items() if key not in given}


def unreachable(url: str, exc: OperationalError) -> EdgeFleetError:
    """The database cannot be opened: which one (its password hidden), the driver's first
    line (psycopg's never contains the password) and what to check."""
    from orchestrator.core.schema import redact

    reason = str(exc.orig or exc).strip().splitlines()[0]
    return EdgeFleetError(f"cannot open the database {redact(url)}: {reason}. Check that it is "
                          "running and reachable from this host, and DATABASE_URL")


def not_a_database(url: str, exc: DatabaseError) -> EdgeFleetError:
    """The database answered but is not one (a SQLite file overwritten or corrupt)."""
    from orchestrator.core.schema import redact

    reason = str(exc.orig or exc).strip().splitlines()[0]
    path = sqlite_file(url)
    if path is not None:
        return EdgeFleetError(f"{path} is not a readable SQLite database ({reason}): restore it "
                              "from a backup, or move it aside and run `edgefleet db upgrade` "
                              "to start an empty one (then `edgefleet inventory sync`)")
    return EdgeFleetError(f"the database {redact(url)} refused the schema check ({reason})")


# How long a connection waits for another process's write (a CLI next to a server; this
# process's own writers queue at the write gate first).
BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.close()


def _dispose_engines() -> None:
    """At exit: close the pooled connections (SQLite checkpoints its WAL and removes the -wal
    and -shm files when the last one closes) instead of leaving that to the garbage collector,
    which the CLI skips at exit (cli.main)."""
    for engine in list(_engines.values()):
        engine.dispose()


def engine_urls() -> set[str]:
    """The URLs this process holds an engine for."""
    with _lock:
        return set(_engines)


def forget_engines(keep: Collection[str] = ()) -> None:
    """Close and forget every engine but those of the URLs in ``keep`` (the next
    ``get_engine`` makes a new one). For a process that opens many databases one after the
    other, such as the test session: each engine pools a few connections (three descriptors
    each with SQLite's WAL), which otherwise stay open until exit."""
    with _lock:
        for url in [u for u in _engines if u not in keep]:
            _engines.pop(url).dispose()


def get_engine(settings: Settings | None = None) -> Engine:
    """One engine per URL per process, brought to head the first time it is asked for."""
    settings = settings or get_settings()
    url = settings.db_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            settings.ensure_dirs()  # blobs and keys live under the home whatever the DB
            engine = make_engine(url)
            try:
                ensure_schema(engine, url)
            except OperationalError as exc:  # the first connection: say which DB, no password
                engine.dispose()
                raise unreachable(url, exc) from None
            except DatabaseError as exc:  # "file is not a database": a corrupt SQLite file
                engine.dispose()
                raise not_a_database(url, exc) from None
            except BaseException:
                engine.dispose()
                raise
            if not _engines:
                atexit.register(_dispose_engines)
            _engines[url] = engine
    return engine


def upgrade(url: str) -> tuple[Status, Status]:
    """``edgefleet db upgrade``: the DB at ``url`` to head under the migration lock, (before,
    after); SchemaError when it is newer than this code."""
    from orchestrator.core import schema

    engine = make_engine(url)
    try:
        return schema.upgrade(engine, url)
    except OperationalError as exc:
        raise unreachable(url, exc) from None
    except DatabaseError as exc:
        raise not_a_database(url, exc) from None
    finally:
        engine.dispose()


def status(url: str) -> Status:
    """``edgefleet db current``: where the DB at ``url`` stands, changing nothing."""
    from orchestrator.core import schema

    engine = make_engine(url)
    try:
        return schema.status(engine, url)
    except OperationalError as exc:
        raise unreachable(url, exc) from None
    except DatabaseError as exc:
        raise not_a_database(url, exc) from None
    finally:
        engine.dispose()


# db_url -> time.monotonic() of this process's last failed contact with that database.
_lost: dict[str, float] = {}


def steady_s(settings: Settings) -> float:
    """How long this process has reached the database without an operational error (inf:
    never failed). Why: heartbeats written through the database stop for everyone while it is
    away; a process that just regained it cannot yet tell a dead process from one whose next
    heartbeat is still on its way (``jobs.liveness.sweep``)."""
    lost = _lost.get(settings.db_url)
    return float("inf") if lost is None else time.monotonic() - lost


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error; an operational error (the
    database unreachable, or busy past its timeout) is remembered (``steady_s``)."""
    settings = settings or get_settings()
    try:
        engine = get_engine(settings)  # the first contact (an EdgeFleetError if unreachable)
    except EdgeFleetError:
        _lost[settings.db_url] = time.monotonic()
        raise
    try:
        with Session(engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise
    except OperationalError:
        _lost[settings.db_url] = time.monotonic()
        raise
