"""``edgefleet serve``: the web control plane and JSON API (uvicorn)."""

from __future__ import annotations

import socket
from typing import Annotated

import typer

from orchestrator.cli.app import app, handles_errors, settings
from orchestrator.core.errors import EdgeFleetError
from orchestrator.present import output


@app.command("serve")
@handles_errors
def serve_cmd(
    host: Annotated[str, typer.Option(help="Address to bind. Anything but loopback needs an "
                                           "admin token first.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(
        min=1, max=200, help="Jobs run at once in this process.")] = 2,
    worker: Annotated[bool, typer.Option(
        "--worker/--no-worker", help="Also run jobs here (default); --no-worker serves the "
                                     "web and API only, `edgefleet worker`s run the jobs.")] = True,
) -> None:
    """Serve the dashboard and the API (OpenAPI at /docs); run pushes, benchmarks and
    telemetry polls as jobs, unless --no-worker."""
    import uvicorn

    from orchestrator.access.auth import check_bind
    from orchestrator.core.db import get_engine
    from orchestrator.jobs.workers import hold_sqlite_lock
    from web.app import create_app

    cfg = settings()
    local_only = check_bind(host, cfg)
    check_port_free(host, port)
    if worker:
        get_engine(cfg)  # a schema refused says so before the worker lock is named
        hold_sqlite_lock(cfg)
    output.stderr.print(f"EdgeFleet on http://{host}:{port}/  (API docs: /docs; "
                        f"state: {cfg.home}; jobs: "
                        f"{'run here' if worker else 'run by `edgefleet worker`s'})")
    if local_only:
        from web.local_mode import can_check_peers

        output.stderr.print("No admin token: serving only this machine's user, by localhost/"
                            "127.0.0.1/[::1] (`edgefleet tokens create --role admin` to share)")
        if not can_check_peers():
            output.stderr.print("[yellow]warning:[/] this OS does not show who owns a loopback "
                                "connection: other users of this machine can use the server. "
                                "Create an admin token on a shared machine.")
    # proxy_headers off: uvicorn's default trusts X-Forwarded-For from loopback peers, so any
    # local user could name another client address and pass the local-mode checks (who owns
    # the connection). Behind a reverse proxy, run the app under a server configured for it.
    uvicorn.run(create_app(cfg, run_jobs=worker, workers=workers), host=host, port=port,
                log_level="warning", proxy_headers=False)


def check_port_free(host: str, port: int) -> None:
    """Refuse, before the banner, a port another server holds: uvicorn logged the error after
    it and exited 3. Bound as uvicorn binds (SO_REUSEADDR), then let go for it."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise EdgeFleetError(f"--host {host}: cannot be resolved ({exc})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise EdgeFleetError(
                f"cannot listen on {host} port {port}: {exc.strerror or exc} (another "
                "`edgefleet serve`? stop it, or give --port N)") from None
