"""Reloading the inventory from the web: preview the diff, then apply what was previewed.

Why two steps with a digest: an admin approves a diff, not a file name. Between the preview and
the click on "apply" someone may edit the file; applying it then would change devices nobody
looked at. The preview carries the sha256 of the bytes it read, and ``apply`` refuses when the
file no longer has them (the page shows the new diff instead).

The diff is ``devices.sync_inventory(apply=False)``: environment values are already redacted
there (``edgefleet_env`` may carry tokens), and the audit record scrubs secrets again.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session, col, select

from orchestrator import audit
from orchestrator.config import Settings
from orchestrator.db import session_scope
from orchestrator.devices import SyncReport, sync_inventory
from orchestrator.errors import EdgeFleetError
from orchestrator.inventory import InventoryError, load_inventory
from orchestrator.models import AuditEvent, Device

ENV_VAR = "EDGEFLEET_INVENTORY"
FALLBACK = "inventory.yml"  # what `edgefleet inventory sync` reads without an argument


@dataclass
class Preview:
    path: str
    digest: str  # sha256 of the file's bytes when the diff was computed
    report: SyncReport

    @property
    def empty(self) -> bool:
        return not (self.report.added or self.report.changed or self.report.removed)


class InventoryChanged(EdgeFleetError):
    """The file differs from the previewed one; nothing was applied."""


def default_path(session: Session) -> str:
    """Where the form starts: ``$EDGEFLEET_INVENTORY``; else the file of the last web/API
    reload (its audit record); else the file most devices were loaded from (their ``source``
    is ``file:line``, also set by the CLI); else ``inventory.yml`` as the CLI would."""
    configured = os.environ.get(ENV_VAR, "").strip()
    if configured:
        return configured
    last = session.exec(select(AuditEvent.target).where(AuditEvent.action == "inventory.sync")
                        .order_by(col(AuditEvent.at).desc(), col(AuditEvent.id).desc())
                        .limit(1)).first()
    if last:
        return last
    sources = Counter(source.rsplit(":", 1)[0] for source in
                      session.exec(select(Device.source)).all() if source)
    return sources.most_common(1)[0][0] if sources else FALLBACK


def _digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise InventoryError(path, None, f"cannot read inventory: {exc.strerror or exc}") from exc


def preview(session: Session, path: str) -> Preview:
    """What reloading ``path`` would change; InventoryError (``file:line: ...``) if broken."""
    path = path.strip()
    if not path:
        raise EdgeFleetError("give the inventory file's path on the server")
    digest = _digest(path)
    report = sync_inventory(session, load_inventory(path), apply=False)
    return Preview(path, digest, report)


def apply(settings: Settings, path: str, digest: str, actor: str) -> SyncReport:
    """Apply ``path`` if it still has the previewed ``digest`` (else InventoryChanged), and
    audit ``inventory.sync`` in the same transaction as the change."""
    path = path.strip()
    if _digest(path) != digest:
        raise InventoryChanged(f"{path} changed since the preview; review the new diff below "
                               "before applying it")
    inventory = load_inventory(path)
    with session_scope(settings) as session:
        report = sync_inventory(session, inventory, apply=True)
        audit.add_event(session, actor, "inventory.sync", path, report.as_dict())
    return report
