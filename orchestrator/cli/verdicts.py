"""CLI: ``edgefleet runs verdict RUN_ID``: can each device keep up with the stream, at which
thread count, at what energy (logic in orchestrator/measure/verdicts.py, table in reports.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli.app import JsonOpt, handles_errors, settings
from orchestrator.cli.runs import runs_app
from orchestrator.present import output
from orchestrator.present.cliparse import row_id


@runs_app.command("verdict")
@handles_errors
def runs_verdict(
    run_id: Annotated[int, row_id("run", metavar="RUN_ID")],
    window: Annotated[float | None, typer.Option(
        "--window", help="Seconds of audio per window (e.g. 10).")] = None,
    hop: Annotated[float | None, typer.Option(
        "--hop", help="Seconds between window starts (e.g. 7).")] = None,
    overlap: Annotated[float | None, typer.Option(
        "--overlap", help="Or: overlap of consecutive windows, 0 <= F < 1 (0.3 = 30%).")] = None,
    threshold: Annotated[float | None, typer.Option(
        "--threshold", help="A window is positive when P(positive) >= F.")] = None,
    min_positive: Annotated[int | None, typer.Option(
        "--min-positive", help="Positive windows needed to confirm an event.")] = None,
    confirm_windows: Annotated[int | None, typer.Option(
        "--confirm-windows", help="...among this many consecutive windows.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Per device and thread count: keeps up with the stream (p99 < hop)? headroom, real-time
    factor, worst-case detection delay, energy; and the recommended thread count.

    The streaming profile comes from the options, else the run, else the bundle's
    (`bundle build --streaming-profile`); options override a stored profile's values."""
    from orchestrator.core.db import session_scope
    from orchestrator.jobs.queue import recover_interrupted
    from orchestrator.measure.verdictreport import recommendation_lines, render_verdicts
    from orchestrator.measure.verdicts import verdicts_for_run

    overrides = {"window_s": window, "hop_s": hop, "overlap": overlap, "threshold": threshold,
                 "min_positive": min_positive, "confirm_windows": confirm_windows}
    cfg = settings()
    recover_interrupted(cfg)  # a run whose process died is interrupted: no verdict on it
    with session_scope(cfg) as session:
        report = verdicts_for_run(session, run_id, overrides=overrides)
    if as_json:
        output.print_json(report)
        return
    output.stdout.print(render_verdicts(report))
    output.stdout.print()
    for line in recommendation_lines(report):
        output.stdout.print(line, soft_wrap=True)
