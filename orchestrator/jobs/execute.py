"""What a job does: the push / bench / eval / rollback / verify / telemetry executors, their
progress and cancel.

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

import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlmodel import select

from orchestrator.artifacts.bundles import get_bundle
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError
from orchestrator.core.models import Job, Run
from orchestrator.fleet import deploy, telemetry, verify
from orchestrator.fleet.fanout import Outcome
from orchestrator.inventory.devices import select_devices
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
    from orchestrator.measure import evals

PROGRESS_INTERVAL_S = 0.25  # at most ~4 progress writes a second per job


class JobCancelled(EdgeFleetError):
    """Raised inside a device's step to stop it at a safe boundary; the fan-out records it as
    that device's failure, so rows and leases are closed by the usual paths."""


# --- progress and cancellation ---------------------------------------------------------------


class JobContext:
    """Per-job progress (``{"devices": {name: {...}}}``) written at most every
    PROGRESS_INTERVAL_S, plus the cancel flag. Fan-out threads call it concurrently."""

    def __init__(self, settings: Settings, job_id: int, cancel: threading.Event | None = None,
                 interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self.settings, self.job_id, self.interval_s = settings, job_id, interval_s
        self.cancel = cancel  # None: not cancellable
        # Set by a CLI's Ctrl-C: the cancel also aborted sessions in flight, so any device
        # may have been stopped, not only those that reached a boundary.
        self.interrupt = False
        self.created_by = ""  # who submitted the job: runs record it as their author
        # What the CLI shows while it runs a job itself (rich bars); the server has none.
        self.push_view: deploy.PushProgress | None = None
        self.event_view: runs.EventHandler | None = None
        # (device, "waiting for pi3: bench #12"), then (device, None): the CLI prints it.
        self.wait_view: Callable[[str, str | None], None] | None = None
        self.devices: dict[str, dict[str, Any]] = {}
        # Whole-job parts of the progress beside the devices (a rollout's batches).
        self.sections: dict[str, Any] = {}
        self.cancelled_devices: set[str] = set()
        self._lock = threading.Lock()
        self._dirty = False
        self._last = 0.0

    def device(self, name: str, force: bool = False, **fields: Any) -> None:
        with self._lock:
            self.devices.setdefault(name, {}).update(fields)
            self._dirty = True
            due = force or time.monotonic() - self._last >= self.interval_s
        if due:
            self.flush()

    def section(self, key: str, value: Any) -> None:
        """Set a whole-job part of the progress (``progress[key]``) and write it now."""
        with self._lock:
            self.sections[key] = value
            self._dirty = True
        self.flush()

    def add(self, name: str, key: str, amount: int) -> None:
        with self._lock:
            entry = self.devices.setdefault(name, {})
            entry[key] = entry.get(key, 0) + amount
            self._dirty = True
            due = time.monotonic() - self._last >= self.interval_s
        if due:
            self.flush()

    def flush(self) -> None:
        # The write happens under the lock so an older snapshot never lands after a newer one.
        with self._lock:
            if not self._dirty:
                return
            snapshot = {"devices": {k: dict(v) for k, v in self.devices.items()},
                        **self.sections}
            with session_scope(self.settings) as session:
                session.execute(update(Job).where(Job.id == self.job_id)  # type: ignore[arg-type]
                                .values(progress=snapshot))
            self._dirty, self._last = False, time.monotonic()

    def cancelled(self) -> bool:
        if self.cancel is None:
            return False
        if not self.cancel.is_set():
            with session_scope(self.settings) as session:
                if session.exec(select(Job.cancel_requested)
                                .where(Job.id == self.job_id)).first():
                    self.cancel.set()
        return self.cancel.is_set()

    def stopped(self, outcomes: Sequence[Outcome]) -> set[str]:
        """The devices the cancel stopped: at a boundary, or (after a CLI's Ctrl-C, which also
        aborts sessions in flight) any device that did not finish."""
        stopped = set(self.cancelled_devices)
        if self.interrupt and self.cancel is not None and self.cancel.is_set():
            stopped |= {o.device for o in outcomes if not o.ok}
        return stopped

    def stopped_any(self) -> bool:
        """Whether the cancel stopped a device's work (its run is then "cancelled")."""
        return bool(self.cancelled_devices) or (self.interrupt and self.cancel is not None
                                                and self.cancel.is_set())

    def check(self, device: str) -> None:
        """At a safe boundary of ``device``'s work: stop it there if the job was cancelled."""
        if self.cancelled():
            self.cancelled_devices.add(device)
            self.device(device, force=True, state="cancelled")
            raise JobCancelled(f"{device}: stopped before its next step: job {self.job_id} was "
                               "cancelled")


class JobPushProgress:
    """deploy.PushProgress writing into the job (and teeing to another, e.g. the CLI's bars)."""

    def __init__(self, ctx: JobContext, inner: deploy.PushProgress | None = None) -> None:
        self.ctx, self.inner = ctx, inner or deploy.NoProgress()

    def start(self, device: str, total_bytes: int) -> None:
        self.inner.start(device, total_bytes)
        self.ctx.device(device, bytes=0, total=total_bytes)

    def advance(self, device: str, nbytes: int) -> None:
        self.inner.advance(device, nbytes)
        self.ctx.add(device, "bytes", nbytes)

    def state(self, device: str, state: str) -> None:
        if state == "planning":  # before the device's agent session: nothing sent yet
            self.ctx.check(device)
        self.inner.state(device, state)
        self.ctx.device(device, force=state not in ("planning", "transferring"), state=state)


def measurement_events(ctx: JobContext, steps: int, kind: str,
                       inner: runs.EventHandler | None = None) -> runs.EventHandler:
    """The on_event of runs.bench (``kind`` "bench") and evals.evaluate ("eval"): per-device
    progress, and the cancel check before each measurement child (its ``load`` event with
    done=0 opens one) and, for eval, before a device's dataset push."""
    counts: dict[str, int] = {}

    def on_event(device: str, event: dict[str, Any]) -> None:
        if inner:
            inner(device, event)
        if event.get("event") == "dataset":
            ctx.check(device)
            ctx.device(device, force=True, state="running", phase="dataset", step=0,
                       steps=steps)
            return
        if event.get("event") != kind:
            return
        if event.get("phase") == "load" and event.get("done") == 0:
            ctx.check(device)
            counts[device] = counts.get(device, 0) + 1
        # seconds/min_seconds: set when --min-seconds decides the timed loop's length too
        # (orchestrator.present.progress_words shows both against their totals); None otherwise, so
        # a phase without them does not keep the previous phase's.
        ctx.device(device, state="running", threads=event.get("threads"),
                   phase=event.get("phase"), done=event.get("done"), total=event.get("total"),
                   seconds=event.get("seconds"), min_seconds=event.get("min_seconds"),
                   step=counts.get(device, 0), steps=steps)

    return on_event


def bench_events(ctx: JobContext, steps: int,
                 inner: runs.EventHandler | None = None) -> runs.EventHandler:
    return measurement_events(ctx, steps, "bench", inner)


def eval_events(ctx: JobContext, steps: int,
                inner: evals.EventHandler | None = None) -> evals.EventHandler:
    return measurement_events(ctx, steps, "eval", inner)


def record_outcomes(ctx: JobContext, outcomes: Sequence[Outcome]) -> None:
    """Each device's final state in the progress (the last event left it "running"); a device
    stopped by a cancel keeps saying "cancelled"."""
    for o in outcomes:
        if o.device not in ctx.cancelled_devices:
            ctx.device(o.device, state=o.state)


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
