"""The inventory, devices and agent commands (``edgefleet inventory sync``, ``devices
list/show/trust/verify``, ``agent install``). Thin: parse, call a service, render."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.cli.app import (
    AGENT_COLUMNS,
    Forks,
    JsonOpt,
    Targets,
    Timeout,
    agent_app,
    agent_payload,
    demo_hint,
    devices_app,
    finish,
    handles_errors,
    inventory_app,
    select,
    settings,
)
from orchestrator.core.errors import EdgeFleetError, NotFoundError
from orchestrator.present import advice, output

# --- inventory -------------------------------------------------------------------------------


@inventory_app.command("sync")
@handles_errors
def inventory_sync(
    file: Annotated[Path | None, typer.Argument(help="Ansible YAML inventory.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the diff only.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make the DB's devices match FILE (default $EDGEFLEET_INVENTORY or ./inventory.yml)."""
    from orchestrator.access.audit import local_actor
    from orchestrator.inventory.sync import sync_file

    path = file or Path(os.environ.get("EDGEFLEET_INVENTORY", "inventory.yml"))
    if path.is_dir():
        raise EdgeFleetError(f"{path} is a folder: pass the inventory file in it, e.g. "
                             f"`edgefleet inventory sync {path / 'inventory.yml'}`")
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


@devices_app.command("list")
@handles_errors
def devices_list(targets: Targets = "all", as_json: JsonOpt = False) -> None:
    """Every device (or those matching TARGETS) with what we last learned from it."""
    from orchestrator.core import listings

    try:
        devices = listings.devices(targets)  # sqlite3 alone, when the DB is current SQLite
        if devices is None:
            devices = [listings.device_public(d) for d in select(targets)]
    except NotFoundError as exc:
        hint = demo_hint() if str(exc).startswith("no devices yet") else None
        if hint is None:
            raise
        raise NotFoundError(f"{exc}; {hint}") from None
    if as_json:
        output.print_json(devices)
        return
    output.stdout.print(output.devices_table(devices))


@devices_app.command("show")
@handles_errors
def devices_show(name: str, as_json: JsonOpt = False) -> None:
    """One device: inventory settings, facts, recent deployments."""
    from orchestrator.core.db import session_scope
    from orchestrator.inventory.devices import device_public, get_device, recent_deployments

    with session_scope(settings()) as session:
        device = get_device(session, name)
        public = device_public(device)
        public["root"] = device.root
        public["facts"] = device.facts
        deployments = recent_deployments(session, name)
        public["deployments"] = [d.model_dump(mode="json", exclude={"id"}) for d in deployments]
    if as_json:
        output.print_json(public)
        return
    facts = public.pop("facts") or {}
    deployments_rows = public.pop("deployments")
    rows = list(public.items())
    flags = public.get("throttle_flags") or {}
    fixes = list(dict.fromkeys(
        fix for word in [*(flags.get("now") or []), *(flags.get("since_boot") or [])]
        if (fix := advice.fix_for(str(word), public.get("pi_model")))))
    if fixes:  # what to do about it, for this board (a Pi 4's supply is not a Pi 5's)
        rows.append(("advice", "; ".join(fixes)))
    output.stdout.print(output.table(name, ["field", "value"], rows))
    if facts:
        output.stdout.print(output.table("facts", ["fact", "value"],
                                         [(k, output.plain(v)) for k, v in facts.items()]))
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
    """Record the devices' SSH host keys in the shared database and print fingerprints."""
    from orchestrator.access.audit import local_actor
    from orchestrator.fleet.trust import trust_devices

    outcomes = trust_devices(settings(), select(targets), forks, timeout, replace,
                             actor=local_actor(), targets=targets)
    finish(outcomes, "host keys", as_json, extra=("key_type", "fingerprint"))


@devices_app.command("verify")
@handles_errors
def devices_verify(targets: Targets, forks: Forks = 10, timeout: Timeout = None,
                   as_json: JsonOpt = False) -> None:
    """Re-hash every file of the active bundle and re-run its golden outputs on each device;
    exit 1 if any device fails."""
    from orchestrator.jobs import tracker

    with tracker.track(settings(), "verify", {"forks": forks, "timeout": timeout},
                       targets) as job:
        outcomes = job.run().outcomes
    if not as_json:
        for o in outcomes:
            for key in ("max_abs", "max_rel"):
                if isinstance(o.data.get(key), float):
                    o.data[key] = f"{o.data[key]:.3g}"
    finish(outcomes, "verify", as_json, extra=("bundle", "files_checked", "failed_files",
                                               "smoke", "max_abs", "max_rel"),
           interrupted=job.interrupted)


# --- agent -----------------------------------------------------------------------------------


@agent_app.command("install")
@handles_errors
def agent_install(
    targets: Targets,
    with_deps: Annotated[bool, typer.Option(
        "--with-deps", help="Create a venv under edgefleet_root and pip-install numpy, "
        "onnxruntime.")] = False,
    trust_key: Annotated[list[str], typer.Option(
        "--trust-key", help="Pin this signing key on the devices (repeat for two during a "
        "rotation): they then run only bundles one of the pinned keys signed. Replaces the "
        "keys pinned before.")] = [],  # noqa: B006
    untrust: Annotated[bool, typer.Option(
        "--untrust", help="Remove every pinned key: the devices run unsigned bundles again.")]
    = False,
    forks: Forks = 10,
    timeout: Timeout = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload the agent zipapp, check Python/numpy/onnxruntime, record the device's facts;
    pin signing keys (--trust-key) or remove them (--untrust); without either the devices'
    pinned keys stay as they are."""
    from orchestrator.access.audit import local_actor
    from orchestrator.fleet.agents import install_agents

    if trust_key and untrust:
        raise EdgeFleetError("--trust-key and --untrust together: pick one")
    trust = None
    if trust_key or untrust:
        from orchestrator.artifacts.signing import keys_to_pin
        from orchestrator.core.db import session_scope

        with session_scope(settings()) as session:
            trust = keys_to_pin(session, trust_key)
    package, outcomes = install_agents(settings(), select(targets), with_deps, forks, timeout,
                                       actor=local_actor(), targets=targets, trust=trust)
    finish(outcomes, f"agent {package.version} ({package.sha256[:12]})", as_json,
           extra=AGENT_COLUMNS + (("pinned",) if trust is not None else ()),
           payload=agent_payload)
