"""Migrations as one locked step (issue 14): however many processes start at once on a new or
older database, one upgrades and the others wait for it, then find the schema at head.

Unlocked, each process ran ``alembic upgrade`` itself: three started together on an empty
database crashed two (PostgreSQL ``UniqueViolation``, SQLite "table already exists"). The lock
is PostgreSQL's session advisory lock (held by one connection, released when it closes, so a
killed process cannot leave it held) or, on SQLite, ``flock`` on a file next to the DB (the
kernel drops it with the process). A database at a revision this code does not know was
upgraded by newer code: it is refused with both revisions named, never "upgraded".

Imported by ``orchestrator.core.db`` only when the schema is not current; alembic is imported
only inside the functions that need it (tests/unit/cli/test_cli_startup.py).
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from orchestrator.core.dbfile import head_revision, known_revisions, sqlite_file
from orchestrator.core.errors import EdgeFleetError

# The key of the advisory lock: any fixed 64-bit number, the same in every EdgeFleet process
# (b"edgefleet" read as an integer, truncated to a signed bigint).
ADVISORY_KEY = int.from_bytes(b"edgeflee", "big") & 0x7FFF_FFFF_FFFF_FFFF


class SchemaError(EdgeFleetError):
    """The database's schema cannot be used by this code."""


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL: show nothing of it
        return "<database URL>"


def read_revision(engine: Engine) -> str | None:
    """The revision the DB is stamped with; None for a new DB (no ``alembic_version`` table)
    or one with no single row."""
    from sqlalchemy import inspect

    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).fetchall()
    return rows[0][0] if len(rows) == 1 else None


@dataclass(frozen=True)
class Status:
    """Where a database stands against this code: ``state`` is current, behind (an upgrade
    will bring it to head), empty (no schema yet) or ahead (newer code migrated it)."""

    url: str  # redacted
    current: str | None
    head: str | None
    state: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def status(engine: Engine, url: str) -> Status:
    current, head = read_revision(engine), head_revision()
    if current is None:
        state = "empty"
    elif current == head:
        state = "current"
    elif head is None or current in known_revisions():
        state = "behind"  # (head None: the scripts' text is unreadable; alembic decides)
    else:
        state = "ahead"
    return Status(redact(url), current, head, state)


def refuse_if_ahead(found: Status) -> None:
    """A DB newer than this code: say which revisions and what to do, rather than let alembic
    fail with "Can't locate revision" or, worse, let old code write to a new schema."""
    if found.state == "ahead":
        raise SchemaError(
            f"the database {found.url} is at schema revision {found.current}, newer than this "
            f"EdgeFleet's newest ({found.head}): it was upgraded by a newer release. Upgrade "
            "EdgeFleet on this host (pip install -U edgefleet) to the release that migrated it; "
            "never downgrade the database from under the other processes")


@contextmanager
def migration_lock(engine: Engine, url: str) -> Iterator[None]:
    """Held by one process at a time per database, across hosts for PostgreSQL; other
    databases (none supported today) get no lock."""
    path = sqlite_file(url)
    if path is not None:
        with _file_lock(path.with_name(path.name + ".migrate.lock")):
            yield
    elif engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_KEY})
            conn.commit()  # hold no transaction (and no snapshot) while waiting for others
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY})
                conn.commit()
    else:
        yield


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # blocks until the holder is done
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def alembic_config(url: str) -> Any:
    """An alembic Config on our migrations for ``url``."""
    from alembic.config import Config

    from orchestrator.core.dbfile import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, url: str) -> tuple[Status, Status]:
    """Bring the DB to head under the lock: (before, after). The state is read again once the
    lock is held, so the processes that waited for another's upgrade find nothing to do."""
    refuse_if_ahead(status(engine, url))
    with migration_lock(engine, url):
        before = status(engine, url)
        refuse_if_ahead(before)
        if before.state != "current":
            from alembic import command

            command.upgrade(alembic_config(url), "head")
        after = status(engine, url)
    return before, after
