"""CLI: alerts (webhooks): the recent ones with their delivery state, and a test POST to check
a receiver before a real event needs it. Configuration is the environment (README "Alerts")."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from orchestrator.cli.app import JsonOpt, app, handles_errors, settings
from orchestrator.present import output

alerts_app = typer.Typer(no_args_is_help=True,
                         help="Webhook alerts: list recent ones, send a test.")
app.add_typer(alerts_app, name="alerts")


@alerts_app.command("list")
@handles_errors
def alerts_list(
    kind: Annotated[str | None, typer.Option(
        "--kind", help="regression, device_offline, device_throttled or job_failed.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Recent alerts, newest first: what happened and whether its webhook got it."""
    from orchestrator.core.db import session_scope
    from orchestrator.fleet.alerts import alert_public, list_alerts

    with session_scope(settings()) as session:
        rows = [alert_public(a) for a in list_alerts(session, limit, kind=kind)]
    if as_json:
        output.print_json(rows)
        return
    if not rows:
        output.stdout.print("No alerts.")
        return
    output.stdout.print(output.table(
        None, ["id", "when", "kind", "summary", "delivery"],
        [(a["id"], a["created_at"][:19].replace("T", " "), a["kind"], a["summary"],
          a["state"] + (f" ({a['attempts']} attempts; {a['last_error']})"
                        if a["last_error"] else "")) for a in rows]))


@alerts_app.command("test")
@handles_errors
def alerts_test(as_json: JsonOpt = False) -> None:
    """POST a signed test event (``"event": "test"``) to every configured webhook, once,
    now, and say what each answered. Nothing is stored. Exit 1 if any failed."""
    from orchestrator.notify.webhooks import send_test

    results = send_test(settings())
    if as_json:
        output.print_json(results)
    elif not results:
        output.stdout.print("No webhook configured: set EDGEFLEET_WEBHOOK_URL (and "
                            "EDGEFLEET_WEBHOOK_SECRET); see the README's Alerts section.")
    else:
        for r in results:
            state = "ok" if r["ok"] else f"failed: {r['error']}"
            signed = "signed" if r["signed"] else "UNSIGNED (no EDGEFLEET_WEBHOOK_SECRET)"
            output.stdout.print(Text(f"{', '.join(r['kinds'])} -> {r['host']} ({signed}): "
                                     f"{state}"))
    if any(not r["ok"] for r in results):
        raise typer.Exit(1)
