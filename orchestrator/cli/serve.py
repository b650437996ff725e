"""``edgefleet serve``: the web control plane and JSON API (uvicorn)."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli.app import app, handles_errors, settings
from orchestrator.present import output


@app.command("serve")
@handles_errors
def serve_cmd(
    host: Annotated[str, typer.Option(help="Address to bind. Anything but loopback needs an "
                                           "admin token first.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Job worker threads.")] = 2,
) -> None:
    """Serve the dashboard and the API (OpenAPI at /docs); run pushes, benchmarks and
    telemetry polls as jobs."""
    import uvicorn

    from orchestrator.access.auth import check_bind
    from web.app import create_app

    cfg = settings()
    local_only = check_bind(host, cfg)
    output.stderr.print(f"EdgeFleet on http://{host}:{port}/  (API docs: /docs; "
                        f"state: {cfg.home})")
    if local_only:
        from web.local_mode import can_check_peers

        output.stderr.print("No admin token: serving only this machine's user, by localhost/"
                            "127.0.0.1/[::1] (`edgefleet tokens create --role admin` to share)")
        if not can_check_peers():
            output.stderr.print("[yellow]warning:[/] this OS does not show who owns a loopback "
                                "connection: other users of this machine can use the server. "
                                "Create an admin token on a shared machine.")
    uvicorn.run(create_app(cfg, workers=workers), host=host, port=port, log_level="warning")
