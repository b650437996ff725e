"""``edgefleet demo``: run the real flow against three simulated local Pis and narrate it."""

from __future__ import annotations

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
    """Inventory -> agent -> bundle -> verified push -> benchmark -> eval -> a regression found
    by change-point detection, on 3 simulated Pis; no Pi or sshd needed."""
    from orchestrator.artifacts.bundles import bundle_public
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
    if fresh:
        scenario.reset(home)
    cfg = Settings(home=home, database_url=None)
    # The first run trains the demo's model (~10 s here, ~30 s on a loaded 2-core VM) before
    # anything else prints: say so, on stderr under --json (stdout stays one JSON report).
    trained = (home / "cache").is_dir() and any((home / "cache").iterdir())
    say = output.stderr if as_json else output.stdout
    say.print(f"Preparing the demo in {home}: 3 simulated Pis"
              + ("" if trained else ", and training the first-crack detector on synthetic "
                 "roaster audio (numpy, seeded; once, then cached)") + "...")
    with say.status("training the demo model" if not trained else "preparing",
                    spinner="dots"):
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

    # No --shape: the model's one dynamic dimension is named "batch", which bench and the golden
    # inputs take as 1 (one 2 s window per inference), as every other tool does.
    _say(as_json, f"edgefleet bundle build {files.model_dir} --name {scenario.DEMO_BUNDLE} "
                  f"--quantize int8 --streaming-profile {files.profile}")
    with session_scope(cfg) as session:
        first, created = _build_once(session, cfg, files.model_dir, "1",
                                     load_profile_file(files.profile).to_dict())
        variant = make_variant(session, cfg, first, "int8")
        bundles = [first, variant.bundle]
        report["bundle"] = bundle_public(first) | {"created": created}
        report["variant"] = bundle_public(variant.bundle) | {"created": variant.created}
        session.expunge_all()
    if not as_json:
        for b, made in ((first, created), (variant.bundle, variant.created)):
            output.stdout.print(f"{'built' if made else 'unchanged'} {b.name}@{b.version} "
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
    nightly = _regression(cfg, files, fp32, ready, report, as_json)
    failed = [o for o in [*installed, *pushed_all, *benched, *evaluated, *nightly] if not o.ok]

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
            "  edgefleet runs regressions\n"
            "  edgefleet devices verify all\n"
            "  edgefleet rollback pi4-lab\n"
            "  edgefleet serve"
        )
    if failed:
        raise typer.Exit(1)


def _build_once(session: Any, cfg: Settings, folder: Path, version: str,
                streaming: dict[str, Any]) -> tuple[Any, bool]:
    """The demo's ``first-crack@VERSION``: built from ``folder`` the first time, the stored one
    after (``bundle build`` compares a folder with the newest version only, which is the slower
    v2 once the demo has run: rebuilding v1's folder would make a v3). ``--fresh`` rebuilds."""
    from sqlmodel import select

    from orchestrator.artifacts.bundles import build_bundle
    from orchestrator.core.models import Bundle
    from orchestrator.demo import scenario

    stored = session.exec(select(Bundle).where(Bundle.name == scenario.DEMO_BUNDLE,
                                               Bundle.version == version)).first()
    if stored is not None:
        return stored, False
    built = build_bundle(session, cfg, folder, scenario.DEMO_BUNDLE, version=version,
                         extra={"streaming": streaming})
    return built.bundle, built.created


def _evaluate(cfg: Settings, files: Any, bundle: Any, devices: list[Any],
              report: dict[str, Any], as_json: bool) -> list[Any]:
    """Dataset from the WAV folder, eval on every device at 1 and 2 threads, then the verdict."""
    from orchestrator.artifacts.datasets import build_dataset, dataset_public
    from orchestrator.cli.evaluate import print_eval
    from orchestrator.core.db import session_scope
    from orchestrator.demo import scenario
    from orchestrator.measure.evals import evaluate
    from orchestrator.measure.runs import get_run, run_public, run_results
    from orchestrator.measure.verdictreport import recommendation_lines, render_verdicts
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


NIGHTLY_DEVICE = "pi5-bench"  # the demo's one clean Pi: throttled results never enter a series
NIGHTLY_RUNS = 5  # more runs of v1 after the first bench: the series' noise ...
SLOWER_RUNS = 4  # ... then the slower v2 (the detector wants 3 runs of a new level)


def _regression(cfg: Settings, files: Any, fp32: Any, devices: list[Any],
                report: dict[str, Any], as_json: bool) -> list[Any]:
    """Nightly-style benchmarks of v1, then of a deliberately slower v2, on the clean Pi; the
    change-point detector names the run where the series got slower; roll the Pi back."""
    from orchestrator.core.db import session_scope
    from orchestrator.demo import scenario
    from orchestrator.fleet.deploy import push, rollback
    from orchestrator.measure.regressions import (
        TABLE_COLUMNS,
        caption,
        display_row,
        regressions,
        regressions_public,
        table_cells,
    )
    from orchestrator.measure.reports import format_number
    from orchestrator.measure.runs import BenchParams, bench, run_results
    from orchestrator.measure.verdicts import load_profile_file

    pi = [d for d in devices if d.name == NIGHTLY_DEVICE]
    if not pi:
        return []
    params = BenchParams(threads=[1], runs=100)
    outcomes: list[Any] = []
    report["nightly"] = []

    def nightly(bundle: Any, times: int) -> None:
        _say(as_json, f"edgefleet bench {bundle.name}@{bundle.version} {NIGHTLY_DEVICE} "
                      f"--threads 1 --runs 100   (x{times}, as a nightly schedule would)")
        for _ in range(times):
            (run,), done = bench(cfg, [bundle], pi, params, NIGHTLY_DEVICE)
            outcomes.extend(done)
            with session_scope(cfg) as session:
                p50 = [r.p50_ms for r in run_results(session, run.id)]
            report["nightly"].append({"run_id": run.id, "bundle": f"{bundle.name}@"
                                      f"{bundle.version}", "p50_ms": p50[0] if p50 else None})
            if not as_json:
                output.stdout.print(f"run {run.id}: {bundle.name}@{bundle.version} p50 "
                                    f"{format_number(p50[0]) if p50 else '-'} ms")

    nightly(fp32, NIGHTLY_RUNS)
    folder = scenario.write_slower_version(files.home, files.model_dir)
    _say(as_json, f"edgefleet bundle build {folder} --name {scenario.DEMO_BUNDLE} "
                  f"--version 2   (deliberately slower: its first layer computed "
                  f"{scenario.SLOWER_PASSES} times over)")
    with session_scope(cfg) as session:
        slower, created = _build_once(session, cfg, folder, "2",
                                      load_profile_file(files.profile).to_dict())
        session.expunge_all()
    report["slower"] = {"bundle": f"{slower.name}@{slower.version}", "created": created}
    if not as_json:
        output.stdout.print(f"{'built' if created else 'unchanged'} {slower.name}@"
                            f"{slower.version} {slower.precision}")
    _say(as_json, f"edgefleet push {slower.name}@{slower.version} {NIGHTLY_DEVICE}")
    pushed = push(cfg, slower, pi)
    outcomes.extend(pushed)
    if not as_json:
        output.stdout.print(output.outcome_table("push", pushed, ()))
    nightly(slower, SLOWER_RUNS)

    _say(as_json, f"edgefleet runs regressions --bundle {scenario.DEMO_BUNDLE}")
    with session_scope(cfg) as session:
        found = regressions(session, scenario.DEMO_BUNDLE)
    report["regressions"] = regressions_public(found)
    if not as_json:
        rows = [display_row(c) for c in found.change_points]
        output.stdout.print(output.table(
            f"{len(rows)} change point(s) in {found.series} series of {found.valid_points} "
            "valid benchmark p50s",
            list(TABLE_COLUMNS), [table_cells(r) for r in rows]))
        output.stdout.print(caption(found.detector), soft_wrap=True, style="dim")

    _say(as_json, f"edgefleet rollback {NIGHTLY_DEVICE}")
    back = rollback(cfg, pi)
    outcomes.extend(back)
    report["rollback"] = [o.as_dict() for o in back]
    if not as_json:
        output.stdout.print(output.outcome_table("rollback", back, ()))
    return outcomes
