"""What a job does: the push / bench / eval / rollback / verify / telemetry executors (their
progress and cancel flag: ``jobs.context``).

Every one of these operations runs through here, whoever started it: a server worker takes the
job from the queue (``jobs.runner``), the CLI runs its own job in-process (``jobs.tracker``).
So a CLI push is on the Jobs page and can be cancelled from the web, and a baseline bench gates
(``measure.gate``) the same whether typed, clicked or scheduled. What the CLI shows while it
waits comes in through the context (``push_view``, ``event_view``) and the Outcomes the
JobOutcome carries back.

Split from ``jobs.queue`` (the queue, its states) so that the executors — the part that talks
to devices through deploy, runs and telemetry — read on their own. Executors never add a
locking layer: ``deploy.push`` and ``runs.bench`` already lease each device.

Cancellation is cooperative and lands on boundaries where stopping leaves nothing half done:
a push stops before a device's agent session starts (a device already transferring finishes and
activates or not, atomically, as usual); a bench stops before the next measurement (one thread
count of one round of one bundle) of each device; an eval stops before a device's dataset push
and before each thread count's fresh child. The devices stopped that way record the
cancellation as their error, in the Deployment or Result rows like any other failure.

The parameter checks live in ``jobs.params``; the names jobs, schedules and the CLI use are
re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.artifacts.bundles import get_bundle
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Run
from orchestrator.fleet import deploy, telemetry, verify
from orchestrator.fleet.fanout import Outcome
from orchestrator.inventory.devices import select_devices
from orchestrator.jobs.context import (
    JobContext,
    JobPushProgress,
    bench_events,
    eval_events,
    record_outcomes,
)
from orchestrator.jobs.params import ALLOWED as ALLOWED
from orchestrator.jobs.params import GRAPH_OPTIMIZATIONS as GRAPH_OPTIMIZATIONS
from orchestrator.jobs.params import bench_job_params as bench_job_params
from orchestrator.jobs.params import bench_params
from orchestrator.jobs.params import default_targets as default_targets
from orchestrator.jobs.params import eval_job_params as eval_job_params
from orchestrator.jobs.params import validate_params as validate_params
from orchestrator.measure import runs
from orchestrator.present import wording
from orchestrator.present.wording import plural

if TYPE_CHECKING:
    pass

# --- executors -------------------------------------------------------------------------------


@dataclass
class JobOutcome:
    state: str  # a terminal job state
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    run_id: int | None = None
    # Each device's Outcome, for a CLI rendering its table; not stored (``result`` is).
    outcomes: list[Outcome] = field(default_factory=list, repr=False, compare=False)


def _summary(verb: str, outcomes: Sequence[Outcome], cancelled: set[str],
             result: dict[str, Any], run_id: int | None = None) -> JobOutcome:
    failed = [o for o in outcomes if not o.ok and o.device not in cancelled]
    kept = list(outcomes)
    if cancelled:
        done = len(outcomes) - len(cancelled)
        # "cancelled:" is completed with who asked by jobs.finish_job / JobTracker.finish.
        return JobOutcome("cancelled", result, f"cancelled: {verb} stopped on "
                          f"{', '.join(sorted(cancelled))}; {done} of "
                          f"{plural(len(outcomes), 'device')} finished before that and "
                          f"{wording.verb(done, 'keeps its', 'keep their')} results", run_id, kept)
    if failed:
        names = "; ".join(o.error or f"{o.device}: failed" for o in failed)
        return JobOutcome("failed", result, f"{verb} failed on {len(failed)} of "
                          f"{plural(len(outcomes), 'device')}: {names}", run_id, kept)
    return JobOutcome("succeeded", result, None, run_id, kept)


def push_summary(bundle: str, outcomes: Sequence[Outcome], cancelled: Collection[str] = (),
                 digest: str | None = None) -> JobOutcome:
    devices = [{"device": o.device, "state": o.state,
                "bytes_sent": int(o.data.get("bytes_sent", 0)),
                "duration_s": round(o.duration_s, 3), "error": o.error} for o in outcomes]
    return _summary("push", outcomes, set(cancelled),
                    {"bundle": bundle, "digest": digest, "devices": devices})


def bench_summary(runs_done: Sequence[Run], outcomes: Sequence[Outcome],
                  cancelled: Collection[str] = ()) -> JobOutcome:
    result = {
        "run_ids": [r.id for r in runs_done],
        "runs": [{"id": r.id, "bundle": f"{r.bundle_name}@{r.bundle_version}", "state": r.state}
                 for r in runs_done],
        "devices": [{"device": o.device, "state": o.state, "error": o.error,
                     "duration_s": round(o.duration_s, 3)} for o in outcomes],
    }
    # The candidate is the last bundle benched (the baseline, if any, comes first).
    return _summary("bench", outcomes, set(cancelled), result,
                    runs_done[-1].id if runs_done else None)


def eval_summary(run: Run, outcomes: Sequence[Outcome],
                 cancelled: Collection[str] = ()) -> JobOutcome:
    """An eval job's result: its run (linked as run_id) and each device's outcome."""
    dataset = (run.params or {}).get("dataset") or {}
    result = {
        "run_ids": [run.id],
        "runs": [{"id": run.id, "bundle": f"{run.bundle_name}@{run.bundle_version}",
                  "state": run.state}],
        "dataset": f"{dataset.get('name')}@{dataset.get('version')}",
        "devices": [{"device": o.device, "state": o.state, "error": o.error,
                     "duration_s": round(o.duration_s, 3),
                     "dataset_bytes_sent": int(o.data.get("dataset_bytes_sent", 0))}
                    for o in outcomes],
    }
    return _summary("eval", outcomes, set(cancelled), result, run.id)


def run_push(settings: Settings, ctx: JobContext, params: dict[str, Any],
             targets: str) -> JobOutcome:
    with session_scope(settings) as session:
        bundle = get_bundle(session, params["bundle"])
        devices = select_devices(session, targets)
    if params.get("rollout"):  # staged: canary, then batches (jobs.rollout)
        from orchestrator.jobs.rollout import run_rollout

        done = run_rollout(settings, ctx, params, targets, bundle, devices,
                           JobPushProgress(ctx, ctx.push_view))
        return JobOutcome(done.state, done.result, done.error, outcomes=done.outcomes)
    outcomes = deploy.push(settings, bundle, devices, params.get("forks") or 10,
                           params.get("timeout"), JobPushProgress(ctx, ctx.push_view),
                           job_id=ctx.job_id)
    return push_summary(f"{bundle.name}@{bundle.version}", outcomes, ctx.stopped(outcomes),
                        bundle.digest)


def run_bench(settings: Settings, ctx: JobContext, params: dict[str, Any],
              targets: str) -> JobOutcome:
    with session_scope(settings) as session:
        bundle = get_bundle(session, params["bundle"])
        base = get_bundle(session, params["baseline"]) if params.get("baseline") else None
        devices = select_devices(session, targets)
    bundles = [base, bundle] if base else [bundle]
    rounds = params.get("rounds") or 1
    steps = len(params["threads"]) * rounds * len(bundles)
    runs_done, outcomes = runs.bench(settings, bundles, devices, bench_params(params), targets,
                                     params.get("forks") or 10, params.get("timeout"),
                                     bench_events(ctx, steps, ctx.event_view), rounds=rounds,
                                     created_by=ctx.created_by or None, job_id=ctx.job_id,
                                     cancelled=ctx.stopped_any)
    record_outcomes(ctx, outcomes)
    done = bench_summary(runs_done, outcomes, ctx.stopped(outcomes))
    if runs_done and done.state != "cancelled":
        # A slower level this bench confirms goes to the webhooks (once per series and run).
        from orchestrator.measure.regressions import alert_regressions

        alert_regressions(settings, bundle.name, [d.name for d in devices])
    if base is not None and len(runs_done) == 2 and done.state != "cancelled":
        from orchestrator.measure import gate

        bound = params.get("max_regression")
        checked = gate.check(settings, runs_done[0].id, runs_done[1].id,  # type: ignore[arg-type]
                             f"{base.name}@{base.version}",
                             gate.DEFAULT_MAX_REGRESSION if bound is None else bound,
                             bool(params.get("include_invalid")))
        done.result.update(checked)
        error = checked["gate"]["error"]
        if error:
            done.state = "failed"
            done.error = f"{done.error}; {error}" if done.error else error
    return done


def run_eval(settings: Settings, ctx: JobContext, params: dict[str, Any],
             targets: str) -> JobOutcome:
    # Here, not at the top: evals and datasets import numpy, which every CLI push (a job too,
    # through jobs.tracker) would otherwise pay for at start-up.
    from orchestrator.artifacts.datasets import get_dataset
    from orchestrator.measure import evals

    with session_scope(settings) as session:
        bundle = get_bundle(session, params["bundle"])
        dataset = get_dataset(session, params["dataset"])
        devices = select_devices(session, targets)
        session.expunge_all()
    threads = list(params["threads"])
    run, outcomes = evals.evaluate(
        settings, bundle, dataset, devices, threads, params.get("positive"),
        params["threshold"], params.get("forks") or 10, params.get("timeout"),
        eval_events(ctx, len(threads), ctx.event_view), created_by=ctx.created_by or None,
        warmup=params["warmup"], targets=targets, job_id=ctx.job_id,
        cancelled=ctx.stopped_any)
    record_outcomes(ctx, outcomes)
    return eval_summary(run, outcomes, ctx.stopped(outcomes))


def run_rollback(settings: Settings, ctx: JobContext, params: dict[str, Any],
                 targets: str) -> JobOutcome:
    """Each device back to the bundle it ran before (audited as the job's ``rollback`` event)."""
    with session_scope(settings) as session:
        devices = select_devices(session, targets)
    outcomes = deploy.rollback(settings, devices, params.get("forks") or 10,
                               params.get("timeout"), job_id=ctx.job_id, before=ctx.check)
    record_outcomes(ctx, outcomes)
    return _summary("rollback", outcomes, ctx.stopped(outcomes),
                    {"devices": [o.as_dict() for o in outcomes]})


def run_verify(settings: Settings, ctx: JobContext, params: dict[str, Any],
               targets: str) -> JobOutcome:
    """Re-hash each device's active bundle and re-run its golden outputs."""
    with session_scope(settings) as session:
        devices = select_devices(session, targets)
    outcomes = verify.verify_devices(settings, devices, params.get("forks") or 10,
                                     params.get("timeout"), before=ctx.check)
    record_outcomes(ctx, outcomes)
    return _summary("verify", outcomes, ctx.stopped(outcomes),
                    {"devices": [o.as_dict() for o in outcomes]})


def run_telemetry(settings: Settings, ctx: JobContext, params: dict[str, Any],
                  targets: str) -> JobOutcome:
    with session_scope(settings) as session:
        devices = select_devices(session, targets or "all")
    outcomes = telemetry.take_snapshots(settings, devices, params.get("forks") or 10,
                                        params.get("timeout"))
    for o in outcomes:
        ctx.device(o.device, state=o.state)
    return _summary("telemetry", outcomes, set(),
                    {"devices": [o.as_dict() for o in outcomes]})


Executor = Callable[[Settings, JobContext, dict[str, Any], str], JobOutcome]
EXECUTORS: dict[str, Executor] = {"push": run_push, "bench": run_bench, "eval": run_eval,
                                  "rollback": run_rollback, "verify": run_verify,
                                  "telemetry": run_telemetry}
