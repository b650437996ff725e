"""API tokens and roles: who may use the control plane, and for what.

Roles are ordered, each including the one before: ``viewer`` reads; ``operator`` also pushes,
benchmarks, evaluates, cancels jobs and creates schedules; ``admin`` also manages tokens and the
inventory.

Auth is *configured* when at least one non-revoked admin token exists. Until then the server
only binds to loopback (``check_bind``), answers only loopback Host names and the server's own
user (``web.local_mode``), and treats every request as that user with the admin role: a
single-user laptop needs no login, and nobody else can reach it.

Tokens are ``ef_`` + ``secrets.token_urlsafe(32)`` (256 random bits). Only their SHA-256 is
stored. A slow password hash (bcrypt, scrypt) exists to make guessing low-entropy *passwords*
expensive; a 256-bit random secret cannot be guessed however fast the hash is, so a plain
SHA-256 is as safe here, lets a token be found with one indexed lookup, and costs nothing per
request. The first characters (``prefix``) are kept in the clear so a user can tell tokens
apart in a list; they are far too short to help a guess.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import Session, col, delete, select

from orchestrator.access import audit
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError, NotFoundError
from orchestrator.core.models import ApiToken, BrowserSession

ROLES = ("viewer", "operator", "admin")
TOKEN_PREFIX = "ef_"
PREFIX_LEN = len(TOKEN_PREFIX) + 6  # "ef_" + 6 characters (36 bits): recognisable, useless
NAME_MAX = 100
TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is a hint, not a per-request write


def role_allows(role: str, needed: str) -> bool:
    """True when ``role`` is at least ``needed``. An unknown role allows nothing; an unknown
    ``needed`` is a programming error (a typo must not silently open or close a route)."""
    if needed not in ROLES:
        raise ValueError(f"unknown role {needed!r}; roles: {', '.join(ROLES)}")
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise EdgeFleetError("a token needs a name (--name), e.g. the person or CI job using it")
    if len(name) > NAME_MAX or any(not ch.isprintable() for ch in name):
        raise EdgeFleetError(f"token name {name[:40]!r}: use at most {NAME_MAX} printable "
                             "characters")
    return name


def create_token(settings: Settings, name: str, role: str, *,
                 actor: str | None = None) -> tuple[ApiToken, str]:
    """Create a token; return the row and the secret, which exists nowhere else afterwards.

    The row and its ``token.create`` audit event are committed together."""
    if role not in ROLES:
        raise EdgeFleetError(f"role {role!r}: choose one of {', '.join(ROLES)}")
    name = _check_name(name)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with session_scope(settings) as session:
        token = ApiToken(name=name, role=role, token_hash=hash_token(secret),
                         prefix=secret[:PREFIX_LEN])
        session.add(token)
        session.flush()
        audit.add_event(session, actor or audit.local_actor(), "token.create",
                        f"token:{token.id}", {"name": name, "role": role,
                                              "prefix": token.prefix})
    return token, secret


def _touch(token: ApiToken) -> None:
    now = datetime.now(UTC)
    last = token.last_used_at
    if last is None or now - last >= TOUCH_EVERY:
        token.last_used_at = now


def verify_token(session: Session, secret: str) -> ApiToken | None:
    """The active token with this secret, or None. Looked up by hash: the hash of a random
    secret reveals nothing through timing, so no constant-time compare is needed. Marks the
    token used (at most once a minute; the caller's session commits)."""
    if not secret or not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    token = session.exec(
        select(ApiToken).where(ApiToken.token_hash == hash_token(secret))
    ).first()
    if token is None or token.revoked:
        return None
    _touch(token)
    return token


def active_token(session: Session, token_id: int) -> ApiToken | None:
    """The token behind a browser session, if it is still valid (revoking ends sessions)."""
    token = session.get(ApiToken, token_id)
    if token is None or token.revoked:
        return None
    _touch(token)
    return token


def start_browser_session(session: Session, token_id: int, max_age: timedelta) -> str:
    """A new browser session for ``token_id``; returns its random id (for the cookie), of
    which only the hash is stored. Expired sessions are swept on the way."""
    now = datetime.now(UTC)
    session.exec(delete(BrowserSession).where(col(BrowserSession.expires_at) < now))
    sid = secrets.token_urlsafe(32)
    session.add(BrowserSession(id_hash=hash_token(sid), token_id=token_id, created_at=now,
                               expires_at=now + max_age))
    return sid


def browser_session_token(session: Session, sid: str) -> ApiToken | None:
    """The active token behind a live browser session, or None (logged out, expired, token
    revoked)."""
    row = session.get(BrowserSession, hash_token(sid)) if sid else None
    if row is None or row.expires_at <= datetime.now(UTC):
        return None
    return active_token(session, row.token_id)


def end_browser_session(session: Session, sid: str) -> None:
    """Logout: the session stops working everywhere its cookie was copied to."""
    session.exec(delete(BrowserSession).where(col(BrowserSession.id_hash) == hash_token(sid)))


def _active_admins(session: Session) -> int:
    return len(session.exec(
        select(ApiToken.id).where(ApiToken.role == "admin", col(ApiToken.revoked).is_(False))
    ).all())


def revoke_token(settings: Settings, token_id: int, *, actor: str | None = None,
                 force: bool = False) -> ApiToken:
    """Revoke a token; its bearer use and its browser sessions stop at once.

    Revoking the last admin token would silently turn auth off (every request becomes the local
    admin) under a server that may be listening on the network, so it is refused unless
    ``force``. Revoking a revoked token changes nothing and records nothing."""
    with session_scope(settings) as session:
        token = session.get(ApiToken, token_id)
        if token is None:
            raise NotFoundError(f"token {token_id}: no such token (see `edgefleet tokens list`)")
        if token.revoked:
            return token
        if token.role == "admin" and _active_admins(session) == 1 and not force:
            raise EdgeFleetError(
                f"token {token_id} ({token.name}) is the last admin token: revoking it turns "
                "auth off, and a server bound to the network would then refuse to start. "
                "Create another first (`edgefleet tokens create --role admin`), or pass "
                "--force to go back to loopback-only, single-user mode")
        token.revoked = True
        session.add(token)
        audit.add_event(session, actor or audit.local_actor(), "token.revoke",
                        f"token:{token.id}", {"name": token.name, "role": token.role,
                                              "prefix": token.prefix})
        return token


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.exec(select(ApiToken).order_by(col(ApiToken.id))).all())


def token_public(t: ApiToken) -> dict[str, Any]:
    """What may be shown of a token: never the hash (nor, of course, the secret)."""
    last = t.last_used_at
    return {"id": t.id, "name": t.name, "role": t.role, "prefix": t.prefix,
            "created_at": t.created_at.isoformat() if t.created_at else None,
            "last_used_at": last.isoformat() if last else None, "revoked": t.revoked}


def auth_configured(session: Session) -> bool:
    return session.exec(
        select(ApiToken.id).where(ApiToken.role == "admin", col(ApiToken.revoked).is_(False))
        .limit(1)
    ).first() is not None


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also IPv4-mapped, ``[::1]``) and ``localhost``. Anything else,
    including "" and 0.0.0.0 (every interface), is not."""
    host = host.strip().rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def check_bind(host: str, settings: Settings) -> bool:
    """Refuse to serve beyond this machine while anyone who connects would be admin. True when
    no admin token exists (the server runs in its tokenless, this-user-only mode)."""
    with session_scope(settings) as session:
        if auth_configured(session):
            return False
    if is_loopback(host):
        return True
    raise EdgeFleetError(
        f"refusing to listen on {host or 'every interface'}: no admin token exists, so anyone "
        "who can reach this address would be admin. Create one with "
        "`edgefleet tokens create --role admin` (then log in with it), or serve on 127.0.0.1")
