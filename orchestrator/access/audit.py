"""The audit log: who did what to which part of the fleet, and when.

A control plane that can push models to devices needs an answer to "who pushed this?" that does
not depend on shell history. Each operation below records one ``AuditEvent``, written by the
service that makes the change, in the change's own transaction (``add_event`` takes the
service's session): a job, schedule, token or inventory change is never committed without its
event, nor an event without its change. Routes and CLI commands only say who is acting, so the
web pages, the API and the CLI record the same action, target and detail for the same operation.

=================== ===================== =====================================================
action              target                detail
=================== ===================== =====================================================
``push``            ``job:<id>``          ``targets`` (the pattern), ``params``, ``origin``
``bench``           ``job:<id>``          (``server``: queued from the web or API; ``cli``:
``eval``            ``job:<id>``          run by the CLI itself, which also makes a job row)
``rollback``        ``job:<id>``
``inventory.sync``  the file's absolute   ``added``, ``changed``, ``removed``, ``unchanged``
                    path                  (environment values redacted)
``job.cancel``      ``job:<id>``          ``kind``, ``targets``, ``state`` (when cancelled)
``schedule.create`` ``schedule:<id>``     ``kind``, ``targets``, ``cron``, ``run_at``,
                                          ``params``
``schedule.delete`` ``schedule:<id>``     ``kind``, ``targets``, ``cron``, ``run_at``
``token.create``    ``token:<id>``        ``name``, ``role``, ``prefix``
``token.revoke``    ``token:<id>``        ``name``, ``role``, ``prefix``
``devices.trust``   ``devices:<pattern>`` ``replace``; ``devices``: each one's ``status``
                                          (added, unchanged, replaced), key type, fingerprint
``agent.install``   ``devices:<pattern>`` ``devices`` selected, ``with_deps``, the agent's
                                          ``version`` and ``sha256``
``bundle.build``    ``bundle:<N@V>``      ``digest``, ``precision``, ``source`` (new versions
                                          only: an unchanged rebuild changes nothing)
``dataset.build``   ``dataset:<N@V>``     ``digest``, ``samples``, ``labels``, ``for``
``key.create``      ``key:<name>``        ``fingerprint``, ``encrypted`` (never the key)
``bundle.sign``     ``bundle:<N@V>``      ``key``, ``fingerprint``, ``digest``, ``replaced``
                                          (the earlier signer, if any)
``rollout.halt``    ``job:<id>``          a staged push stopped by a failing batch: ``bundle``,
                                          ``batch`` (its index), ``failed``, ``not_started``,
                                          ``rolled_back`` (``--rollback-on-fail``); the
                                          actor is the job's (who started the rollout)
=================== ===================== =====================================================

``agent.install`` with ``--trust-key`` (or ``--untrust``) also carries ``trust``: the keys
pinned on the devices (name and fingerprint), ``[]`` when pinning was removed; without either
option it is absent and the devices' pinned keys are left as they were.

A target names its kind, so one column reads unambiguously: a row (``job:``, ``schedule:``,
``token:``, ``bundle:``, ``dataset:``, ``key:``), the devices a pattern selected (``devices:``;
patterns contain colons, so only the first one separates), or an inventory file (an absolute path: a
relative one would mean another file to the CLI, run in some directory, than to the server,
which reads relative to ``EDGEFLEET_INVENTORY_DIR``). Push, bench, eval and rollback point at
their job because the job is the same from every door (``jobs.execute`` runs them all) and its
page has what happened on each device; an event says what was asked and started, not how it
ended.

Not audited: what the control plane starts by itself (a schedule firing — its
``schedule.create`` was —, the periodic telemetry poll), telemetry and verify jobs and reads
(listings: they change nothing on a device), dry runs and previews. ``ACTIONS`` is the whole
vocabulary: ``add_event`` refuses anything else.

``actor`` is the token's name for web/API requests, the OS user for the CLI and for a server
without tokens (see ``local_actor``).

``detail`` must never carry secrets: anything under a key that names a secret, and anything that
looks like an EdgeFleet token, is replaced by ``"[redacted]"`` before it is stored, as a safety
net for params that carry user input.
"""

from __future__ import annotations

import getpass
import os
import re
from typing import Any

from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from orchestrator.core.models import AuditEvent, Job

ACTIONS = ("push", "bench", "eval", "rollback", "inventory.sync", "job.cancel",
           "schedule.create", "schedule.delete", "schedule.update", "schedule.pause",
           "schedule.resume", "token.create", "token.revoke",
           "devices.trust", "agent.install", "bundle.build", "dataset.build",
           "key.create", "bundle.sign", "rollout.halt")
# The job kinds that are audited: those that change a device or measure on it (not the
# read-only verify and telemetry).
JOB_ACTIONS = ("push", "bench", "eval", "rollback")

REDACTED = "[redacted]"
_SECRET_KEYS = re.compile(r"secret|password|passphrase|private_key|token_hash|api_key"
                          r"|(?:^|_)(?:pass|passwd|token)$", re.IGNORECASE)
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
    """Add an event to ``session`` without committing: the caller's change and its event are
    one transaction (a token is never created without its ``token.create`` event, nor the
    event left behind when the change fails). ValueError for an action not in ``ACTIONS``."""
    if action not in ACTIONS:
        raise ValueError(f"audit action {action!r} is not one of {', '.join(ACTIONS)}")
    event = AuditEvent(actor=actor or local_actor(), action=action, target=target,
                       detail=_scrub(dict(detail or {})))
    session.add(event)
    session.flush()
    return event


def add_job_event(session: Session, actor: str, job: Job) -> AuditEvent | None:
    """The event of a push, bench, eval or rollback job just added to ``session`` (flushed: it
    has its id) — the same whether the server queued it or the CLI runs it (``jobs.submit``,
    ``jobs.tracker.track``). None for a kind that is not audited (verify, telemetry)."""
    if job.kind not in JOB_ACTIONS:
        return None
    return add_event(session, actor, job.kind, f"job:{job.id}",
                     {"targets": job.targets, "params": job.params, "origin": job.origin})


def list_events(session: Session, limit: int = 200) -> list[AuditEvent]:
    """Newest first; the id breaks ties between events of the same instant."""
    limit = max(1, min(int(limit), 10_000))
    return list(session.exec(
        select(AuditEvent).order_by(col(AuditEvent.at).desc(), col(AuditEvent.id).desc())
        .limit(limit)
    ).all())


def event_public(e: AuditEvent) -> dict[str, Any]:
    return {"id": e.id, "at": e.at.isoformat(), "actor": e.actor,
            "action": e.action, "target": e.target, "detail": e.detail}


def events_window(session: Session, offset: int, limit: int, *, actor: str = "",
                  action: str = "", target: str = "") -> tuple[list[AuditEvent], int]:
    """A page of the log, newest first, and how many events match: ``actor`` exactly,
    ``action`` exactly or as a prefix with ``.`` (``token`` finds ``token.create`` and
    ``token.revoke``), ``target`` as a substring (``run:7``, ``pi5``)."""
    where: list[Any] = []
    if actor.strip():
        where.append(col(AuditEvent.actor) == actor.strip())
    if action.strip():
        a = action.strip()
        where.append(or_(col(AuditEvent.action) == a, col(AuditEvent.action).startswith(a + ".")))
    if target.strip():
        where.append(col(AuditEvent.target).contains(target.strip(), autoescape=True))
    matched = session.exec(select(func.count()).select_from(AuditEvent).where(*where)).one()
    events = session.exec(
        select(AuditEvent).where(*where)
        .order_by(col(AuditEvent.at).desc(), col(AuditEvent.id).desc())
        .offset(max(0, offset)).limit(max(1, limit))).all()
    return list(events), int(matched)
