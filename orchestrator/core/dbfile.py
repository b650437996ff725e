"""Where the DB is and which schema version it has, with the standard library only.

Every CLI command needs these answers first, and the commands that only list what the DB holds
need little else; importing SQLAlchemy, SQLModel and pydantic(-settings) to get them costs
~0.5 s of CPU here, alembic ~0.4 s more (issue 12: `devices list` and `bundle list` at most
0.4 s of CPU each). ``orchestrator.core.config`` and ``orchestrator.core.db`` build on this module;
the
light commands read through :func:`open_current` and ``orchestrator.core.listings``.
"""

from __future__ import annotations

import functools
import os
import re
import sqlite3
from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

# Ids are INTEGER primary keys: 64-bit signed in SQLite (BIGINT elsewhere). A larger number
# cannot even be bound as a query parameter (the driver raises OverflowError), and no row can
# have it, so the API, the pages and the CLI refuse one at their edge as bad input.
MAX_ROW_ID = 2**63 - 1

# A migration script's own lines, as alembic's template writes them: revision = '0007'.
_REVISION = re.compile(r"""^revision\s*(?::[^=]*)?=\s*['"]([^'"]+)['"]""", re.M)
_DOWN_REVISION = re.compile(r"""^down_revision\s*(?::[^=]*)?=\s*(?:['"]([^'"]+)['"]|None)""",
                            re.M)


def default_home() -> Path:
    """XDG data dir + /edgefleet, as the README's "How it works" says."""
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "edgefleet"


def env_db_url() -> str:
    """What ``Settings().db_url`` says, read from the environment by the same rules:
    pydantic-settings matches names case-insensitively (the last of two spellings wins) and an
    empty ``DATABASE_URL`` means none (tests/unit/core/test_listings.py checks they agree)."""
    env = {key.lower(): value for key, value in os.environ.items()}
    if env.get("database_url"):
        return env["database_url"]
    home = Path(env["edgefleet_home"]) if "edgefleet_home" in env else default_home()
    return f"sqlite:///{home / 'edgefleet.db'}"


@functools.cache
def _revision_graph() -> dict[str, str | None] | None:
    """{revision: down_revision} of every migration script, read from their text without
    importing alembic; None when a script cannot be read that way (then alembic decides)."""
    graph: dict[str, str | None] = {}
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        revision, down = _REVISION.search(text), _DOWN_REVISION.search(text)
        if revision is None or down is None:
            return None
        graph[revision.group(1)] = down.group(1) or None
    return graph


def head_revision() -> str | None:
    """The newest migration's revision id: the one revision that no script names as its
    ``down_revision`` (the chain is linear, tests/unit/core/test_db.py checks it and that this
    agrees with alembic). None when the scripts cannot be read that way."""
    graph = _revision_graph()
    if graph is None:
        return None
    heads = set(graph) - {down for down in graph.values() if down}
    return heads.pop() if len(heads) == 1 else None


def known_revisions() -> frozenset[str]:
    """Every revision this code's migrations know: a DB stamped with another one was migrated
    by newer code (orchestrator.core.schema refuses it)."""
    return frozenset(_revision_graph() or {})


def sqlite_file(url: str) -> Path | None:
    """The file of a plain ``sqlite:///PATH`` URL; None for anything else (another database,
    an in-memory one, URL options), which only SQLAlchemy reads."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "?" in url or url == prefix:
        return None
    return Path(url[len(prefix):])


def open_current(url: str | None = None) -> sqlite3.Connection | None:
    """A read connection to the DB at ``url`` (default: the environment's), or None when the
    ORM path must be taken: not a SQLite file, no DB yet, or a schema that is not at the newest
    migration (``db.get_engine`` creates and upgrades; this never writes)."""
    path = sqlite_file(url or env_db_url())
    if path is None or not path.is_file():
        return None
    head = head_revision()
    conn = sqlite3.connect(path, timeout=10.0)  # waits out a writer like the engine's pragma
    try:
        rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:  # not a DB of ours, or no alembic_version table yet
        rows = []
    if head is None or rows != [(head,)]:
        conn.close()
        return None
    return conn
