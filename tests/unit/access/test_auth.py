"""Authentication, roles and CSRF, in-process against the real app and a migrated SQLite DB.

Read and mutating API routes are the real ones (``/api/devices``, ``/api/jobs``,
``/api/inventory/sync``, ``/api/audit``); two test-only routes add what the API has no use for:
a page (for the login redirect) and a form POST (for the ``csrf_token`` form field).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, Request
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlmodel import select

from orchestrator.access import auth
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError
from orchestrator.core.models import ApiToken, BrowserSession
from tests.conftest import Cli
from web import security
from web.app import create_app
from web.security import Principal, csrf_protect, require

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "inventory" / "example.yml"

extra_routes = APIRouter()


@extra_routes.get("/t/page")
def page(request: Request,
         principal: Annotated[Principal, Depends(require("viewer"))]) -> dict[str, Any]:
    return {"name": principal.name, "role": principal.role, "via": principal.via,
            "csrf": security.csrf_token(request)}


@extra_routes.post("/t/form", dependencies=[Depends(csrf_protect)])
def form_post(principal: Annotated[Principal, Depends(require("operator"))]) -> dict[str, str]:
    return {"ok": principal.name}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", inventory_dir=EXAMPLE.parent)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, run_jobs=False)
    app.include_router(extra_routes)
    with TestClient(app, base_url="http://localhost") as c:
        yield c


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def login(client: TestClient, secret: str) -> str:
    """Log ``client`` in; return its session's CSRF token."""
    r = client.post("/login", data={"token": secret}, follow_redirects=False)
    assert r.status_code == 303, r.text
    csrf = client.get("/t/page").json()["csrf"]
    assert csrf
    return csrf


# --- no tokens: a single-user laptop -----------------------------------------------------------


def test_without_tokens_every_request_is_the_local_admin(client: TestClient) -> None:
    assert client.get("/api/devices").status_code == 200
    assert client.get("/api/audit").status_code == 200  # admin-only
    me = client.get("/t/page").json()
    assert (me["role"], me["via"], me["csrf"]) == ("admin", "local", "")
    assert client.post("/t/form").status_code == 200  # no CSRF secret to check...
    # ...but a page on another site must not drive the loopback server through the browser.
    evil = client.post("/t/form", headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403
    same = client.post("/t/form", headers={"Origin": "http://localhost"})
    assert same.status_code == 200
    assert client.post("/t/form", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "", "::", "10.0.0.1", "pi.lan"])
def test_check_bind_refuses_the_network_without_an_admin_token(settings: Settings,
                                                              host: str) -> None:
    with pytest.raises(EdgeFleetError, match="edgefleet tokens create --role admin"):
        auth.check_bind(host, settings)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.5", "::1", "[::1]", "localhost",
                                  "LOCALHOST", "::ffff:127.0.0.1"])
def test_check_bind_allows_loopback(settings: Settings, host: str) -> None:
    auth.check_bind(host, settings)


def test_check_bind_allows_the_network_once_an_admin_token_exists(settings: Settings) -> None:
    auth.create_token(settings, "ci", "operator")
    with pytest.raises(EdgeFleetError):  # an operator token does not configure auth
        auth.check_bind("0.0.0.0", settings)
    auth.create_token(settings, "boss", "admin")
    auth.check_bind("0.0.0.0", settings)


def _routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):  # FastAPI's included routers, unflattened
            yield from _routes(route.original_router.routes)


def _calls(dependant: Any) -> Iterator[Any]:
    yield dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)


def test_every_route_but_the_open_ones_needs_a_principal_and_mutations_csrf(
        settings: Settings) -> None:
    """A guard for routes added later: forgetting ``require(...)`` must fail here."""
    routes = list(_routes(create_app(settings, run_jobs=False).routes))
    assert {"/api/jobs", "/", "/login"} <= {r.path for r in routes}
    for route in routes:
        if route.path.startswith(security.OPEN_PATHS):
            continue
        calls = set(_calls(route.dependant))
        assert security.get_principal in calls, f"{route.path} is open to anyone"
        if route.methods - {"GET", "HEAD"}:
            assert csrf_protect in calls, f"{sorted(route.methods)} {route.path} lacks CSRF"


# --- tokens and roles --------------------------------------------------------------------------


def test_roles_are_ordered() -> None:
    assert auth.role_allows("admin", "viewer") and auth.role_allows("operator", "operator")
    assert not auth.role_allows("viewer", "operator")
    assert not auth.role_allows("root", "viewer")
    with pytest.raises(ValueError):
        auth.role_allows("admin", "superuser")
    with pytest.raises(ValueError):
        require("superuser")


def test_tokens_are_stored_as_hashes_and_marked_used_once_a_minute(settings: Settings) -> None:
    token, secret = auth.create_token(settings, "alice", "viewer")
    assert secret.startswith("ef_") and len(secret) >= 43
    assert token.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret.startswith(token.prefix) and len(token.prefix) < 12
    assert "token_hash" not in auth.token_public(token)
    with session_scope(settings) as session:
        first = auth.verify_token(session, secret)
        assert first is not None and first.last_used_at is not None
        used = first.last_used_at
        assert auth.verify_token(session, secret).last_used_at == used  # type: ignore[union-attr]
        assert auth.verify_token(session, secret + "x") is None
        assert auth.verify_token(session, "") is None
    with pytest.raises(EdgeFleetError, match="role"):
        auth.create_token(settings, "x", "root")
    with pytest.raises(EdgeFleetError, match="name"):
        auth.create_token(settings, "  ", "viewer")


@pytest.fixture
def tokens(settings: Settings) -> dict[str, str]:
    return {role: auth.create_token(settings, f"{role}-1", role)[1] for role in auth.ROLES}


def test_with_auth_a_request_without_credentials_is_refused(
        client: TestClient, tokens: dict[str, str]) -> None:
    r = client.get("/api/devices")
    assert r.status_code == 401 and r.headers["content-type"] == "application/json"
    assert r.headers["WWW-Authenticate"] == "Bearer" and "detail" in r.json()
    r = client.get("/jobs?state=running", follow_redirects=False)  # a real page
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Fjobs%3Fstate%3Drunning"
    assert client.get("/", follow_redirects=False).headers["location"] == "/login?next=%2F"
    htmx = {"HX-Request": "true", "HX-Current-URL": "http://localhost/jobs/3"}
    for path in ("/jobs/3/progress", "/api/jobs/3"):
        r = client.get(path, headers=htmx, follow_redirects=False)
        assert r.status_code == 401 and r.headers["HX-Redirect"] == "/login?next=%2Fjobs%2F3"
    # What stays open (the login page through the pages' template when there is one).
    login_page = client.get("/login?next=/runs")
    assert login_page.status_code == 200 and 'name="token"' in login_page.text
    assert 'value="/runs"' in login_page.text
    assert client.get("/openapi.json").status_code == 200


def test_roles_gate_the_real_api(client: TestClient, tokens: dict[str, str]) -> None:
    viewer, operator, admin = (bearer(tokens[r]) for r in auth.ROLES)
    assert client.post("/api/inventory/sync", json={"path": str(EXAMPLE)},
                       headers=operator).status_code == 403
    assert client.post("/api/inventory/sync", json={"path": str(EXAMPLE)},
                       headers=admin).status_code == 200
    assert client.get("/api/devices", headers=viewer).status_code == 200
    job = {"kind": "telemetry", "targets": "all"}
    r = client.post("/api/jobs", json=job, headers=viewer)
    assert r.status_code == 403 and "operator" in r.json()["detail"]
    r = client.post("/api/jobs", json=job, headers=operator)  # bearer: no CSRF needed
    assert r.status_code == 201 and r.json()["created_by"] == "operator-1"
    assert client.get("/api/audit", headers=operator).status_code == 403
    assert client.get("/api/audit", headers=admin).status_code == 200


def test_wrong_and_revoked_tokens_are_refused(settings: Settings, client: TestClient,
                                              tokens: dict[str, str]) -> None:
    for header in ("Bearer ef_" + "A" * 43, "Bearer nonsense", "Basic dXNlcjpwYXNz",
                   f"Token {tokens['admin']}"):
        assert client.get("/api/devices", headers={"Authorization": header}).status_code == 401
    with session_scope(settings) as session:
        viewer_id = next(t.id for t in auth.list_tokens(session) if t.role == "viewer")
    assert client.get("/api/devices", headers=bearer(tokens["viewer"])).status_code == 200
    auth.revoke_token(settings, viewer_id)  # type: ignore[arg-type]
    r = client.get("/api/devices", headers=bearer(tokens["viewer"]))
    assert r.status_code == 401 and tokens["viewer"] not in r.text


def test_the_last_admin_token_is_only_revoked_on_purpose(settings: Settings) -> None:
    first, _ = auth.create_token(settings, "a1", "admin")
    second, _ = auth.create_token(settings, "a2", "admin")
    auth.revoke_token(settings, first.id)  # type: ignore[arg-type]
    with pytest.raises(EdgeFleetError, match="last admin token"):
        auth.revoke_token(settings, second.id)  # type: ignore[arg-type]
    auth.revoke_token(settings, second.id, force=True)  # type: ignore[arg-type]
    with session_scope(settings) as session:
        assert not auth.auth_configured(session)


# --- browser sessions --------------------------------------------------------------------------


def test_login_sets_a_signed_httponly_cookie(client: TestClient, tokens: dict[str, str]) -> None:
    r = client.post("/login", data={"token": tokens["operator"], "next": "/t/page"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/t/page"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{security.COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Max-Age=43200" in cookie
    assert tokens["operator"] not in cookie
    me = client.get("/t/page").json()
    assert (me["name"], me["role"], me["via"]) == ("operator-1", "operator", "cookie")
    fleet = client.get("/")  # a real page carries the session's CSRF token for htmx and forms
    assert fleet.status_code == 200 and me["csrf"] in fleet.text
    # Never redirect off-site after login.
    r = client.post("/login", data={"token": tokens["operator"], "next": "//evil.example/x"},
                    follow_redirects=False)
    assert r.headers["location"] == "/"


def test_login_with_a_bad_token_shows_the_form_again(client: TestClient,
                                                     tokens: dict[str, str]) -> None:
    guess = "ef_" + "B" * 43
    r = client.post("/login", data={"token": guess}, follow_redirects=False)
    assert r.status_code == 401 and "not valid" in r.text and guess not in r.text
    assert security.COOKIE not in r.headers.get("set-cookie", "")


def test_the_login_form_escapes_next_and_forbids_framing(
        client: TestClient, tokens: dict[str, str]) -> None:
    r = client.get('/login?next=/runs/"><script>')
    assert r.status_code == 200 and 'name="token"' in r.text and "<script>" not in r.text
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    r = client.post("/login", data={"token": "ef_nope"})
    assert r.status_code == 401 and "not valid" in r.text


def test_cookie_sessions_need_their_own_csrf_token(client: TestClient, settings: Settings,
                                                   tokens: dict[str, str]) -> None:
    csrf = login(client, tokens["operator"])
    assert client.post("/t/form").status_code == 403
    assert client.post("/t/form", data={"csrf_token": "wrong"}).status_code == 403
    assert client.post("/t/form", data={"csrf_token": csrf}).status_code == 200
    assert client.post("/t/form", headers={"X-CSRF-Token": csrf}).status_code == 200
    # The real API, as htmx calls it (hx-headers).
    client.post("/api/inventory/sync", json={"path": str(EXAMPLE)},
                headers=bearer(tokens["admin"]))
    job = {"kind": "telemetry", "targets": "all"}
    assert client.post("/api/jobs", json=job).status_code == 403
    assert client.post("/api/jobs", json=job, headers={"X-CSRF-Token": csrf}).status_code == 201
    # Another session's token (same user, another login) is not this session's.
    other = TestClient(client.app, base_url="http://localhost")
    other_csrf = login(other, tokens["operator"])
    assert other_csrf != csrf
    assert client.post("/t/form", data={"csrf_token": other_csrf}).status_code == 403
    assert client.post("/t/form", headers={"X-CSRF-Token": other_csrf}).status_code == 403


def _set_cookie(client: TestClient, value: str) -> None:
    """Replace the session cookie: the jar holds the server's (domain-scoped) one, and setting
    a domain-less cookie of the same name would add a second instead of replacing it."""
    client.cookies.clear()
    client.cookies.set(security.COOKIE, value)


def test_tampered_and_expired_cookies_are_refused(client: TestClient, settings: Settings,
                                                  tokens: dict[str, str]) -> None:
    login(client, tokens["admin"])
    good = client.cookies[security.COOKIE]
    payload, _, rest = good.partition(".")
    with session_scope(settings) as session:
        viewer_id = next(t.id for t in auth.list_tokens(session) if t.role == "viewer")
    forged_payload = URLSafeTimedSerializer(b"k").dumps({"sid": str(viewer_id), "csrf": "x"})
    # Flip a signature character well inside it: base64's last character carries padding bits,
    # so changing only the tail could leave the decoded signature (and the cookie) valid.
    flipped = good[:-5] + ("A" if good[-5] != "A" else "B") + good[-4:]
    for bad in (flipped,
                forged_payload.partition(".")[0] + "." + rest,
                URLSafeTimedSerializer(b"not-the-key", salt=security._SALT).dumps(
                    {"sid": "1", "csrf": "x"}),
                # Signed with the real key, but no such session exists on the server.
                URLSafeTimedSerializer(security.secret_key(settings), salt=security._SALT).dumps(
                    {"sid": "made-up", "csrf": "x"})):
        _set_cookie(client, bad)
        assert client.get("/api/devices").status_code == 401

    class PastSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - security.SESSION_MAX_AGE - 60

    expired = URLSafeTimedSerializer(security.secret_key(settings), salt=security._SALT,
                                     signer=PastSigner).dumps(
        {"sid": "1", "csrf": "x"})
    _set_cookie(client, expired)
    assert client.get("/api/devices").status_code == 401
    _set_cookie(client, good)
    assert client.get("/api/devices").status_code == 200


def test_logout_and_revocation_end_the_session(client: TestClient, settings: Settings,
                                               tokens: dict[str, str]) -> None:
    login(client, tokens["viewer"])
    assert client.get("/api/devices").status_code == 200
    copied = client.cookies[security.COOKIE]
    r = client.post("/logout", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert "Max-Age=0" in r.headers["set-cookie"] or "expires=" in r.headers["set-cookie"]
    assert client.get("/api/devices").status_code == 401
    # Logout ended the session on the server: a copy of the cookie is dead too.
    _set_cookie(client, copied)
    assert client.get("/api/devices").status_code == 401
    with session_scope(settings) as session:
        assert session.exec(select(BrowserSession)).all() == []
    client.cookies.clear()

    login(client, tokens["viewer"])
    stolen = client.cookies[security.COOKIE]
    with session_scope(settings) as session:
        viewer_id = next(t.id for t in auth.list_tokens(session) if t.role == "viewer")
    auth.revoke_token(settings, viewer_id)  # type: ignore[arg-type]
    _set_cookie(client, stolen)
    assert client.get("/api/devices").status_code == 401
    assert client.get("/t/page", follow_redirects=False).status_code == 303


def test_the_signing_key_is_private_and_stable(settings: Settings, client: TestClient) -> None:
    key = security.secret_key(settings)
    path = settings.home / "secret_key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(key) == 64 and security.secret_key(settings) == key
    assert not list(settings.home.glob(".secret_key.*"))


# --- secrets never leave -----------------------------------------------------------------------


@pytest.mark.sqlite_only  # scans the SQLite file's raw bytes (and its WAL)
def test_secrets_never_appear_in_responses_or_the_db(client: TestClient, settings: Settings,
                                                     tokens: dict[str, str]) -> None:
    admin = bearer(tokens["admin"])
    bodies = [client.get(path, headers=admin).text
              for path in ("/api/audit", "/api/devices", "/t/page")]
    bodies += [client.get("/api/devices", headers=bearer(tokens["viewer"] + "x")).text,
               client.post("/login", data={"token": tokens["viewer"][:-1]}).text]
    with session_scope(settings) as session:
        rows = session.exec(select(ApiToken)).all()
        hashes = [t.token_hash for t in rows]
    for secret in tokens.values():
        assert not any(secret in body for body in bodies)
    assert not any(h in body for h in hashes for body in bodies)
    # The DB holds the hashes, never a secret (every column of every row, and the raw file).
    db = sqlite3.connect(settings.home / "edgefleet.db")
    cells = [str(c) for row in db.execute("SELECT * FROM apitoken") for c in row]
    cells += [str(c) for row in db.execute("SELECT * FROM auditevent") for c in row]
    db.close()
    raw = b"".join(p.read_bytes() for p in settings.home.glob("edgefleet.db*"))
    for secret in tokens.values():
        assert hashlib.sha256(secret.encode()).hexdigest() in cells
        assert not any(secret in cell for cell in cells)
        assert secret.encode() not in raw


# --- the CLI -----------------------------------------------------------------------------------


def test_cli_tokens_create_list_revoke(cli: Cli, home: Path) -> None:
    created = cli("tokens", "create", "--role", "admin", "--name", "laptop", "--json").json
    secret = created["secret"]
    assert secret.startswith("ef_") and "token_hash" not in created
    assert (created["name"], created["role"], created["revoked"]) == ("laptop", "admin", False)
    ci = cli("tokens", "create", "--role", "operator", "--json").json
    assert ci["name"].endswith("-operator")

    listed = cli("tokens", "list", "--json")
    assert secret not in listed.stdout and ci["secret"] not in listed.stdout
    assert [t["id"] for t in listed.json] == [created["id"], ci["id"]]
    assert all(set(t) == {"id", "name", "role", "prefix", "created_at", "last_used_at",
                          "revoked"} for t in listed.json)

    with session_scope(Settings(home=home)) as session:
        stored = {t.id: t for t in auth.list_tokens(session)}
        assert stored[created["id"]].token_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert auth.verify_token(session, secret) is not None

    refused = cli("tokens", "revoke", str(created["id"]), "--json", expect=2)
    assert "last admin token" in refused.json["error"]
    revoked = cli("tokens", "revoke", str(ci["id"]), "--json").json
    assert revoked["revoked"] is True and "secret" not in revoked
    assert "no such token" in cli("tokens", "revoke", "999", "--json", expect=2).json["error"]
    assert cli("tokens", "create", "--role", "root", "--json", expect=2).json["error"]

    text = cli("tokens", "create", "--role", "viewer", "--name", "[red]wall")
    assert "shown only once" in text.stderr and "[red]wall" in text.stdout
    assert text.stdout.strip().splitlines()[-1].startswith("ef_")
    table = cli("tokens", "list").stdout
    assert "laptop" in table and "ef_" in table and secret not in table


def test_every_mutating_route_rejects_no_token_viewers_and_csrf_less_forms(
        client: TestClient, tokens: dict[str, str]) -> None:
    """The issue's rule, route by route: no credentials -> 401 (or a redirect to /login for
    pages), a viewer token -> 403, a cookie session without its CSRF token -> 403."""
    import re

    routes = [(method, route.path) for route in _routes(client.app.routes)
              if not route.path.startswith(("/t/", *security.OPEN_PATHS))
              for method in sorted(route.methods - {"GET", "HEAD"})]
    assert len(routes) >= 10, routes  # the API's and the pages' forms are all here
    urls = [(method, path, re.sub(r"\{[^}]+\}", "1", path)) for method, path in routes]
    for method, path, url in urls:  # no session cookie yet
        anonymous = client.request(method, url, follow_redirects=False)
        assert anonymous.status_code in (401, 303), (method, path, anonymous.status_code)
        if anonymous.status_code == 303:
            assert anonymous.headers["location"].startswith("/login")
        viewer = client.request(method, url, headers=bearer(tokens["viewer"]),
                                follow_redirects=False)
        assert viewer.status_code == 403, (method, path, viewer.status_code)
    login(client, tokens["operator"])
    for method, path, url in urls:  # an operator's cookie session, without its CSRF token
        no_csrf = client.request(method, url, follow_redirects=False)
        assert no_csrf.status_code == 403, (method, path, no_csrf.status_code)
    client.cookies.clear()
