"""CLI: bundle-signing keys (create, list) and the passphrase prompt the signing commands share.

The private key never leaves its 0600 file under EDGEFLEET_HOME/keys/signing: no command prints
it, in a table or in ``--json``; the DB and the audit log hold the public half and fingerprint.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from orchestrator.cli.app import JsonOpt, app, handles_errors, settings
from orchestrator.core.errors import SigningError
from orchestrator.present import output

keys_app = typer.Typer(no_args_is_help=True,
                       help="Bundle-signing keys (Ed25519): create, list.")
app.add_typer(keys_app, name="keys")

PassphraseOpt = Annotated[bool, typer.Option(
    "--passphrase", help="Protect the key file with a passphrase (prompted twice, or "
                         "EDGEFLEET_KEY_PASSPHRASE).")]


def passphrase_for(name: str, encrypted: bool, confirm: bool = False) -> str | None:
    """The passphrase of key ``name``: EDGEFLEET_KEY_PASSPHRASE (scripts, CI), else a hidden
    prompt; None for an unencrypted key."""
    from orchestrator.artifacts.signing import PASSPHRASE_ENV

    if not encrypted:
        return None
    given = os.environ.get(PASSPHRASE_ENV)
    if given:
        return given
    try:
        value = typer.prompt(f"passphrase for key {name}", hide_input=True,
                             confirmation_prompt=confirm, err=True)
    except typer.Abort:
        raise SigningError(f"no passphrase given for key {name}") from None
    if not value:
        raise SigningError(f"an empty passphrase for key {name}")
    return str(value)


@keys_app.command("create")
@handles_errors
def keys_create(
    name: Annotated[str, typer.Argument(help="Key name (also its name on the devices).")],
    passphrase: PassphraseOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Make an Ed25519 signing key: private half to a 0600 file, public half to the DB."""
    from orchestrator.access.audit import local_actor
    from orchestrator.artifacts.signing import check_key_name, create_key, key_public
    from orchestrator.core.db import session_scope

    check_key_name(name)
    secret = passphrase_for(name, passphrase, confirm=True)
    with session_scope(settings()) as session:
        public = key_public(create_key(session, settings(), name, secret, actor=local_actor()))
    if as_json:
        output.print_json(public)
        return
    output.stdout.print(output.table(None, ["", ""], [
        ("key", public["name"]), ("fingerprint", public["fingerprint"]),
        ("public key", public["public_key"]),
        ("passphrase", "yes" if public["encrypted"] else "no")]))
    output.stderr.print(f"Pin it on devices: edgefleet agent install TARGETS --trust-key {name}")


@keys_app.command("list")
@handles_errors
def keys_list(as_json: JsonOpt = False) -> None:
    """Every signing key: name, fingerprint, passphrase-protected or not (public halves only)."""
    from orchestrator.artifacts.signing import key_public, list_keys
    from orchestrator.core.db import session_scope

    with session_scope(settings()) as session:
        keys = [key_public(k) for k in list_keys(session)]
    if as_json:
        output.print_json(keys)
        return
    output.stdout.print(output.table(None, ["key", "fingerprint", "passphrase", "created"], [
        (k["name"], k["fingerprint"], "yes" if k["encrypted"] else "no", k["created_at"])
        for k in keys]))
