"""The database's clock: what leases and job heartbeats are written and compared by.

Why: workers on several hosts share leases and heartbeats with TTLs of 45 s. Each host's own
clock decided both "expires at" and "is it past", so a host whose clock ran a minute ahead (a
lab machine without NTP) took leases that were live, and marked running jobs of a healthy
worker interrupted. One clock for every host, the database server's, makes those comparisons
independent of any host's skew. (On SQLite, one host by construction, it is that host's clock
as SQLite reads it.)
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlmodel import Session

from orchestrator.core.utc import as_utc, parse_utc

_POSTGRES_NOW = text("SELECT clock_timestamp()")  # now() would be the transaction's start
_SQLITE_NOW = text("SELECT strftime('%Y-%m-%dT%H:%M:%f', 'now')")


def db_now(session: Session) -> datetime:
    """The database server's current time, aware, in UTC."""
    if session.get_bind().dialect.name == "postgresql":
        return as_utc(session.execute(_POSTGRES_NOW).scalar_one())
    return parse_utc(session.execute(_SQLITE_NOW).scalar_one())
