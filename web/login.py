"""The login and logout routes: a bearer token exchanged for a signed session cookie.

Why not in web.security: the login form is a page (``render`` from web.pages.common, with the
pages' layout and headers), and every page depends on web.security; the routes here sit above
both. How sessions and cookies work is in web.security's docstring.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response

from orchestrator.access import auth
from orchestrator.core.db import session_scope
from web.pages.common import render
from web.security import (
    COOKIE,
    SESSION_MAX_AGE,
    form_fields,
    load_session,
    request_settings,
    safe_next,
    serializer,
)

router = APIRouter(include_in_schema=False)

def _login_page(request: Request, next_: str, error: str = "",
                status_code: int = 200) -> Response:
    """``web/templates/login.html`` with the pages' layout, headers and filters."""
    with session_scope(request_settings(request)) as session:
        configured = auth.auth_configured(session)
    return render(request, "login.html",
                  {"title": "Log in", "next": next_, "error": error or None,
                   "auth_configured": configured}, None, status_code=status_code)


@router.get("/login")
def login_form(request: Request,
               next_: Annotated[str, Query(alias="next")] = "/") -> Response:
    return _login_page(request, safe_next(next_))


@router.post("/login")
async def login(request: Request) -> Response:
    """Exchange a token for a session cookie. CSRF-exempt: there is no session to ride yet."""
    fields = await form_fields(request)
    next_ = safe_next(fields.get("next"))
    secret = fields.get("token", "").strip()
    with session_scope(request_settings(request)) as session:
        token = auth.verify_token(session, secret)
        sid = auth.start_browser_session(session, token.id, timedelta(seconds=SESSION_MAX_AGE)) \
            if token is not None and token.id is not None else None
    if sid is None:
        return _login_page(request, next_, "That token is not valid (wrong, or revoked).", 401)
    value = serializer(request_settings(request)).dumps({"sid": sid,
                                                          "csrf": secrets.token_urlsafe(32)})
    response = RedirectResponse(next_, status_code=303)
    response.set_cookie(COOKIE, value, max_age=SESSION_MAX_AGE, path="/", httponly=True,
                        samesite="lax", secure=request.url.scheme == "https")
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    """End the session on the server (a copy of the cookie stops working too) and clear the
    cookie. Needs no auth or CSRF token: it only ends the session whose cookie came with the
    request (a forged logout is a nuisance, not a breach)."""
    data = load_session(request)
    if data is not None:
        with session_scope(request_settings(request)) as session:
            auth.end_browser_session(session, data["sid"])
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax",
                           secure=request.url.scheme == "https")
    return response
