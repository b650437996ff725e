"""CLI: ``edgefleet runs regressions [TARGETS]``: change points of the benchmark p50 series
(logic in orchestrator/measure/regressions.py, shared with ``GET /api/regressions`` and /trends)."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli.app import JsonOpt, handles_errors, select, settings
from orchestrator.cli.runs import runs_app
from orchestrator.present import output


@runs_app.command("regressions")
@handles_errors
def runs_regressions(
    targets: Annotated[str | None, typer.Argument(
        help="Target pattern (default: every device with benchmark results).")] = None,
    bundle: Annotated[str | None, typer.Option("--bundle", help="Bundle name.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change points in the benchmark p50 series (device x bundle x precision x threads): the
    run where each new level starts, after/before with a 95% CI, and p. Slower is a
    regression; throttled or invalid results are left out."""
    from orchestrator.core.db import session_scope
    from orchestrator.measure.regressions import (
        TABLE_COLUMNS,
        caption,
        display_row,
        regressions,
        regressions_public,
        table_cells,
    )

    devices = [d.name for d in select(targets)] if targets else None
    with session_scope(settings()) as session:
        found = regressions(session, bundle, devices=devices)
    if as_json:
        output.print_json(regressions_public(found))
        return
    slower = sum(c.slower for c in found.change_points)
    summary = (f"{len(found.change_points)} change point(s), {slower} slower, in "
               f"{found.series} series of {found.valid_points} valid benchmark p50s")
    if found.change_points:
        rows = [display_row(c) for c in found.change_points]
        output.stdout.print(output.table(summary, list(TABLE_COLUMNS),
                                         [table_cells(r) for r in rows]))
    else:
        output.stdout.print(summary)
    output.stdout.print(caption(found.detector), soft_wrap=True, style="dim")
