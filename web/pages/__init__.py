"""The HTML pages: fleet, devices, bundles, runs, compare, jobs, benchmarks and schedules,
trends, audit, inventory reload. ``web.app`` includes ``router``.

Each page reads through the same services as the CLI and the API (orchestrator/), and every
change goes through ``orchestrator.jobs.queue.submit`` — so a push started here is the same job,
audited the same way, as one started from the API. The routes live in one module per section;
``common`` holds the shared Jinja2 environment (``templates``) and helpers,
``charts``/``view`` what several sections render. The route parameters (settings, the
read session, the role aliases, CSRF) come from ``web.deps``, as for the API: read routes take a
``SessionDep``, write routes the settings for the service that owns the transaction.

May import: ``orchestrator`` services, ``web.deps``, ``web.security``, ``web.inputs``.
"""

from __future__ import annotations

from fastapi import APIRouter

from web.pages import (
    admin,
    bench,
    bundles,
    compare,
    device_actions,
    fleet,
    jobs,
    runs,
    schedules,
    trends,
)
from web.pages.common import templates

__all__ = ["router", "templates"]

router = APIRouter(include_in_schema=False)
# compare before runs: ``/runs/{run_id}`` would otherwise claim ``/runs/compare``.
for _section in (fleet, bundles, compare, runs, jobs, bench,
                 trends, admin, device_actions, schedules):
    router.include_router(_section.router)
