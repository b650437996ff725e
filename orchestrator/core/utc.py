"""Time in EdgeFleet is UTC, always timezone-aware. This module is the one rule for it.

Every datetime column is ``models.UTCDateTime``: it refuses a naive datetime on write (a naive
value reaching the DB is a bug: it could be local time, and SQLite would store it as if it
were UTC without a word) and hands every value back aware, in UTC (SQLite stores no offset, so
``DateTime(timezone=True)`` alone comes back naive on it). Code that reads rows therefore
never patches ``tzinfo``. Naive times are only ever *inputs* — a user's ``2030-01-01 03:00``,
the offset-less text SQLite stores — and ``as_utc`` is where they are read as UTC.

Standard library only: ``orchestrator.core.listings`` reads SQLite without SQLAlchemy (issue 12,
startup time) and converts stored text with the same ``as_utc`` the column type uses.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; naive means "already UTC" (an input, or what SQLite stored)."""
    return value.replace(tzinfo=UTC) if value.utcoffset() is None else value.astimezone(UTC)


def parse_utc(text: str) -> datetime:
    """An ISO 8601 text as an aware UTC datetime; without an offset it is UTC."""
    return as_utc(datetime.fromisoformat(text))
