"""The HTML pages: fleet, devices, bundles, runs, jobs. ``web.app`` includes ``router``.

Each page reads through the same services as the CLI and the API (orchestrator/), and every
change goes through ``jobs.submit`` — so a push started here is the same job, audited the same
way, as one started from the API. The routes live in ``pages_*`` modules by section;
``templates`` is the shared Jinja2 environment (web.security renders login.html with it).
"""

from __future__ import annotations

from fastapi import APIRouter

from web import pages_bundles, pages_fleet, pages_jobs, pages_runs
from web.pages_common import templates

__all__ = ["router", "templates"]

router = APIRouter(include_in_schema=False)
for _section in (pages_fleet, pages_bundles, pages_runs, pages_jobs):
    router.include_router(_section.router)
