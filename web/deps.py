"""What a route takes as parameters: the settings, a read session, who is asking, CSRF.

Both the JSON API (``web.api``) and the pages (``web.pages``) declare their needs with these
aliases (``session: SessionDep, principal: Viewer``) and then call one service function, so the
two front ends cannot drift apart in how they reach the DB or check a role. The checks themselves
live in ``web.security``; this module only names them as dependencies.

Why reads and writes differ:

* A read route takes ``SessionDep``: one session for the whole request, opened by FastAPI before
  the route runs and closed after it returns, so the route body holds no ``with`` block and the
  service functions it calls all share that one session (and connection).
* A write route takes ``SettingsDep`` and hands it to the service (``jobs.queue.submit``,
  ``schedules.create``, ``inventory.sync.apply``...), which opens its own transaction and commits
  the change *and its audit event* together, or neither. A session held by the request around
  that call would be a second, unrelated transaction: what it read could be stale by the time
  the service commits, and nothing it did would be part of the audited change. So write routes
  get no session; if one must show something afterwards (a form re-rendered with its error),
  it opens a short read scope of its own once the service has returned.

List the principal before the session in a route's parameters: FastAPI resolves dependencies
in order, so a request that is refused (401, 403, redirect to /login) never opens a session.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlmodel import Session

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from web.security import Principal, csrf_protect, request_settings, require

__all__ = ["Admin", "Csrf", "Operator", "SessionDep", "SettingsDep", "Viewer", "db_session"]

# The app's settings, as the app factory stored them on app.state (web.app): tests and
# ``edgefleet serve`` each build an app with their own, never the process-wide defaults.
SettingsDep = Annotated[Settings, Depends(request_settings)]


def db_session(settings: SettingsDep) -> Iterator[Session]:
    """One DB session for a read route (``SessionDep``). Writes go through services that own
    their transaction and their audit event, so write routes take ``SettingsDep`` instead."""
    with session_scope(settings) as session:
        yield session


SessionDep = Annotated[Session, Depends(db_session)]

# Who may: reading needs a viewer, changing anything an operator (plus ``Csrf``), the audit log
# and the inventory an admin. Each is the Principal (name, role, how it authenticated), for the
# route to pass on as the audit actor; a request without the role is refused before the route.
Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]

# For a mutating route's ``dependencies=[Csrf]``: a cookie session must echo its CSRF secret,
# the tokenless local mode refuses cross-origin requests, bearer tokens are exempt
# (``web.security.csrf_protect``).
Csrf = Depends(csrf_protect)
