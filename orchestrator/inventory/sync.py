"""Reloading the inventory from the web: preview the diff, then apply what was previewed.

Why two steps with a digest: an admin approves a diff, not a file name. Between the preview and
the click on "apply" someone may edit the file; applying it then would change devices nobody
looked at. The preview carries the sha256 of the bytes it read, and ``apply`` refuses when the
file no longer has them (the page shows the new diff instead).

Which files: a request names a path *on the server*, so the server reads only inventories under
``EDGEFLEET_INVENTORY_DIR`` (default ``EDGEFLEET_HOME``) and the files its devices were already
synced from (by the CLI, i.e. by someone with a shell here), and only ``.yml``/``.yaml`` files
(``readable_path``). Anything else is refused before it is opened, so no error can carry
another file's content (``/etc/shadow``'s first line used to come back in a parse error).

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

from orchestrator.access import audit
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError
from orchestrator.core.models import AuditEvent, Device
from orchestrator.inventory.devices import SyncReport, sync_inventory
from orchestrator.inventory.reader import InventoryError, load_inventory

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


class InventoryPathRefused(EdgeFleetError):
    """The path is not one the server may read for a web/API request; it was not opened."""


INVENTORY_SUFFIXES = (".yml", ".yaml")


def _synced_files(session: Session) -> set[Path]:
    return {Path(source.rsplit(":", 1)[0]) for source in
            session.exec(select(Device.source).distinct()).all() if source}


def readable_path(settings: Settings, session: Session, path: str) -> Path:
    """``path`` resolved (symlinks too), if the server may read it for a request: a
    ``.yml``/``.yaml`` file under ``settings.inventory_root``, or one its devices were synced
    from. Otherwise InventoryPathRefused, which names only what the caller gave."""
    path = path.strip()
    if not path:
        raise EdgeFleetError("give the inventory file's path on the server")
    if "\x00" in path:
        raise InventoryPathRefused("an inventory path cannot contain a NUL character")
    root = settings.inventory_root.resolve()
    given = Path(path) if Path(path).is_absolute() else root / path
    resolved = given.resolve()
    allowed = resolved.suffix.lower() in INVENTORY_SUFFIXES and (
        resolved.is_relative_to(root)
        or resolved in {p.resolve() for p in _synced_files(session)})
    if not allowed:
        raise InventoryPathRefused(
            f"{path[:200]}: the server reads inventories (.yml/.yaml) only under {root} "
            "(EDGEFLEET_INVENTORY_DIR) and the files its devices were synced from; put the "
            "file there, or sync it with `edgefleet inventory sync FILE` on the server")
    return resolved


def default_path(session: Session) -> str:
    """Where the form starts: ``$EDGEFLEET_INVENTORY``; else the file of the last sync, from
    the web, the API or the CLI (its audit record); else the file most devices were loaded
    from (their ``source`` is ``file:line``); else ``inventory.yml`` as the CLI would."""
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


def preview(settings: Settings, session: Session, path: str) -> Preview:
    """What reloading ``path`` would change; InventoryError (``file:line: ...``) if broken,
    InventoryPathRefused if the server may not read it."""
    path = path.strip()
    readable = readable_path(settings, session, path)
    digest = _digest(str(readable))
    report = sync_inventory(session, load_inventory(readable), apply=False)
    return Preview(path, digest, report)


def apply(settings: Settings, path: str, digest: str | None, actor: str) -> SyncReport:
    """Apply ``path`` for a web/API request (only a ``readable_path``; if ``digest`` is given,
    only while the file still has the previewed digest, else InventoryChanged)."""
    path = path.strip()
    with session_scope(settings) as session:
        readable = readable_path(settings, session, path)
    if digest is not None and _digest(str(readable)) != digest:
        raise InventoryChanged(f"{path} changed since the preview; review the new diff below "
                               "before applying it")
    return _sync(settings, readable, actor)


def sync_file(settings: Settings, path: Path, *, actor: str,
              dry_run: bool = False) -> SyncReport:
    """``edgefleet inventory sync``: any file the shell user can read (no ``readable_path``:
    whoever has a shell here may point the control plane anywhere), the same event as a
    web/API reload; a dry run only reports, and is not audited."""
    if dry_run:
        with session_scope(settings) as session:
            return sync_inventory(session, load_inventory(path), apply=False)
    return _sync(settings, path, actor)


def _sync(settings: Settings, path: Path, actor: str) -> SyncReport:
    """Apply the file and audit ``inventory.sync`` (target: its resolved absolute path, the
    same file whichever door and working directory it came from) in the change's
    transaction."""
    inventory = load_inventory(path)  # as given: its hosts' ``source`` names it so
    with session_scope(settings) as session:
        report = sync_inventory(session, inventory, apply=True)
        audit.add_event(session, actor, "inventory.sync", str(path.resolve()),
                        report.as_dict())
    return report
