"""Who is asking, may they, and did their browser really mean to: FastAPI dependencies for
authentication (bearer tokens, signed session cookies), roles, and CSRF protection. The login
and logout routes are in web.login (they render a page, so they sit above web.pages.common).

Routes opt in by depending on ``require(role)`` (or ``get_principal``); mutating routes add
``csrf_protect``. A router can do it for all its routes at once:
``APIRouter(dependencies=[Depends(require("viewer"))])``.

Open without credentials, on purpose: ``/static`` (vendored assets) and ``/favicon.ico``,
``/login`` and ``/logout`` (no session yet / only clears one), ``/docs`` and ``/openapi.json``
(the API's shape, no data),
``/metrics`` (aggregate counters and gauges for a scraper; it carries no secrets, tokens, key
paths or device environments, and Prometheus scrapers rarely hold credentials).

Without any admin token (auth not configured) the server is loopback-only (``auth.check_bind``),
serves only loopback Host names and its own user (``web.local_mode``), and every request is the
local user, as admin. With one, a request needs
``Authorization: Bearer ef_...`` or the session cookie set by ``POST /login``.

The session cookie is signed with ``EDGEFLEET_HOME/secret_key`` (created 0600 on first use,
never in the DB; delete it to log every browser out) and carries the random id of a server-side
session (``auth.start_browser_session``; only its hash is stored) and a per-session CSRF secret,
nothing else: the session and its token are looked up on every request, so logging out, or
revoking the token (or changing its role), takes effect at once. Behind a TLS-terminating
proxy, run uvicorn with ``--proxy-headers`` so the cookie is marked Secure.
"""

from __future__ import annotations

import contextlib
import hmac
import importlib.util
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from itsdangerous import BadSignature, URLSafeTimedSerializer

from orchestrator.access import audit, auth
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope

# Paths served without credentials (see the module docstring for why each is safe).
OPEN_PATHS = ("/static", "/favicon.ico", "/login", "/logout", "/docs", "/openapi.json",
              "/metrics")
COOKIE = "edgefleet_session"
SESSION_MAX_AGE = 12 * 3600
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
MAX_FORM_BYTES = 64 * 1024
_SALT = "edgefleet.session.v1"
# Starlette parses forms only with python-multipart; without it we read url-encoded bodies
# ourselves (and then no route can use Form(), so nobody else consumes the body first).
_HAVE_MULTIPART = any(importlib.util.find_spec(m) for m in ("python_multipart", "multipart"))


@dataclass
class Principal:
    name: str
    role: str
    via: str  # "local" | "bearer" | "cookie"
    token_id: int | None = None


# --- the signing key and the cookie ------------------------------------------------------------


def secret_key(settings: Settings) -> bytes:
    """The cookie-signing key, created on first use. Written to a private temp file and
    hard-linked into place, so two processes starting at once never read a half-written key
    and never end up with two different keys."""
    path = settings.home / "secret_key"
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".secret_key.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        with contextlib.suppress(FileExistsError):  # another process won: use its key
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes().strip()


def serializer(settings: Settings) -> URLSafeTimedSerializer:
    """Signs and checks session cookies (``POST /login`` in web.login signs them)."""
    return URLSafeTimedSerializer(secret_key(settings), salt=_SALT)


def request_settings(request: Request) -> Settings:
    """The app's settings, as the app factory stored them (web.app)."""
    return request.app.state.settings


def load_session(request: Request) -> dict[str, Any] | None:
    """The cookie's payload if its signature and age check out, else None (tampered, expired,
    signed with a deleted key)."""
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        data = serializer(request_settings(request)).loads(raw, max_age=SESSION_MAX_AGE)
    except BadSignature:  # SignatureExpired is a BadSignature
        return None
    if (not isinstance(data, dict) or not isinstance(data.get("sid"), str)
            or not isinstance(data.get("csrf"), str) or not data["csrf"]):
        return None
    return data


# --- authentication and roles ------------------------------------------------------------------


def _unauthenticated(request: Request, detail: str) -> HTTPException:
    """JSON 401 for the API; for pages, a trip to the login form that comes back here."""
    headers: dict[str, str] = {}
    if request.headers.get("HX-Request"):
        # htmx would swap a login page into a fragment: send the whole tab to the login form,
        # and back to the page it was on (not to the fragment's URL) afterwards.
        current = urlsplit(request.headers.get("HX-Current-URL", ""))
        back = (current.path or "/") + (f"?{current.query}" if current.query else "")
        headers["HX-Redirect"] = _login_url(back)
    if request.url.path.startswith("/api"):
        return HTTPException(401, detail, headers=headers | {"WWW-Authenticate": "Bearer"})
    if headers:
        return HTTPException(401, detail, headers=headers)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return HTTPException(303, detail, headers={"Location": _login_url(target)})


def safe_next(target: str | None) -> str:
    """Only a path on this site: never ``//evil.example`` or ``https://...`` (open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target if not urlsplit(target).scheme and not urlsplit(target).netloc else "/"


def _login_url(next_: str) -> str:
    return f"/login?next={quote(safe_next(next_), safe='')}"


def get_principal(request: Request) -> Principal:
    """Who is making this request. A bearer header, when present, decides alone: a bad one is
    refused rather than falling back to a cookie."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    header = request.headers.get("Authorization", "")
    with session_scope(request_settings(request)) as session:
        if not auth.auth_configured(session):
            principal = Principal(audit.local_actor(), "admin", "local")
        elif header:
            scheme, _, secret = header.partition(" ")
            token = auth.verify_token(session, secret.strip()) \
                if scheme.lower() == "bearer" else None
            if token is None:
                raise _unauthenticated(request, "invalid or revoked token")
            principal = Principal(token.name, token.role, "bearer", token.id)
        else:
            data = load_session(request) or {}
            token = auth.browser_session_token(session, data["sid"]) if data else None
            if token is None:
                raise _unauthenticated(
                    request, "authentication required: send 'Authorization: Bearer <token>' "
                             "or log in at /login")
            request.state.csrf = data["csrf"]
            principal = Principal(token.name, token.role, "cookie", token.id)
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]

# Declares the Bearer scheme in OpenAPI for every route behind ``require`` (so /docs shows the
# lock and its Authorize dialog). ``auto_error=False``: it only documents; ``get_principal``
# decides, as a cookie session or the tokenless local mode need no header.
bearer_scheme = HTTPBearer(
    auto_error=False, scheme_name="bearer", bearerFormat="ef_...",
    description="An EdgeFleet token: `edgefleet tokens create --role viewer|operator|admin`.")
BearerDoc = Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]


def require(role: str) -> Callable[..., Principal]:
    """A dependency giving the Principal if it has at least ``role``, else 403."""
    auth.role_allows(role, role)  # an unknown role fails here, at import time, not per request

    def dependency(principal: CurrentPrincipal, _bearer: BearerDoc) -> Principal:
        if not auth.role_allows(principal.role, role):
            raise HTTPException(403, f"{principal.role} tokens may not do this; it needs {role}")
        return principal

    dependency.__name__ = f"require_{role}"
    return dependency


# --- CSRF --------------------------------------------------------------------------------------


async def form_fields(request: Request) -> dict[str, str]:
    """The string fields of a form body ({} for any other body), for CSRF checks and the login
    form; parsed without python-multipart when it is not installed."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return {}
    if _HAVE_MULTIPART:
        form = await request.form()  # cached: the route's own Form() parsing shares it
        return {k: v for k, v in form.items() if isinstance(v, str)}
    if ctype != "application/x-www-form-urlencoded":
        return {}
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


def _cross_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is not None:
        return origin == "null" or urlsplit(origin).netloc.lower() != \
            request.headers.get("host", "").lower()
    return request.headers.get("sec-fetch-site") in ("cross-site", "same-site")


async def csrf_protect(request: Request, principal: CurrentPrincipal) -> None:
    """Refuse a state-changing request that a browser may have sent on another site's behalf.

    Cookie sessions must echo their CSRF secret (form field ``csrf_token`` or header
    ``X-CSRF-Token``). Bearer requests are exempt: browsers never attach that header on their
    own. The tokenless local mode has no secret to check, so there a request that a browser
    marks as coming from another origin (``Origin``, ``Sec-Fetch-Site``) is refused instead:
    otherwise any web page the laptop's user visits could POST to the loopback server."""
    if request.method in SAFE_METHODS or principal.via == "bearer":
        return
    if principal.via == "local":
        if _cross_origin(request):
            raise HTTPException(403, "cross-origin request refused")
        return
    expected = getattr(request.state, "csrf", "")
    given = request.headers.get(CSRF_HEADER) or (await form_fields(request)).get(CSRF_FIELD, "")
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(403, "CSRF token missing or wrong: reload the page and try again")


def csrf_token(request: Request) -> str:
    """The CSRF secret to embed in a page's forms and htmx headers ("" without a cookie
    session)."""
    cached = getattr(request.state, "csrf", None)
    if cached:
        return cached
    data = load_session(request)
    return data["csrf"] if data else ""
