"""CLI: bench, runs list/show/compare, telemetry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from orchestrator.cli.app import (
    Forks,
    JsonOpt,
    Targets,
    Timeout,
    app,
    exit_if_interrupted,
    finish,
    handles_errors,
    select,
    settings,
)
from orchestrator.core.errors import EdgeFleetError
from orchestrator.present import output
from orchestrator.present.cliparse import parse_constants, parse_shapes, parse_threads, row_id

runs_app = typer.Typer(no_args_is_help=True, help="Benchmark runs: list, show, compare.")
app.add_typer(runs_app, name="runs")

FORMATS = ("table", "md", "csv", "json")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise EdgeFleetError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")


def _results_public(run_id: int, latencies: bool = False, samples: bool = False,
                    ) -> tuple[dict[str, Any], list[dict]]:
    """A run and its results; with the raw latencies and/or sampler rows when asked for (a
    comparison needs the latencies only)."""
    from orchestrator.core.db import session_scope
    from orchestrator.jobs.queue import recover_interrupted
    from orchestrator.measure.runs import get_run, run_public, run_results

    cfg = settings()
    recover_interrupted(cfg)  # a run whose process died says so, not "running"
    with session_scope(cfg) as session:
        run = get_run(session, run_id)
        public = run_public(run, run_results(session, run_id, latencies=latencies,
                                             samples=samples),
                            latencies=latencies, samples=samples)
    return public, public["results"]


def _print_results(results: list[dict], title: str, fmt: str) -> None:
    from orchestrator.measure import reports

    if fmt == "md":
        output.print_text(reports.to_markdown(results))
    elif fmt == "csv":
        output.print_text(reports.to_csv(results))
    else:
        output.stdout.print(reports.render_table(results, title))


def _check_needs_baseline(baseline: str | None, **given: bool) -> None:
    """Options that only mean something with a baseline are refused without one: silently
    ignored, a CI job would think it was gated."""
    if baseline:
        return
    named = [f"--{name.replace('_', '-')}" for name, on in given.items() if on]
    if named:
        raise EdgeFleetError(f"{' and '.join(named)}: only with --baseline NAME@VERSION "
                             "(without a baseline nothing is compared or gated)")


def _check_junit_path(junit: Path, baseline: str | None) -> None:
    """Before the benchmark, not after it: an unwritable path cost the whole gate's run, then a
    traceback (exit 1: "regression" to a CI job) and the report."""
    import os

    if not baseline:
        raise EdgeFleetError("--junit writes the comparison with a baseline: give --baseline "
                             "N@V too")
    folder = junit.parent if str(junit.parent) else Path(".")
    if junit.is_dir():
        raise EdgeFleetError(f"--junit {junit} is a folder: give a file path, e.g. "
                             f"{junit / 'edgefleet.xml'}")
    if not folder.is_dir():
        raise EdgeFleetError(f"--junit {junit}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise EdgeFleetError(f"--junit {junit}: the folder {folder} is not writable by this "
                             "user")


@app.command("bench")
@handles_errors
def bench_cmd(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION, already pushed to TARGETS")],
    targets: Targets,
    threads: Annotated[str, typer.Option(help="Thread counts, e.g. 1,2,4.")] = "1,2,4",
    warmup: Annotated[int, typer.Option(min=0)] = 5,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs (at least).")] = 30,
    min_seconds: Annotated[float, typer.Option(min=0, help="Time the loop for at least S s.")]
    = 0.0,
    shape: Annotated[list[str], typer.Option(help="NAME=1x1024x128 for dynamic dims.")] = [],  # noqa: B006
    input: Annotated[list[str], typer.Option(help="NAME=VALUE: a constant input.")] = [],  # noqa: B006
    provider: Annotated[list[str], typer.Option(
        help="onnxruntime execution provider(s), in order.")] = ["CPUExecutionProvider"],  # noqa: B006
    graph_optimization: Annotated[str, typer.Option(
        help="all | extended | basic | disabled")] = "all",
    baseline: Annotated[str | None, typer.Option(help="Bench N@V too and compare.")] = None,
    max_regression: Annotated[str | None, typer.Option(
        help="Gate (with --baseline): fail if slower by more. Default 5%.")] = None,
    junit: Annotated[Path | None, typer.Option(help="Write the comparison as JUnit XML.")]
    = None,
    include_invalid: Annotated[bool, typer.Option(
        help="Compare throttled results too (with --baseline).")] = False,
    rounds: Annotated[int | None, typer.Option(
        min=1, help="Fresh processes per thread count, timed runs split over them (default "
        "1; with --baseline 5, alternating baseline and candidate so machine drift hits "
        "both).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | md | csv | json")] = "table",
    forks: Forks = 10,
    timeout: Timeout = None,
    as_json: JsonOpt = False,
) -> None:
    """Benchmark a bundle per device and thread count, with throttle-aware telemetry."""
    from orchestrator.artifacts.bundles import get_bundle
    from orchestrator.core.db import session_scope
    from orchestrator.jobs import tracker
    from orchestrator.jobs.execute import bench_job_params
    from orchestrator.measure.rounds import BENCH_ROUNDS, GATE_ROUNDS
    from orchestrator.measure.runs import BenchParams

    _check_format(fmt)
    _check_needs_baseline(baseline, max_regression=max_regression is not None,
                          include_invalid=include_invalid)
    if junit is not None:
        _check_junit_path(junit, baseline)
    cfg = settings()
    params = BenchParams(threads=parse_threads(threads), warmup=warmup, runs=runs,
                         min_seconds=min_seconds, shapes=parse_shapes(shape),
                         constants=parse_constants(input), providers=list(provider),
                         graph_optimization=graph_optimization)
    gate_bound = None
    if baseline:
        from orchestrator.measure.pairing import parse_percent

        try:
            gate_bound = parse_percent(max_regression or "5%")
        except ValueError as exc:
            raise EdgeFleetError(f"--max-regression: {exc}") from None
    with session_scope(cfg) as session:
        bundle = get_bundle(session, ref)
        base_bundle = get_bundle(session, baseline) if baseline else None
        candidate = f"{bundle.name}@{bundle.version}"
        base_ref = f"{base_bundle.name}@{base_bundle.version}" if base_bundle else None
    as_json = as_json or fmt == "json"
    # The same job a server would run (jobs.execute.run_bench, gate included); only JUnit and
    # the terminal rendering are the CLI's.
    job_params = bench_job_params(candidate, params, base_ref,
                                  rounds or (GATE_ROUNDS if base_ref else BENCH_ROUNDS),
                                  forks, timeout,
                                  gate_bound, include_invalid)
    with tracker.track(cfg, "bench", job_params, targets) as job, \
            output.MeasureProgress(enabled=not as_json) as progress:
        done = job.run(event_view=progress.event)
    public = [_results_public(run_id)[0] for run_id in done.result["run_ids"]]
    report: dict[str, Any] = {"runs": public}
    gated = "gate" in done.result
    if gated:
        report["comparison"] = done.result["comparison"]
        report["gate"] = {k: v for k, v in done.result["gate"].items()
                          if k in ("max_regression", "failed", "compared")}
        if junit:
            from orchestrator.measure.junit import write_junit

            write_junit(junit, report["comparison"], gate_bound or 0.0)
    if as_json:
        output.print_json(report if gated else public[-1])
    else:
        for run in public:
            _print_results(run["results"], f"run {run['id']}: {run['bundle']['name']}@"
                           f"{run['bundle']['version']}", fmt)
        if gated:
            from orchestrator.measure.reports import render_comparison

            output.stdout.print(render_comparison(report["comparison"]))
    exit_if_interrupted(job.interrupted)
    if gated and done.result["gate"]["error"]:
        output.stderr.print(done.result["gate"]["error"])
        raise typer.Exit(1)
    if any(not o.ok for o in done.outcomes):
        raise typer.Exit(1)


@runs_app.command("list")
@handles_errors
def runs_list(as_json: JsonOpt = False) -> None:
    """Recent runs, newest first."""
    from orchestrator.core import listings

    # A run whose process died says so, not "running" (the fast path cannot tell: it recovers
    # only when a run is still running, which the fast path reports as None to take this way).
    runs = listings.runs()  # sqlite3 alone, when the DB is a current SQLite file
    if runs is None or any(r["state"] == "running" for r in runs):
        from orchestrator.core.db import session_scope
        from orchestrator.jobs.queue import recover_interrupted
        from orchestrator.measure.runs import list_runs, run_public

        cfg = settings()
        recover_interrupted(cfg)
        with session_scope(cfg) as session:
            runs = [run_public(r) for r in list_runs(session)]
    if as_json:
        output.print_json(runs)
        return
    output.stdout.print(output.table(None, ["run", "kind", "bundle", "targets", "state", "by",
                                            "created"],
                                     [(r["id"], r["kind"], f"{r['bundle']['name']}@"
                                       f"{r['bundle']['version']}", r["targets"], r["state"],
                                       r["created_by"], r["created_at"][:19]) for r in runs]))


@runs_app.command("show")
@handles_errors
def runs_show(
    run_id: Annotated[int, row_id("run", metavar="RUN_ID")],
    fmt: Annotated[str, typer.Option("--format", help="table | md | csv | json")] = "table",
    raw: Annotated[bool, typer.Option(help="With --json: every latency and sample.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """One run as the table edge-ML write-ups publish (or Markdown / CSV / JSON)."""
    _check_format(fmt)
    public, results = _results_public(run_id, latencies=raw, samples=raw)
    if as_json or fmt == "json":
        output.print_json(public)
        return
    if public["kind"] == "eval":
        from orchestrator.cli.evaluate import print_eval

        print_eval(public, fmt, sweep=True)
        return
    from orchestrator.measure.reports import state_note

    note = state_note(public)
    if note and fmt == "md":
        output.print_text(f"**{note}**\n")
    _print_results(results, f"run {run_id}: {public['bundle']['name']}@"
                   f"{public['bundle']['version']} ({public['state']})", fmt)
    if note and fmt == "table":
        output.stdout.print(Text(note, style="yellow"), soft_wrap=True)



@runs_app.command("compare")
@handles_errors
def runs_compare(
    run_a: Annotated[int, row_id("run", metavar="RUN_A")],
    run_b: Annotated[int, row_id("run", metavar="RUN_B")],
    include_invalid: Annotated[bool, typer.Option(help="Compare throttled results too.")]
    = False,
    fmt: Annotated[str, typer.Option("--format", help="table | md | csv | json")] = "table",
    as_json: JsonOpt = False,
) -> None:
    """B relative to A per device and thread count: ratio of medians, 95% CI, p, verdict.
    Both runs must be of one kind (two benchmarks, or two evals)."""
    from orchestrator.core.db import session_scope
    from orchestrator.measure import reports
    from orchestrator.measure.pairing import compare_runs
    from orchestrator.measure.runs import compared_runs

    _check_format(fmt)
    with session_scope(settings()) as session:
        first, second = compared_runs(session, run_a, run_b)
    rows = compare_runs(first["results"], second["results"], include_invalid=include_invalid)
    if as_json or fmt == "json":
        output.print_json(rows)
    elif fmt == "md":
        output.print_text(reports.comparison_markdown(rows))
    elif fmt == "csv":
        output.print_text(reports.comparison_csv(rows))
    else:
        output.stdout.print(reports.render_comparison(rows))


@app.command("telemetry")
@handles_errors
def telemetry_cmd(targets: Targets, forks: Forks = 10, timeout: Timeout = None,
                  as_json: JsonOpt = False) -> None:
    """A one-shot snapshot per device (temperature, frequency, throttling, load, memory, disk),
    stored in the DB."""
    from orchestrator.fleet.telemetry import take_snapshots

    outcomes = take_snapshots(settings(), select(targets), forks, timeout)
    # The table's two composed columns; --json keeps the fields as stored (throttled_hex,
    # throttle_now, disk_free_bytes...), for scripts.
    for o in [] if as_json else outcomes:
        o.data["throttled"] = " ".join(filter(None, [
            o.data.get("throttled_hex"), ", ".join(o.data.get("throttle_now") or []),
            f"(since boot: {', '.join(o.data['throttle_since_boot'])})"
            if o.data.get("throttle_since_boot") else ""])) or None
        o.data["disk_free"] = output.human_bytes(o.data.get("disk_free_bytes"))
    finish(outcomes, "telemetry", as_json,
           extra=("temp_c", "freq_mhz", "throttled", "load_1m", "mem_available_mb", "disk_free"))
