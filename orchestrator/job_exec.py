"""What a job does: parameter validation per kind, and the push / bench / telemetry executors.

Split from ``jobs.py`` (the queue, its states and the runner) so that the executors — the part
that talks to devices through deploy, runs and telemetry — read on their own. Executors never
add a locking layer: ``deploy.push`` and ``runs.bench`` already lease each device.

Cancellation is cooperative and lands on boundaries where stopping leaves nothing half done:
a push stops before a device's agent session starts (a device already transferring finishes and
activates or not, atomically, as usual); a bench stops before the next measurement (one thread
count of one round of one bundle) of each device. The devices stopped that way record the
cancellation as their error, in the Deployment or Result rows like any other failure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, select

from orchestrator import deploy, runs, telemetry
from orchestrator.bundles import get_bundle
from orchestrator.config import Settings
from orchestrator.db import session_scope
from orchestrator.devices import select_devices
from orchestrator.errors import EdgeFleetError
from orchestrator.fleet import Outcome
from orchestrator.models import Job, Run

PROGRESS_INTERVAL_S = 0.25  # at most ~4 progress writes a second per job
GRAPH_OPTIMIZATIONS = ("all", "extended", "basic", "disabled")


class JobCancelled(EdgeFleetError):
    """Raised inside a device's step to stop it at a safe boundary; the fan-out records it as
    that device's failure, so rows and leases are closed by the usual paths."""


# --- parameters ------------------------------------------------------------------------------


def _int(kind: str, params: dict[str, Any], key: str, default: int | None, low: int) -> Any:
    value = params.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise EdgeFleetError(f"{kind} job: {key!r} must be an integer >= {low} (got {value!r})")
    return value


def _number(kind: str, params: dict[str, Any], key: str, default: float | None,
            positive: bool = False) -> Any:
    value = params.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 \
            or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise EdgeFleetError(f"{kind} job: {key!r} must be a number {bound} (got {value!r})")
    return float(value)


def _bundle_ref(session: Session, kind: str, params: dict[str, Any], key: str) -> str:
    ref = params.get(key)
    if not isinstance(ref, str) or not ref.strip():
        raise EdgeFleetError(f"{kind} job: {key!r} must be a bundle reference like "
                             f"'first-crack' or 'first-crack@3' (got {ref!r})")
    get_bundle(session, ref.strip())  # unknown bundle -> NotFoundError naming it
    return ref.strip()


def _threads(value: Any) -> list[int]:
    if isinstance(value, str):
        value = [t.strip() for t in value.split(",") if t.strip()]
        try:
            value = [int(t) for t in value]
        except ValueError:
            value = None
    if not isinstance(value, list) or not value or any(
            isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in value):
        raise EdgeFleetError(f"bench job: 'threads' must be a list of thread counts >= 1, "
                             f"e.g. [1, 2, 4] (got {value!r})")
    return value


def _shapes(value: Any) -> dict[str, list[int]]:
    ok = isinstance(value, dict) and all(
        isinstance(k, str) and k and isinstance(dims, list) and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims)
        for k, dims in value.items())
    if not ok:
        raise EdgeFleetError("bench job: 'shapes' must map input names to dimension lists, "
                             f"e.g. {{\"audio\": [1, 16000]}} (got {value!r})")
    return value


def _constants(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and k and isinstance(v, int | float | bool)
            for k, v in value.items()):
        raise EdgeFleetError("bench job: 'constants' must map input names to numbers or "
                             f"true/false, e.g. {{\"sampling_rate\": 16000}} (got {value!r})")
    return value


ALLOWED = {
    "push": {"bundle", "forks", "timeout"},
    "bench": {"bundle", "threads", "warmup", "runs", "min_seconds", "shapes", "constants",
              "providers", "graph_optimization", "baseline", "rounds", "forks", "timeout"},
    "telemetry": {"forks", "timeout"},
}


def default_targets(kind: str, targets: str | None) -> str:
    """A telemetry job without targets polls the whole fleet."""
    targets = (targets or "").strip()
    return targets or ("all" if kind == "telemetry" else "")


def validate_params(session: Session, kind: str, params: dict[str, Any] | None,
                    targets: str) -> dict[str, Any]:
    """The params a job of ``kind`` will run with, defaults filled in; EdgeFleetError naming the
    first problem otherwise. Checked before anything is queued, so a typo never becomes a job
    that fails minutes later (the targets must select devices and the bundles must exist)."""
    if kind not in ALLOWED:
        raise EdgeFleetError(f"unknown job kind {kind!r}; choose one of {', '.join(ALLOWED)}")
    params = dict(params or {})
    unknown = sorted(set(params) - ALLOWED[kind])
    if unknown:
        raise EdgeFleetError(f"{kind} job: unknown parameter(s) {', '.join(map(repr, unknown))}; "
                             f"allowed: {', '.join(sorted(ALLOWED[kind]))}")
    if not isinstance(targets, str) or not targets.strip():
        raise EdgeFleetError(f"{kind} job: targets must be a pattern such as 'all' or 'pi5-*'")
    select_devices(session, targets)  # PatternError / NotFoundError name the problem
    out: dict[str, Any] = {"forks": _int(kind, params, "forks", 10, 1),
                           "timeout": _number(kind, params, "timeout", None, positive=True)}
    if kind == "push":
        out["bundle"] = _bundle_ref(session, kind, params, "bundle")
    elif kind == "bench":
        defaults = runs.BenchParams()
        out["bundle"] = _bundle_ref(session, kind, params, "bundle")
        out["threads"] = _threads(params.get("threads", defaults.threads))
        out["warmup"] = _int(kind, params, "warmup", defaults.warmup, 0)
        out["runs"] = _int(kind, params, "runs", defaults.runs, 1)
        out["min_seconds"] = _number(kind, params, "min_seconds", defaults.min_seconds)
        out["shapes"] = _shapes(params.get("shapes", {}))
        out["constants"] = _constants(params.get("constants", {}))
        providers = params.get("providers", defaults.providers)
        if not isinstance(providers, list) or not providers or not all(
                isinstance(p, str) and p for p in providers):
            raise EdgeFleetError(f"bench job: 'providers' must be a list of onnxruntime "
                                 f"execution providers (got {providers!r})")
        out["providers"] = providers
        graph = params.get("graph_optimization", defaults.graph_optimization)
        if graph not in GRAPH_OPTIMIZATIONS:
            raise EdgeFleetError(f"bench job: 'graph_optimization' {graph!r}: choose one of "
                                 f"{', '.join(GRAPH_OPTIMIZATIONS)}")
        out["graph_optimization"] = graph
        if params.get("baseline") is not None:
            out["baseline"] = _bundle_ref(session, kind, params, "baseline")
        out["rounds"] = _int(kind, params, "rounds", 5 if "baseline" in out else 1, 1)
    return out


def bench_params(params: dict[str, Any]) -> runs.BenchParams:
    return runs.BenchParams(
        threads=list(params["threads"]), warmup=params["warmup"], runs=params["runs"],
        min_seconds=params["min_seconds"], shapes=dict(params["shapes"]),
        constants=dict(params["constants"]), providers=list(params["providers"]),
        graph_optimization=params["graph_optimization"])


def bench_job_params(bundle: str, params: runs.BenchParams, baseline: str | None,
                     rounds: int, forks: int) -> dict[str, Any]:
    """The job params for a bench started from the CLI: what a server job with the same
    effect would carry, so both look alike in the UI."""
    out = {"bundle": bundle, **asdict(params), "rounds": rounds, "forks": forks}
    if baseline:
        out["baseline"] = baseline
    return out


# --- progress and cancellation ---------------------------------------------------------------


class JobContext:
    """Per-job progress (``{"devices": {name: {...}}}``) written at most every
    PROGRESS_INTERVAL_S, plus the cancel flag. Fan-out threads call it concurrently."""

    def __init__(self, settings: Settings, job_id: int, cancel: threading.Event | None = None,
                 interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self.settings, self.job_id, self.interval_s = settings, job_id, interval_s
        self.cancel = cancel  # None: not cancellable (a CLI job)
        self.created_by = ""  # who submitted the job: runs record it as their author
        self.devices: dict[str, dict[str, Any]] = {}
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
            snapshot = {"devices": {k: dict(v) for k, v in self.devices.items()}}
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


def bench_events(ctx: JobContext, steps: int,
                 inner: runs.EventHandler | None = None) -> runs.EventHandler:
    """runs.bench's on_event: per-device progress, and the cancel check before each
    measurement (a ``load`` event with done=0 opens one)."""
    counts: dict[str, int] = {}

    def on_event(device: str, event: dict[str, Any]) -> None:
        if inner:
            inner(device, event)
        if event.get("event") != "bench":
            return
        if event.get("phase") == "load" and event.get("done") == 0:
            ctx.check(device)
            counts[device] = counts.get(device, 0) + 1
        ctx.device(device, state="running", threads=event.get("threads"),
                   phase=event.get("phase"), done=event.get("done"), total=event.get("total"),
                   step=counts.get(device, 0), steps=steps)

    return on_event


# --- executors -------------------------------------------------------------------------------


@dataclass
class JobOutcome:
    state: str  # a terminal job state
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    run_id: int | None = None


def _summary(verb: str, outcomes: Sequence[Outcome], cancelled: set[str],
             result: dict[str, Any], run_id: int | None = None) -> JobOutcome:
    failed = [o for o in outcomes if not o.ok and o.device not in cancelled]
    if cancelled:
        done = len(outcomes) - len(cancelled)
        return JobOutcome("cancelled", result, f"cancelled: {verb} stopped on "
                          f"{', '.join(sorted(cancelled))}; {done} of {len(outcomes)} device(s) "
                          "finished before that and keep their results", run_id)
    if failed:
        names = "; ".join(o.error or f"{o.device}: failed" for o in failed)
        return JobOutcome("failed", result, f"{verb} failed on {len(failed)} of {len(outcomes)} "
                          f"device(s): {names}", run_id)
    return JobOutcome("succeeded", result, None, run_id)


def push_summary(bundle: str, outcomes: Sequence[Outcome],
                 cancelled: Collection[str] = ()) -> JobOutcome:
    devices = [{"device": o.device, "state": o.state,
                "bytes_sent": int(o.data.get("bytes_sent", 0)),
                "duration_s": round(o.duration_s, 3), "error": o.error} for o in outcomes]
    return _summary("push", outcomes, set(cancelled), {"bundle": bundle, "devices": devices})


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


def run_push(settings: Settings, ctx: JobContext, params: dict[str, Any],
             targets: str) -> JobOutcome:
    with session_scope(settings) as session:
        bundle = get_bundle(session, params["bundle"])
        devices = select_devices(session, targets)
    outcomes = deploy.push(settings, bundle, devices, params.get("forks") or 10,
                           params.get("timeout"), JobPushProgress(ctx))
    return push_summary(f"{bundle.name}@{bundle.version}", outcomes, ctx.cancelled_devices)


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
                                     bench_events(ctx, steps), rounds=rounds,
                                     created_by=ctx.created_by or None)
    for o in outcomes:
        if o.device not in ctx.cancelled_devices:
            ctx.device(o.device, state=o.state)
    return bench_summary(runs_done, outcomes, ctx.cancelled_devices)


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
EXECUTORS: dict[str, Executor] = {"push": run_push, "bench": run_bench,
                                  "telemetry": run_telemetry}
