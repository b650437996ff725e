"""Engine and sessions. The database is created and upgraded by alembic migrations, never by
``create_all``: the same path runs for a fresh demo home and for a years-old fleet DB.

Every CLI command opens the DB, so the check that the schema is current must be cheap: the
DB's ``alembic_version`` row is read with plain SQL and compared with the newest migration's
id, read from the scripts' text. Only when they differ is alembic imported and run (importing
it and loading its environment and scripts cost ~0.5 s of CPU per command when it ran on
every start)."""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, create_engine

from orchestrator.config import Settings, get_settings

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

# Ids are INTEGER primary keys: 64-bit signed in SQLite (BIGINT elsewhere). A larger number
# cannot even be bound as a query parameter (the driver raises OverflowError), and no row can
# have it, so the API, the pages and the CLI refuse one at their edge as bad input.
MAX_ROW_ID = 2**63 - 1

_engines: dict[str, Engine] = {}
_lock = threading.Lock()

# A migration script's own lines, as alembic's template writes them: revision = '0007'.
_REVISION = re.compile(r"""^revision\s*(?::[^=]*)?=\s*['"]([^'"]+)['"]""", re.M)
_DOWN_REVISION = re.compile(r"""^down_revision\s*(?::[^=]*)?=\s*(?:['"]([^'"]+)['"]|None)""",
                            re.M)


def alembic_config(url: str) -> Config:
    # Imported here, not at the top: alembic is needed only when the schema is not current.
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@functools.cache
def head_revision() -> str | None:
    """The newest migration's revision id, read from the scripts' text without importing
    alembic: the one revision that no script names as its ``down_revision`` (the chain is
    linear, tests/unit/test_db.py checks it and that this agrees with alembic). None when the
    scripts cannot be read that way (then alembic decides, as it always did)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        revision, down = _REVISION.search(text), _DOWN_REVISION.search(text)
        if revision is None or down is None:
            return None
        revisions.add(revision.group(1))
        if down.group(1):
            parents.add(down.group(1))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


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
    already there costs one SELECT; otherwise alembic upgrades it (a fresh home, an older
    fleet DB; a DB newer than this code fails in alembic, naming the unknown revision)."""
    head = head_revision()
    if head is not None and current_revision(engine) == head:
        return
    from alembic import command  # here, not at the top: see the module docstring

    command.upgrade(alembic_config(url), "head")


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def get_engine(settings: Settings | None = None) -> Engine:
    """One engine per URL per process, brought to head the first time it is asked for."""
    settings = settings or get_settings()
    url = settings.db_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                settings.ensure_dirs()
                engine = create_engine(url, connect_args={"check_same_thread": False})
                event.listen(engine, "connect", _sqlite_pragmas)
            else:
                engine = create_engine(url, pool_pre_ping=True)
            ensure_schema(engine, url)
            _engines[url] = engine
    return engine


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(get_engine(settings), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
