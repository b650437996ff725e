"""A running job's context: its progress (throttled writes of each device's state into the
job row) and its cancellation (a flag checked at safe boundaries), and the adapters that feed
push, bench and eval progress into it.

Split from ``jobs.execute`` (the executors) because everything that runs a job shares it: the
executors, the server's runner, the CLI's tracker, a rollout's batches and the liveness
heartbeat.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlmodel import select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError
from orchestrator.core.models import Job
from orchestrator.fleet import deploy
from orchestrator.fleet import rollout as plan_
from orchestrator.fleet.fanout import Outcome
from orchestrator.measure import runs

if TYPE_CHECKING:
    from orchestrator.measure import evals

PROGRESS_INTERVAL_S = 0.25  # at most ~4 progress writes a second per job


class JobCancelled(EdgeFleetError):
    """Raised inside a device's step to stop it at a safe boundary; the fan-out records it as
    that device's failure, so rows and leases are closed by the usual paths."""


# --- progress and cancellation ---------------------------------------------------------------

# A device's states while its work is under way (``JobContext.device``, ``deploy`` phases); a job
# whose process died leaves them behind, so ``settled`` rewrites them.
IN_FLIGHT = frozenset({None, "running", "waiting", "health bench", "planning", "transferring",
                       "verifying"})
INTERRUPTED = "interrupted"


def settled(progress: dict[str, Any]) -> dict[str, Any]:
    """The progress of a job whose process died mid-way, as it ends: a device or rollout
    batch that was under way says "interrupted", a batch not begun "not started". Without
    this a killed rollout's page showed its batch "running" for ever."""
    out = dict(progress)
    devices = progress.get("devices")
    if isinstance(devices, dict):
        out["devices"] = {name: {**entry, "state": INTERRUPTED}
                          if isinstance(entry, dict) and entry.get("state") in IN_FLIGHT
                          else entry for name, entry in devices.items()}
    rollout = progress.get("rollout")
    if isinstance(rollout, dict) and isinstance(rollout.get("batches"), list):
        ends = {plan_.RUNNING: INTERRUPTED, plan_.PENDING: plan_.NOT_STARTED}
        out["rollout"] = {**rollout, "batches": [
            {**b, "state": ends.get(b.get("state"), b.get("state"))} if isinstance(b, dict)
            else b for b in rollout["batches"]]}
    return out



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
