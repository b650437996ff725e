"""The HTML pages: fleet, devices, bundles, runs, compare, jobs, benchmarks and schedules,
trends, audit, inventory reload. ``web.app`` includes ``router``.

Each page reads through the same services as the CLI and the API (orchestrator/), and every
change goes through ``jobs.submit`` — so a push started here is the same job, audited the same
way, as one started from the API. The routes live in ``pages_*`` modules by section;
``templates`` is the shared Jinja2 environment (web.security renders login.html with it).
"""

from __future__ import annotations

from fastapi import APIRouter

from web import (
    pages_admin,
    pages_bench,
    pages_bundles,
    pages_compare,
    pages_fleet,
    pages_jobs,
    pages_runs,
    pages_trends,
)
from web.pages_common import templates

__all__ = ["router", "templates"]

router = APIRouter(include_in_schema=False)
# pages_compare before pages_runs: ``/runs/{run_id}`` would otherwise claim ``/runs/compare``.
for _section in (pages_fleet, pages_bundles, pages_compare, pages_runs, pages_jobs, pages_bench,
                 pages_trends, pages_admin):
    router.include_router(_section.router)
