"""The baseline gate of a benchmark: is the candidate slower than the baseline by more than the
bound, on evidence? One function for every way a baseline bench starts (``edgefleet bench
--baseline``, a job from the API or the pages, a schedule), so a scheduled baseline benchmark
fails its job the way the CLI fails its exit status.

The statistics are ``pairing.compare_runs`` (paired rows with CIs) and ``pairing.gate``
(significantly slower *and* beyond the bound); this module reads the two runs' raw
latencies, applies them and words the verdict.
"""

from __future__ import annotations

from typing import Any

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.measure.pairing import compare_runs, gate
from orchestrator.measure.runs import get_run, run_public, run_results

DEFAULT_MAX_REGRESSION = 0.05  # as `edgefleet bench --max-regression 5%`


def run_latencies(settings: Settings, run_id: int) -> list[dict[str, Any]]:
    """A run's results with their raw per-inference latencies (a CI needs them)."""
    with session_scope(settings) as session:
        run = get_run(session, run_id)
        return run_public(run, run_results(session, run_id, latencies=True),
                          latencies=True)["results"]


def check(settings: Settings, baseline_run: int, candidate_run: int, baseline: str,
          max_regression: float, include_invalid: bool = False) -> dict[str, Any]:
    """``{"comparison": rows, "gate": {...}}``; ``gate["error"]`` says why it failed (None when
    it passed). No pair compared is a failure too: passing a regression check blind (every
    result failed or was throttled) would let a regression through."""
    rows = compare_runs(run_latencies(settings, baseline_run),
                        run_latencies(settings, candidate_run), include_invalid=include_invalid)
    failed = gate(rows, max_regression)
    compared = sum(1 for r in rows if not r.get("excluded"))
    error = None
    if compared == 0:
        error = ("gate: no result pair could be compared (all failed or throttled); not "
                 "passing a regression check blind")
    elif failed:
        error = (f"gate: {len(failed)} device/thread pair{'s' if len(failed) != 1 else ''} "
                 f"slower than {baseline} by more than {max_regression * 100:g}%")
    return {"comparison": rows,
            "gate": {"max_regression": max_regression, "failed": failed, "compared": compared,
                     "passed": error is None, "error": error}}
