"""CLI: the database's schema, as an explicit step (issue 14).

``edgefleet db upgrade`` migrates the database to this code's newest revision, under the same
lock every process takes when it finds the schema behind (orchestrator.core.schema), so running
it while servers and workers start is safe. Run it before starting a new release's processes
on a shared (PostgreSQL) database. ``edgefleet db current`` reads where the database stands and
changes nothing. Neither prints a password: URLs are redacted.
"""

from __future__ import annotations

import typer

from orchestrator.cli.app import JsonOpt, app, handles_errors, settings
from orchestrator.present import output

db_app = typer.Typer(no_args_is_help=True,
                     help="The database schema: migrate it (upgrade), see where it is (current).")
app.add_typer(db_app, name="db")

WHAT_TO_DO = {
    "current": "nothing to do",
    "behind": "run `edgefleet db upgrade`",
    "empty": "run `edgefleet db upgrade` (or start any command: it creates the schema)",
    "ahead": "upgrade EdgeFleet on this host: the database was migrated by a newer release",
}


@db_app.command("current")
@handles_errors
def db_current(as_json: JsonOpt = False) -> None:
    """Show the database's schema revision and this code's newest; exit 1 unless current."""
    from orchestrator.core import db

    status = db.status(settings().db_url)
    if as_json:
        output.print_json(dict(status.as_dict(), next_step=WHAT_TO_DO[status.state]))
    else:
        output.stdout.print(output.table(status.url, ["field", "value"], [
            ("revision", status.current or "(none)"), ("code's newest", status.head),
            ("state", status.state), ("next step", WHAT_TO_DO[status.state])]))
    if status.state != "current":
        raise typer.Exit(1)


@db_app.command("upgrade")
@handles_errors
def db_upgrade(as_json: JsonOpt = False) -> None:
    """Migrate the database to this code's newest revision, under the migration lock (other
    processes wait; a database newer than this code is refused)."""
    from orchestrator.core import db

    before, after = db.upgrade(settings().db_url)
    if as_json:
        output.print_json({"url": after.url, "from": before.current, "to": after.current,
                           "upgraded": before.current != after.current})
        return
    if before.current == after.current:
        output.stdout.print(f"{after.url}: already at {after.current}, nothing to do")
    else:
        output.stdout.print(f"{after.url}: upgraded from {before.current or '(empty)'} to "
                            f"{after.current}")
