"""The FastAPI application: JSON API under /api (OpenAPI at /docs), pages, static assets.

Routes are thin: they call the same services in orchestrator/ as the CLI. The job workers
(pushes, benchmarks, telemetry polls) run in the server process unless ``run_jobs=False``
(``edgefleet serve --no-worker``: ``edgefleet worker`` processes run them).
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from orchestrator import __version__
from orchestrator.core.config import Settings, get_settings
from orchestrator.core.db import get_engine

WEB_DIR = Path(__file__).resolve().parent


def create_app(settings: Settings | None = None, *, run_jobs: bool = True,
               workers: int = 2) -> FastAPI:
    """``run_jobs=False`` gives an app without worker threads (tests drive jobs explicitly)."""
    settings = settings or get_settings()
    get_engine(settings)  # migrate before serving anything

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner = None
        if run_jobs:
            from orchestrator.jobs.workers import make

            runner = make(settings, workers)  # procrastinate on PostgreSQL, threads on SQLite
            runner.start()
        app.state.runner = runner
        # What is alive now (modules, numpy/scipy, the ORM's mappers: ~200k objects) lives as
        # long as the server: frozen, the collector stops rescanning it in every full
        # collection. bench/dashboard.py: GC time per Run page ~25 -> ~8 ms, and no more
        # 100+ ms full-collection pauses every few requests. Unfrozen when the app stops.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            if runner is not None:
                runner.stop()

    # /docs is served below from the vendored Swagger UI (FastAPI's own loads it from a CDN,
    # a blank page offline); ReDoc is dropped rather than vendored: one API browser is enough.
    app = FastAPI(title="EdgeFleet", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,
                  description="Push hash-verified ONNX bundles to a fleet of Pis, benchmark "
                              "them, watch their throttling.")
    app.state.settings = settings
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

    from orchestrator.core.errors import EdgeFleetError, NotFoundError
    from web import api, login, metrics
    from web.bodylimit import BodyLimit
    from web.local_mode import LocalModeGuard

    @app.exception_handler(EdgeFleetError)
    async def user_error(request: object, exc: EdgeFleetError) -> JSONResponse:
        status = 404 if isinstance(exc, NotFoundError) else 400
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        """Swagger UI from /static/vendor, so the API browser works with no internet access.
        ``validatorUrl: None``: Swagger UI would otherwise show a badge loaded from
        validator.swagger.io for every spec."""
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title="EdgeFleet API",
            swagger_js_url="/static/vendor/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui.css",
            swagger_favicon_url="/favicon.ico",
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        """Browsers ask for /favicon.ico whatever the page says: answer it, not a 404."""
        return FileResponse(WEB_DIR / "static" / "favicon.ico", media_type="image/x-icon")

    app.add_middleware(LocalModeGuard, settings=settings)
    app.add_middleware(BodyLimit)  # outermost of ours: a body's size is checked first
    app.include_router(api.router)
    app.include_router(metrics.router)
    app.include_router(login.router)
    try:
        from web import pages
    except ImportError:  # pages arrive separately; the API stands alone
        pages = None  # type: ignore[assignment]
    if pages is not None:
        app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
    return app
