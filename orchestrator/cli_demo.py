"""``edgefleet demo``: run the real flow against three simulated local Pis and narrate it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator import output
from orchestrator.cli import AGENT_COLUMNS, JsonOpt, app, handles_errors
from orchestrator.config import Settings


def _say(as_json: bool, command: str) -> None:
    if not as_json:
        output.stdout.print(f"\n[bold]$ {command}[/bold]", markup=True)


@app.command("demo")
@handles_errors
def demo_cmd(
    home: Annotated[Path | None, typer.Option(help="Demo state dir (default: "
                                                   "$EDGEFLEET_HOME/demo).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start from an empty demo home.")]
    = False,
    as_json: JsonOpt = False,
) -> None:
    """Inventory -> agent -> bundle -> verified push -> benchmark on 3 simulated Pis; no Pi or
    sshd needed."""
    from orchestrator import demo
    from orchestrator.agents import install_agents
    from orchestrator.bundles import build_bundle, bundle_public
    from orchestrator.db import session_scope
    from orchestrator.deploy import push
    from orchestrator.devices import all_devices, device_public, sync_inventory
    from orchestrator.inventory import load_inventory
    from orchestrator.reports import render_table
    from orchestrator.runs import BenchParams, bench, get_run, run_public, run_results

    home = (home or Settings().home / "demo").absolute()
    if fresh and home.exists():
        shutil.rmtree(home)
    cfg = Settings(home=home, database_url=None)
    files = demo.prepare(home)
    report: dict[str, Any] = {"home": str(home), "inventory": str(files.inventory)}

    _say(as_json, f"edgefleet inventory sync {files.inventory}")
    with session_scope(cfg) as session:
        sync = sync_inventory(session, load_inventory(files.inventory))
        devices = all_devices(session)
    report["sync"] = sync.as_dict()
    if not as_json:
        output.stdout.print(f"{len(sync.added)} added, {len(sync.changed)} changed, "
                            f"{len(sync.unchanged)} unchanged")

    _say(as_json, "edgefleet agent install all")
    package, installed = install_agents(cfg, devices)
    report["agent"] = [o.as_dict() | {"facts": None} for o in installed]
    if not as_json:
        output.stdout.print(output.outcome_table(f"agent {package.version}", installed,
                                                 AGENT_COLUMNS))

    _say(as_json, f"edgefleet bundle build {files.model_dir} --name {demo.DEMO_BUNDLE}")
    with session_scope(cfg) as session:
        built = build_bundle(session, cfg, files.model_dir, demo.DEMO_BUNDLE,
                             input_shapes=demo.INPUT_SHAPES)
        bundle = built.bundle
        report["bundle"] = bundle_public(bundle) | {"created": built.created}
    if not as_json:
        state = "built" if built.created else "unchanged"
        output.stdout.print(f"{state} {bundle.name}@{bundle.version} "
                            f"({output.human_bytes(bundle.size_bytes)}, digest "
                            f"{bundle.digest[:16]})")

    _say(as_json, f"edgefleet push {bundle.name}@{bundle.version} all")
    ready = [d for d in devices if any(o.device == d.name and o.ok for o in installed)]
    with output.RichPushProgress(enabled=not as_json) as progress:
        pushed = push(cfg, bundle, ready, progress=progress)
    report["push"] = [{"device": o.device, "state": o.state, "bytes_sent":
                       o.data.get("bytes_sent", 0), "duration_s": round(o.duration_s, 3),
                       "error": o.error} for o in pushed]
    if not as_json:
        for o in pushed:
            o.data["sent"] = output.human_bytes(o.data.get("bytes_sent", 0))
        output.stdout.print(output.outcome_table("push", pushed, ("sent",)))

    _say(as_json, f"edgefleet bench {bundle.name}@{bundle.version} all --threads 1,2")
    with output.BenchProgress(enabled=not as_json) as progress:
        (run,), benched = bench(cfg, [bundle], ready, BenchParams(threads=[1, 2]), "all",
                                on_event=progress.event)
    with session_scope(cfg) as session:
        results = run_public(get_run(session, run.id), run_results(session, run.id))["results"]
    report["bench"] = {"run_id": run.id, "state": run.state, "results": results}
    if not as_json:
        output.stdout.print(render_table(results, f"run {run.id}: {bundle.name}@"
                                                  f"{bundle.version}"))

    _say(as_json, "edgefleet devices list")
    with session_scope(cfg) as session:
        fleet = [device_public(d) for d in all_devices(session)]
    report["devices"] = fleet
    failed = [o for o in [*installed, *pushed, *benched] if not o.ok]
    if as_json:
        output.print_json(report)
    else:
        output.stdout.print(output.devices_table(fleet))
        output.stdout.print(
            "\nSimulated sensors; every byte, hash and activation above was real. Explore:\n"
            f"  export EDGEFLEET_HOME={home}\n"
            "  edgefleet devices show pi5-roaster\n"
            "  edgefleet bundle show first-crack\n"
            f"  edgefleet runs show {run.id} --format md\n"
            "  edgefleet rollback pi4-lab"
        )
    if failed:
        raise typer.Exit(1)
