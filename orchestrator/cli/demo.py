"""``edgefleet demo``: run the real flow against three simulated local Pis and narrate it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from orchestrator.cli.app import AGENT_COLUMNS, JsonOpt, app, handles_errors
from orchestrator.present import output

if TYPE_CHECKING:  # imported in the command: every command's start-up would pay for pydantic
    from orchestrator.core.config import Settings


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
    from orchestrator.artifacts.bundles import build_bundle, bundle_public
    from orchestrator.artifacts.quantize import make_variant
    from orchestrator.core.config import Settings
    from orchestrator.core.db import session_scope
    from orchestrator.demo import scenario
    from orchestrator.fleet.agents import install_agents
    from orchestrator.fleet.deploy import push
    from orchestrator.inventory.devices import all_devices, device_public, sync_inventory
    from orchestrator.inventory.reader import load_inventory
    from orchestrator.measure.reports import render_table
    from orchestrator.measure.runs import BenchParams, bench, get_run, run_public, run_results
    from orchestrator.measure.verdicts import load_profile_file

    home = (home or Settings().home / "demo").absolute()
    if fresh and home.exists():
        shutil.rmtree(home)
    cfg = Settings(home=home, database_url=None)
    files = scenario.prepare(home)
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

    shape = ",".join(f"{k}={'x'.join(map(str, v))}" for k, v in scenario.INPUT_SHAPES.items())
    _say(as_json, f"edgefleet bundle build {files.model_dir} --name {scenario.DEMO_BUNDLE} "
                  f"--shape {shape} --quantize int8 --streaming-profile {files.profile}")
    with session_scope(cfg) as session:
        built = build_bundle(session, cfg, files.model_dir, scenario.DEMO_BUNDLE,
                             input_shapes=scenario.INPUT_SHAPES,
                             extra={"streaming": load_profile_file(files.profile).to_dict()})
        variant = make_variant(session, cfg, built.bundle, "int8")
        bundles = [built.bundle, variant.bundle]
        report["bundle"] = bundle_public(built.bundle) | {"created": built.created}
        report["variant"] = bundle_public(variant.bundle) | {"created": variant.created}
        session.expunge_all()
    if not as_json:
        for b, created in ((built.bundle, built.created), (variant.bundle, variant.created)):
            output.stdout.print(f"{'built' if created else 'unchanged'} {b.name}@{b.version} "
                                f"{b.precision} ({output.human_bytes(b.size_bytes)}, digest "
                                f"{b.digest[:16]})")

    ready = [d for d in devices if any(o.device == d.name and o.ok for o in installed)]
    report["push"] = []
    pushed_all = []
    for bundle in bundles:  # the INT8 variant last: it is what the devices keep running
        _say(as_json, f"edgefleet push {bundle.name}@{bundle.version} all")
        with output.RichPushProgress(enabled=not as_json) as progress:
            pushed = push(cfg, bundle, ready, progress=progress)
        pushed_all += pushed
        report["push"].append({"bundle": f"{bundle.name}@{bundle.version}", "outcomes": [
            {"device": o.device, "state": o.state, "bytes_sent": o.data.get("bytes_sent", 0),
             "smoke": o.data.get("smoke"),
             "duration_s": round(o.duration_s, 3), "error": o.error} for o in pushed]})
        if not as_json:
            for o in pushed:
                o.data["sent"] = output.human_bytes(o.data.get("bytes_sent", 0))
            output.stdout.print(output.outcome_table("push", pushed, ("sent", "smoke")))
    fp32, int8 = bundles
    _say(as_json, f"edgefleet bench {fp32.name}@{fp32.version} all --threads 1,2  "
                  f"(and {int8.name}@{int8.version})")
    with output.MeasureProgress(enabled=not as_json) as progress:
        runs, benched = bench(cfg, bundles, ready, BenchParams(threads=[1, 2]), "all",
                              on_event=progress.event)
    report["bench"] = []
    for run in runs:
        with session_scope(cfg) as session:
            results = run_public(get_run(session, run.id), run_results(session, run.id))
        report["bench"].append({"run_id": run.id, "state": run.state,
                                "bundle": f"{run.bundle_name}@{run.bundle_version}",
                                "results": results["results"]})
        if not as_json:
            output.stdout.print(render_table(results["results"], f"run {run.id}: "
                                             f"{run.bundle_name}@{run.bundle_version}"))

    evaluated = _evaluate(cfg, files, int8, ready, report, as_json)
    failed = [o for o in [*installed, *pushed_all, *benched, *evaluated] if not o.ok]

    _say(as_json, "edgefleet devices list")
    with session_scope(cfg) as session:
        fleet = [device_public(d) for d in all_devices(session)]
    report["devices"] = fleet
    if as_json:
        output.print_json(report)
    else:
        output.stdout.print(output.devices_table(fleet))
        output.stdout.print(
            "\nSimulated sensors; every byte, hash and activation above was real. Explore:\n"
            f"  export EDGEFLEET_HOME={home}\n"
            "  edgefleet devices show pi5-roaster\n"
            "  edgefleet bundle show first-crack\n"
            f"  edgefleet runs show {runs[0].id} --format md\n"
            f"  edgefleet runs compare {runs[0].id} {runs[1].id}\n"
            f"  edgefleet runs verdict {report['eval']['run_id']}\n"
            "  edgefleet devices verify all\n"
            "  edgefleet rollback pi4-lab\n"
            "  edgefleet serve"
        )
    if failed:
        raise typer.Exit(1)


def _evaluate(cfg: Settings, files: Any, bundle: Any, devices: list[Any],
              report: dict[str, Any], as_json: bool) -> list[Any]:
    """Dataset from the WAV folder, eval on every device at 1 and 2 threads, then the verdict."""
    from orchestrator.artifacts.datasets import build_dataset, dataset_public
    from orchestrator.cli.evaluate import print_eval
    from orchestrator.core.db import session_scope
    from orchestrator.demo import scenario
    from orchestrator.measure.evals import evaluate
    from orchestrator.measure.reports import recommendation_lines, render_verdicts
    from orchestrator.measure.runs import get_run, run_public, run_results
    from orchestrator.measure.verdicts import verdicts_for_run

    ref = f"{bundle.name}@{bundle.version}"
    _say(as_json, f"edgefleet dataset build {files.eval_dir} --name {scenario.DEMO_DATASET} "
                  f"--for {ref}")
    with session_scope(cfg) as session:
        made = build_dataset(session, cfg, files.eval_dir, scenario.DEMO_DATASET, bundle=bundle)
        dataset = made.dataset
        report["dataset"] = dataset_public(dataset) | {"created": made.created}
        session.expunge_all()
    if not as_json:
        output.stdout.print(f"{'built' if made.created else 'unchanged'} "
                            f"{dataset.name}@{dataset.version}: {report['dataset']['samples']} "
                            f"labelled windows")

    _say(as_json, f"edgefleet eval {ref} {scenario.DEMO_DATASET} all --threads 1,2 "
                  "--threshold-sweep")
    with output.MeasureProgress(enabled=not as_json, kind="eval") as progress:
        run, outcomes = evaluate(cfg, bundle, dataset, devices, [1, 2], None, 0.5,
                                 on_event=progress.event, targets="all")
    with session_scope(cfg) as session:
        public = run_public(get_run(session, run.id), run_results(session, run.id))
        verdict = verdicts_for_run(session, run.id)
    report["eval"] = {"run_id": run.id, "state": run.state, "results": public["results"],
                      "agreement": public.get("agreement")}
    report["verdict"] = verdict
    if not as_json:
        print_eval(public, "table", True)
        _say(as_json, f"edgefleet runs verdict {run.id}")
        output.stdout.print(render_verdicts(verdict))
        for line in recommendation_lines(verdict):
            output.stdout.print(line, soft_wrap=True)
    return outcomes
