"""CLI: API tokens for the web control plane (create, list, revoke).

The CLI itself needs no token: whoever can run it owns EDGEFLEET_HOME (the DB, the keys), which
is more than any token grants. Actions are audited under the OS user's name.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from orchestrator.cli.app import JsonOpt, app, handles_errors, settings
from orchestrator.present import output
from orchestrator.present.cliparse import row_id

tokens_app = typer.Typer(no_args_is_help=True,
                         help="API tokens for the web UI and API: create, list, revoke.")
app.add_typer(tokens_app, name="tokens")


@tokens_app.command("create")
@handles_errors
def tokens_create(
    role: Annotated[str, typer.Option("--role", help="viewer, operator or admin.")],
    name: Annotated[str | None, typer.Option(
        "--name", help="Who or what uses it (default: <your user>-<role>).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a token and print its secret, once: only a hash is kept."""
    from orchestrator.access import audit, auth

    actor = audit.local_actor()
    token, secret = auth.create_token(settings(), name or f"{actor}-{role}", role, actor=actor)
    public = auth.token_public(token)
    if as_json:
        output.print_json(dict(public, secret=secret,
                               note="Store the secret now: it cannot be shown again."))
        return
    output.stdout.print(output.table(None, ["id", "name", "role", "prefix"],
                                     [(public["id"], public["name"], public["role"],
                                       public["prefix"])]))
    output.stderr.print("Store this secret now (a password manager, a CI secret): it is shown "
                        "only once. Use it as 'Authorization: Bearer <secret>' or on /login.")
    output.print_text(secret)


@tokens_app.command("list")
@handles_errors
def tokens_list(as_json: JsonOpt = False) -> None:
    """Every token, revoked ones included (never a secret or a hash)."""
    from orchestrator.access import auth
    from orchestrator.core.db import session_scope

    with session_scope(settings()) as session:
        tokens = [auth.token_public(t) for t in auth.list_tokens(session)]
    if as_json:
        output.print_json(tokens)
        return
    if not tokens:
        output.stdout.print("No tokens: the server is single-user and loopback-only. "
                            "`edgefleet tokens create --role admin` turns auth on.")
        return
    output.stdout.print(output.table(
        None, ["id", "name", "role", "prefix", "created", "last used", "revoked"],
        [(t["id"], t["name"], t["role"], t["prefix"], t["created_at"], t["last_used_at"],
          t["revoked"]) for t in tokens]))


@tokens_app.command("revoke")
@handles_errors
def tokens_revoke(
    token_id: Annotated[int, row_id("token", metavar="ID",
                                    help="From `edgefleet tokens list`.")],
    force: Annotated[bool, typer.Option(
        "--force", help="Allow revoking the last admin token (auth off, loopback only).")]
    = False,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a token: its API use and its browser sessions stop at once."""
    from orchestrator.access import audit, auth

    token = auth.revoke_token(settings(), token_id, actor=audit.local_actor(), force=force)
    public = auth.token_public(token)
    if as_json:
        output.print_json(public)
        return
    output.stdout.print(Text(f"revoked token {public['id']} ({public['name']}, "
                             f"{public['role']})"))
