"""The ``edgefleet`` command. Thin: parse, call a service, render. ``--json`` everywhere prints
machine-readable output on stdout; exit status 1 when any device failed, 2 on bad input."""

from __future__ import annotations

import atexit
import functools
import gc
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.text import Text

from orchestrator import output
from orchestrator.errors import EdgeFleetError
from orchestrator.fleet import Outcome

if TYPE_CHECKING:
    from orchestrator.config import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Push hash-verified ONNX bundles to a fleet of Pis and watch them run.")
inventory_app = typer.Typer(no_args_is_help=True, help="Read inventory files into the DB.")
devices_app = typer.Typer(no_args_is_help=True, help="Devices: list, show, trust host keys.")
agent_app = typer.Typer(no_args_is_help=True, help="The on-device agent.")
bundle_app = typer.Typer(no_args_is_help=True, help="Build and inspect model bundles.")
app.add_typer(inventory_app, name="inventory")
app.add_typer(devices_app, name="devices")
app.add_typer(agent_app, name="agent")
app.add_typer(bundle_app, name="bundle")

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
Targets = Annotated[str, typer.Argument(help="Target pattern: names, groups, globs, a:b, !x, &y.")]
Forks = Annotated[int, typer.Option("--forks", "-f", help="Devices worked on at once.")]
Timeout = Annotated[
    float | None, typer.Option("--timeout", help="Per-host seconds of silence before giving up.")
]

F = TypeVar("F", bound=Callable[..., Any])


def handles_errors(func: F) -> F:
    """Show EdgeFleetError as one clear line (or JSON) and exit 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EdgeFleetError as exc:
            if kwargs.get("as_json"):
                output.print_json({"error": str(exc)})
            else:
                # A Text, not markup: the message carries user input ("[/red]" in a path must
                # be shown, not parsed). soft_wrap: no hard wrap at the console width (80 when
                # piped), which would split a path or file:line in two.
                output.stderr.print(Text.assemble(("error:", "red"), f" {exc}"), soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def settings() -> Settings:
    # Imported here: pydantic-settings is for the commands that use the ORM; `devices list` and
    # `bundle list` start without it (orchestrator.listings, issue 12).
    from orchestrator.config import get_settings

    return get_settings()


INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


def exit_if_interrupted(interrupted: bool) -> None:
    """After work a Ctrl-C cancelled (``job_tracker``): what finished is already printed and
    stored; say so and exit 130."""
    if interrupted:
        output.stderr.print("cancelled (Ctrl-C): what finished before is kept")
        raise typer.Exit(INTERRUPTED_EXIT)


def finish(outcomes: list[Outcome], title: str, as_json: bool, extra: tuple[str, ...] = (),
           payload: Callable[[Outcome], dict[str, Any]] | None = None,
           interrupted: bool = False) -> None:
    """The common tail of every fleet operation: table or JSON, summary, exit status."""
    if as_json:
        output.print_json([payload(o) if payload else o.as_dict() for o in outcomes])
    else:
        output.stdout.print(output.outcome_table(title, outcomes, extra))
        output.stdout.print(output.summary_line(outcomes))
    exit_if_interrupted(interrupted)
    if any(not o.ok for o in outcomes):
        raise typer.Exit(1)


# --- inventory -------------------------------------------------------------------------------


@inventory_app.command("sync")
@handles_errors
def inventory_sync(
    file: Annotated[Path | None, typer.Argument(help="Ansible YAML inventory.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the diff only.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make the DB's devices match FILE (default $EDGEFLEET_INVENTORY or ./inventory.yml)."""
    from orchestrator.audit import local_actor
    from orchestrator.inventory_sync import sync_file

    path = file or Path(os.environ.get("EDGEFLEET_INVENTORY", "inventory.yml"))
    if not path.is_file():
        raise EdgeFleetError(f"{path}: no such inventory file; pass one: "
                             "`edgefleet inventory sync inventory/example.yml`")
    report = sync_file(settings(), path, actor=local_actor(), dry_run=dry_run)
    if as_json:
        output.print_json(dict(report.as_dict(), file=str(path), applied=not dry_run))
        return
    rows: list[list[Any]] = [[name, "[+] added", ""] for name in report.added]
    for name, diff in report.changed.items():
        detail = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in diff.items())
        rows.append([name, "[~] changed", detail])
    rows += [[name, "[-] removed", ""] for name in report.removed]
    if rows:
        output.stdout.print(output.table(None, ["device", "change", "detail"], rows))
    verb = "would be" if dry_run else ""
    output.stdout.print(
        f"{path}: {len(report.added)} added, {len(report.changed)} changed, "
        f"{len(report.removed)} removed, {len(report.unchanged)} unchanged {verb}".rstrip()
    )


# --- devices ---------------------------------------------------------------------------------


def _select(pattern: str) -> list[Any]:
    from orchestrator.db import session_scope
    from orchestrator.devices import select_devices

    with session_scope(settings()) as session:
        return select_devices(session, pattern)


@devices_app.command("list")
@handles_errors
def devices_list(targets: Targets = "all", as_json: JsonOpt = False) -> None:
    """Every device (or those matching TARGETS) with what we last learned from it."""
    from orchestrator import listings

    devices = listings.devices(targets)  # sqlite3 alone, when the DB is a current SQLite file
    if devices is None:
        devices = [listings.device_public(d) for d in _select(targets)]
    if as_json:
        output.print_json(devices)
        return
    output.stdout.print(output.devices_table(devices))


@devices_app.command("show")
@handles_errors
def devices_show(name: str, as_json: JsonOpt = False) -> None:
    """One device: inventory settings, facts, recent deployments."""
    from sqlmodel import col, select

    from orchestrator.db import session_scope
    from orchestrator.devices import device_public, get_device
    from orchestrator.models import Deployment

    with session_scope(settings()) as session:
        device = get_device(session, name)
        public = device_public(device)
        public["root"] = device.root
        public["facts"] = device.facts
        deployments = session.exec(
            select(Deployment).where(Deployment.device_name == name)
            .order_by(col(Deployment.id).desc()).limit(10)
        ).all()
        public["deployments"] = [d.model_dump(mode="json", exclude={"id"}) for d in deployments]
    if as_json:
        output.print_json(public)
        return
    facts = public.pop("facts") or {}
    deployments_rows = public.pop("deployments")
    output.stdout.print(output.table(name, ["field", "value"], list(public.items())))
    if facts:
        output.stdout.print(output.table("facts", ["fact", "value"],
                                         [(k, json.dumps(v) if isinstance(v, dict) else v)
                                          for k, v in facts.items()]))
    if deployments_rows:
        output.stdout.print(output.table(
            "deployments", ["when", "op", "bundle", "state", "bytes", "error"],
            [(d["started_at"], d["operation"],
              f"{d['bundle_name']}@{d['bundle_version']}" if d["bundle_name"] else None,
              d["state"], output.human_bytes(d["bytes_sent"]), d["error"])
             for d in deployments_rows]))


@devices_app.command("trust")
@handles_errors
def devices_trust(
    targets: Targets,
    replace: Annotated[bool, typer.Option(help="Replace a changed key (after checking it!).")]
    = False,
    forks: Forks = 10,
    timeout: Timeout = None,
    as_json: JsonOpt = False,
) -> None:
    """Record the devices' SSH host keys in EdgeFleet's known_hosts and print fingerprints."""
    from orchestrator.devices import to_target
    from orchestrator.fleet import fan_out
    from orchestrator.hostkeys import trust
    from orchestrator.transport import Target

    cfg = settings()

    def step(target: Target) -> Outcome:
        if target.connection == "local":
            return Outcome(target.name, True, "local", data={"fingerprint": None})
        try:
            result = trust(target.name, target.address, target.port, cfg.known_hosts,
                           timeout or cfg.timeout_s, replace=replace)
        except OSError as exc:
            raise EdgeFleetError(
                f"{target.name}: cannot reach {target.address}:{target.port}: {exc}") from None
        return Outcome(target.name, True, result.status,
                       data={"key_type": result.key_type, "fingerprint": result.fingerprint,
                             "previous_fingerprint": result.previous_fingerprint})

    outcomes = fan_out([to_target(d) for d in _select(targets)], step, forks)
    finish(outcomes, "host keys", as_json, extra=("key_type", "fingerprint"))


@devices_app.command("verify")
@handles_errors
def devices_verify(targets: Targets, forks: Forks = 10, timeout: Timeout = None,
                   as_json: JsonOpt = False) -> None:
    """Re-hash every file of the active bundle and re-run its golden outputs on each device;
    exit 1 if any device fails."""
    from orchestrator.verify import verify_devices

    outcomes = verify_devices(settings(), _select(targets), forks, timeout)
    if not as_json:
        for o in outcomes:
            for key in ("max_abs", "max_rel"):
                if isinstance(o.data.get(key), float):
                    o.data[key] = f"{o.data[key]:.3g}"
    finish(outcomes, "verify", as_json, extra=("bundle", "files_checked", "failed_files",
                                               "smoke", "max_abs", "max_rel"))


# --- agent -----------------------------------------------------------------------------------


@agent_app.command("install")
@handles_errors
def agent_install(
    targets: Targets,
    with_deps: Annotated[bool, typer.Option(
        "--with-deps", help="Create a venv under edgefleet_root and pip-install numpy, "
        "onnxruntime.")] = False,
    forks: Forks = 10,
    timeout: Timeout = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload the agent zipapp, check Python/numpy/onnxruntime, record the device's facts."""
    from orchestrator.agents import install_agents

    package, outcomes = install_agents(settings(), _select(targets), with_deps, forks, timeout)
    finish(outcomes, f"agent {package.version} ({package.sha256[:12]})", as_json,
           extra=AGENT_COLUMNS, payload=agent_payload)


AGENT_COLUMNS = ("model", "python_version", "onnxruntime")


def agent_payload(o: Outcome) -> dict[str, Any]:
    data = o.as_dict()
    data.pop("python", None)
    return data


def get_app() -> typer.Typer:
    """The app with every command registered (the other cli_* modules add theirs on import)."""
    from orchestrator import (  # noqa: F401
        cli_bundles,
        cli_datasets,
        cli_demo,
        cli_eval,
        cli_runs,
        cli_serve,
        cli_tokens,
        cli_verdicts,
    )

    return app


def main() -> None:
    # Exit at once: the interpreter's last collection would walk and free, one by one, every
    # object the command's imports made (~0.2 s after a push's SQLAlchemy, SQLModel and
    # paramiko here). Frozen, it skips them and the OS takes the memory back in one go; what
    # must be closed is closed explicitly (db disposes its engines at exit).
    atexit.register(gc.freeze)
    get_app()()


if __name__ == "__main__":
    # `python -m orchestrator.cli`: this file runs as __main__, but the other cli_* modules
    # register their commands on `orchestrator.cli`; run that module's app, not this copy's.
    from orchestrator.cli import main as _main

    _main()
