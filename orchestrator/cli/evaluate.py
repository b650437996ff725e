"""CLI: ``edgefleet eval N[@V] D TARGETS``: push the dataset, evaluate on every device, print the
paper-style report (orchestrator/measure/evalreport.py). Exit 1 if any device failed. The work runs
in
this process and is recorded as a job (origin "cli"), like ``edgefleet bench``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from orchestrator.cli.app import (
    Forks,
    JsonOpt,
    Targets,
    Timeout,
    app,
    exit_if_interrupted,
    handles_errors,
    settings,
)
from orchestrator.core.errors import EdgeFleetError
from orchestrator.present import output
from orchestrator.present.cliparse import parse_threads

FORMATS = ("table", "md", "csv", "json")


def print_eval(public: dict[str, Any], fmt: str, sweep: bool) -> None:
    from rich.text import Text

    from orchestrator.measure import evalreport
    from orchestrator.measure.reports import state_note

    note = state_note(public)
    if fmt == "md":
        output.print_text((f"**{note}**\n\n" if note else "")
                          + evalreport.eval_markdown(public, sweep))
    elif fmt == "csv":
        output.print_text(evalreport.eval_csv(public))
    else:
        for part in evalreport.render_eval(public, sweep):
            output.stdout.print(part)
        if note:
            output.stdout.print(Text(note, style="yellow"), soft_wrap=True)


@app.command("eval")
@handles_errors
def eval_cmd(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION, already pushed to TARGETS")],
    dataset_ref: Annotated[str, typer.Argument(metavar="DATASET", help="D or D@VERSION")],
    targets: Targets,
    threads: Annotated[str, typer.Option(help="Thread counts, e.g. 1,2.")] = "1",
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs before the samples.")] = 1,
    positive: Annotated[str | None, typer.Option(
        help="Positive class label (binary default: class 1).")] = None,
    threshold: Annotated[float, typer.Option(help="P(positive) >= this is positive.")] = 0.5,
    threshold_sweep: Annotated[bool, typer.Option(
        "--threshold-sweep", help="Show the 0.50..0.95 sweep and the recommendation.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="table | md | csv | json")] = "table",
    forks: Forks = 10,
    timeout: Timeout = None,
    as_json: JsonOpt = False,
) -> None:
    """Accuracy on the device: push DATASET, run it through the bundle on every device and
    thread count, report metrics, confusion matrices and whether the devices agree."""
    from orchestrator.artifacts.bundles import get_bundle
    from orchestrator.artifacts.datasets import get_dataset
    from orchestrator.core.db import session_scope
    from orchestrator.jobs import tracker
    from orchestrator.jobs.execute import eval_job_params
    from orchestrator.measure.runs import get_run, run_public, run_results

    if fmt not in FORMATS:
        raise EdgeFleetError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    as_json = as_json or fmt == "json"
    cfg = settings()
    with session_scope(cfg) as session:
        bundle = get_bundle(session, ref)
        dataset = get_dataset(session, dataset_ref)
        job_params = eval_job_params(f"{bundle.name}@{bundle.version}",
                                     f"{dataset.name}@{dataset.version}", parse_threads(threads),
                                     warmup, positive, threshold, forks, timeout)
    # The same job a server would run (jobs.execute.run_eval); the Jobs page shows it.
    with tracker.track(cfg, "eval", job_params, targets) as job, \
            output.MeasureProgress(enabled=not as_json, kind="eval") as progress:
        done = job.run(event_view=progress.event)
    outcomes = done.outcomes
    run_id = done.run_id
    assert run_id is not None
    with session_scope(cfg) as session:
        public = run_public(get_run(session, run_id), run_results(session, run_id))
    public["outcomes"] = [o.as_dict() for o in outcomes]
    if as_json:
        output.print_json(public)
    else:
        print_eval(public, fmt, threshold_sweep)
    exit_if_interrupted(job.interrupted)
    if any(not o.ok for o in outcomes):
        raise typer.Exit(1)
