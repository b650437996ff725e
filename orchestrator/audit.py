"""The audit log: who did what to which part of the fleet, and when.

A control plane that can push models to devices needs an answer to "who pushed this?" that does
not depend on shell history. Each state-changing operation records one ``AuditEvent``. Callers
record their own actions, with these names (the web, the API and the CLI use the same ones, so a
log reads the same whichever door an action came through):

=================== ==========================================================================
``push``            a bundle pushed to targets (target: the pattern; detail: bundle, job id)
``bench``           a benchmark started (target: the pattern; detail: bundle, params, job id)
``rollback``        devices rolled back (target: the pattern)
``inventory.sync``  the inventory applied to the DB (target: the file; detail: counts)
``job.cancel``      a queued or running job cancelled (target: ``job:<id>``)
``schedule.create`` a schedule created (target: ``schedule:<id>``; detail: kind, cron/run_at)
``schedule.delete`` a schedule deleted (target: ``schedule:<id>``)
``token.create``    an API token created (target: ``token:<id>``; detail: name, role, prefix)
``token.revoke``    an API token revoked (target: ``token:<id>``; detail: name, role, prefix)
=================== ==========================================================================

``actor`` is the token's name for web/API requests, the OS user for the CLI and for a server
without tokens (see ``local_actor``). ``detail`` must never carry secrets: anything under a key
that names a secret, and anything that looks like an EdgeFleet token, is replaced by
``"[redacted]"`` before it is stored, as a safety net for callers that pass request bodies.
"""

from __future__ import annotations

import getpass
import os
import re
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, col, select

from orchestrator.config import Settings
from orchestrator.db import session_scope
from orchestrator.models import AuditEvent

ACTIONS = ("push", "bench", "rollback", "inventory.sync", "job.cancel", "schedule.create",
           "schedule.delete", "token.create", "token.revoke")

REDACTED = "[redacted]"
_SECRET_KEYS = re.compile(r"secret|password|passphrase|private_key|token_hash|api_key",
                          re.IGNORECASE)
_TOKEN_LIKE = re.compile(r"\bef_[A-Za-z0-9_-]{20,}")


def local_actor() -> str:
    """The OS user: whoever owns EDGEFLEET_HOME is who acted, when no token was involved."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return os.environ.get("USER") or "local"


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): REDACTED if _SECRET_KEYS.search(str(k)) else _scrub(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if isinstance(value, str):
        return _TOKEN_LIKE.sub(REDACTED, value)
    return value


def add_event(session: Session, actor: str, action: str, target: str = "",
              detail: dict[str, Any] | None = None) -> AuditEvent:
    """Add an event to ``session`` without committing, so that a change and its audit record
    are one transaction (a token is never created without its ``token.create`` event)."""
    event = AuditEvent(actor=actor or local_actor(), action=action, target=target,
                       detail=_scrub(dict(detail or {})))
    session.add(event)
    session.flush()
    return event


def record(settings: Settings, actor: str, action: str, target: str = "",
           detail: dict[str, Any] | None = None) -> AuditEvent:
    """Write one event in its own transaction (for callers that have no session at hand)."""
    with session_scope(settings) as session:
        return add_event(session, actor, action, target, detail)


def list_events(session: Session, limit: int = 200) -> list[AuditEvent]:
    """Newest first; the id breaks ties between events of the same instant."""
    limit = max(1, min(int(limit), 10_000))
    return list(session.exec(
        select(AuditEvent).order_by(col(AuditEvent.at).desc(), col(AuditEvent.id).desc())
        .limit(limit)
    ).all())


def _iso(at: datetime | None) -> str | None:
    """SQLite hands datetimes back naive; they were written in UTC, so say so."""
    if at is None:
        return None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat()


def event_public(e: AuditEvent) -> dict[str, Any]:
    return {"id": e.id, "at": _iso(e.at), "actor": e.actor,
            "action": e.action, "target": e.target, "detail": e.detail}
