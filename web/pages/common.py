"""What every page route shares: the Jinja2 environment, ``render``, form reading. The route
parameters (settings, the read session, the role aliases, CSRF) come from ``web.deps``, shared
with the API.

Autoescaping is on for every template (device names, labels, paths and error messages all come
from users or devices); data for charts goes into ``<script type="application/json">`` through
``tojson``, which escapes ``<``, ``>``, ``&`` and quotes, so user text never becomes code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape

from orchestrator.access.auth import role_allows
from orchestrator.core.config import Settings
from orchestrator.core.db import MAX_ROW_ID
from orchestrator.measure.reports import format_number, format_temp
from orchestrator.present.output import human_bytes
from web.pages.view import ago, when
from web.security import Principal, csrf_token

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"

# Pages load scripts and styles from /static only; inline <script> never runs. Styles may be
# inline because uPlot and htmx set element styles. Chart data sits in JSON script blocks,
# which are not executed.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; object-src 'none'; base-uri 'self'; form-action 'self'; "
       "frame-ancestors 'none'")

MAX_FORM_BYTES = 64 * 1024  # a page form is a pattern and a number; refuse anything larger

# Messages a redirect may ask for by key (``?notice=queued``): never echo free text from a URL.
NOTICES = {
    "queued": "Job queued. Progress updates below.",
    "cancel_requested": "Cancellation requested: devices finish their current step, then stop.",
    "schedule_created": "Schedule created. It queues its job at its next time (UTC).",
    "schedule_deleted": "Schedule deleted. The jobs it already queued are kept.",
    "schedule_paused": "Schedule paused: it queues nothing until it is resumed.",
    "schedule_resumed": "Schedule resumed: it queues its job at its next time (UTC).",
    "schedule_updated": "Schedule saved. It queues its job at its next time (UTC).",
    "inventory_applied": "Inventory applied: the fleet below matches the file. The change is in "
                         "the audit log.",
}


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES_DIR)),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ago=ago, when=when, human_bytes=human_bytes, num=format_number,
                       temp=format_temp, short=lambda digest: (digest or "")[:12])
    return env


templates = Jinja2Templates(env=_environment())


def filter_int(text: str) -> int | None:
    """A whole number typed into a filter's query string (``?threads=2``), or None (no filter)
    for anything else: empty, not a number (``isdigit`` is no test: ``int("²")`` fails), or
    beyond what an SQL INTEGER holds, which could not even be bound as a query parameter."""
    try:
        value = int(text)
    except ValueError:
        return None
    return value if -MAX_ROW_ID - 1 <= value <= MAX_ROW_ID else None


def render(request: Request, name: str, context: dict[str, Any], principal: Any = None,
           status_code: int = 200) -> HTMLResponse:
    """Render a page with what base.html needs (principal, CSRF token, notice)."""
    notice_key = request.query_params.get("notice", "")
    notice = NOTICES.get(notice_key)
    can_operate = principal is not None and role_allows(principal.role, "operator")
    full = {"principal": principal, "csrf_token": csrf_token(request), "notice": notice,
            "notice_key": notice_key if notice else "",
            "error": None, "section": None, "can_operate": can_operate} | context
    response = templates.TemplateResponse(request, name, full, status_code=status_code)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def not_found(request: Request, message: str, principal: Any = None) -> HTMLResponse:
    return render(request, "error.html", {"title": "Not found", "error": message},
                  principal, status_code=404)


async def form_fields(request: Request) -> dict[str, str]:
    """The posted url-encoded form as plain strings.

    Parsed from the body rather than with ``request.form()``: Starlette's form parser needs
    python-multipart, which is not a dependency. If ``csrf_protect`` already parsed the form
    with it (when installed), the stream is gone and its cached parse is used instead.
    Page forms never upload files.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        return {}
    try:
        body = await request.body()
    except RuntimeError:  # already parsed by request.form() (python-multipart installed)
        form = await request.form()  # the cached parse
        return {key: value for key, value in form.items() if isinstance(value, str)}
    if len(body) > MAX_FORM_BYTES:
        return {}
    return {key: values[0]
            for key, values in parse_qs(body.decode("utf-8", "replace")).items()}


def submit_job(settings: Settings, kind: str, params: dict[str, Any], targets: str,
               principal: Principal) -> Any:
    """Queue a job as the API does (``jobs.submit`` audits it). It checks the targets and
    params first (EdgeFleetError, nothing queued), so a typo is an error on the form."""
    from orchestrator.jobs import queue

    return queue.submit(settings, kind, params, targets, actor=principal.name)
