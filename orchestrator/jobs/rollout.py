"""A staged push: the canary alone, then batches in inventory order, halting on a batch whose
failures exceed ``max_fail`` (optionally judged by a health bench, optionally rolling back what it
updated). The plan and the halting rule are ``fleet.rollout``; each batch is one ``deploy.push``
(so one ``fanout.fan_out``), the health bench ``measure.health``.

Run from ``jobs.execute.run_push`` when a push job has ``params["rollout"]``, so a rollout is a
job whoever starts it (CLI, API, the bundle page) and its batches are live on the job page: the
job's ``progress["rollout"]`` is rewritten at every change of a batch's state.

Why not one push over all devices with a stop flag: a batch must *finish* (every device pushed,
smoke-tested and benchmarked) before anyone can judge it, and devices of the next batch must not
have been touched when it fails. The remaining devices get no Deployment row at all: "not
started" is literally true of them.

Takes the job context by its shape (``Context``) rather than importing ``jobs.execute``, which
imports this module: no import circle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.access import audit
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Bundle, Device
from orchestrator.fleet import deploy
from orchestrator.fleet import rollout as plan_
from orchestrator.fleet.fanout import Outcome
from orchestrator.present.wording import plural


class Context(Protocol):
    """What a rollout needs of ``jobs.context.JobContext``."""

    job_id: int
    created_by: str

    def section(self, key: str, value: Any) -> None: ...
    def device(self, name: str, force: bool = False, **fields: Any) -> None: ...
    def cancelled(self) -> bool: ...
    def stopped(self, outcomes: Sequence[Outcome]) -> set[str]: ...
    def stopped_any(self) -> bool: ...


@dataclass
class RolloutDone:
    """How a rollout ended: a job state, its stored result, its error, every device's Outcome
    (pushed, or "not started") in rollout order."""

    state: str
    result: dict[str, Any]
    error: str | None
    outcomes: list[Outcome] = field(default_factory=list)


NOT_STARTED = "not started"


def _device_row(o: Outcome, batch: int) -> dict[str, Any]:
    return {"device": o.device, "batch": batch, "state": o.state,
            "bytes_sent": int(o.data.get("bytes_sent", 0)), "duration_s": round(o.duration_s, 3),
            "error": o.error, "health": o.data.get("health"),
            "rolled_back_to": o.data.get("rolled_back_to")}


def _judge_health(settings: Settings, ctx: Context, bundle: Bundle, pushed: Sequence[Outcome],
                  by_name: dict[str, Device], targets: str, forks: int,
                  timeout: float | None) -> list[int]:
    """The health bench of one batch (``measure.health``): each device the push changed,
    the new version against the one it replaced, alternately. A device judged unhealthy
    becomes a failed outcome (state "unhealthy"; its push itself succeeded and stays
    recorded so). Returns the health runs' ids."""
    from orchestrator.measure.health import health_bench  # numpy: only when asked for

    updated = [(by_name[o.device], o.data.get("previous")) for o in pushed
               if o.ok and o.state == "active"]
    for device, _ in updated:
        ctx.device(device.name, force=True, state="health bench")
    run_ids, verdicts = health_bench(settings, bundle, updated, targets, forks, timeout,
                                     job_id=ctx.job_id, created_by=ctx.created_by or None,
                                     cancelled=ctx.stopped_any)
    for o in pushed:
        verdict = verdicts.get(o.device)
        if verdict is None:
            continue
        o.data["health"] = verdict.public()
        if not verdict.ok:
            o.ok, o.state, o.error = False, "unhealthy", f"{o.device}: {verdict.note}"
        ctx.device(o.device, force=True, state=o.state)
    return run_ids


def _roll_back(settings: Settings, ctx: Context, updated: list[Device],
               outcomes: dict[str, Outcome], forks: int,
               timeout: float | None) -> list[dict[str, Any]]:
    """``--rollback-on-fail``: the devices this rollout changed, back to what they ran."""
    if not updated:
        return []
    done = deploy.rollback(settings, updated, forks, timeout, job_id=ctx.job_id)
    for o in done:
        if o.ok:
            outcomes[o.device].data["rolled_back_to"] = o.data.get("active")
        ctx.device(o.device, force=True, state=o.state)
    return [o.as_dict() for o in done]


def run_rollout(settings: Settings, ctx: Context, params: dict[str, Any], targets: str,
                bundle: Bundle, devices: Sequence[Device],
                progress: deploy.PushProgress) -> RolloutDone:
    options = plan_.check_options(params["rollout"])
    batches = plan_.plan(devices, options)
    by_name = {d.name: d for d in devices}
    forks, timeout = params.get("forks") or 10, params.get("timeout")
    outcomes: dict[str, Outcome] = {}
    updated: list[Device] = []  # devices whose version this rollout changed
    view: dict[str, Any] = {"options": options.public(), "batches": [], "halted_at": None,
                            "health_runs": [], "rolled_back": []}

    def publish() -> None:
        view["batches"] = [b.public() for b in batches]
        ctx.section("rollout", dict(view))

    for batch in batches:
        for name in batch.devices:
            ctx.device(name, state="waiting", batch=batch.index)
    publish()
    halted: plan_.Batch | None = None
    cancelled = False
    for batch in batches:
        if ctx.cancelled():
            cancelled = True
            break
        batch.state = plan_.RUNNING
        publish()
        pushed = deploy.push(settings, bundle, [by_name[n] for n in batch.devices], forks,
                             timeout, progress, job_id=ctx.job_id)
        for o in pushed:
            outcomes[o.device] = o
            if o.ok and o.state == "active":
                updated.append(by_name[o.device])
        # (an unhealthy device stays in ``updated``: it runs the new version, to roll back)
        if options.health_bench and not ctx.stopped(pushed):
            view["health_runs"] += _judge_health(settings, ctx, bundle, pushed, by_name,
                                                 targets, forks, timeout)
        batch.failed = [o.device for o in pushed if not o.ok]
        if ctx.stopped(list(outcomes.values())):
            batch.state, cancelled = plan_.CANCELLED, True
            break
        if plan_.exceeds(batch, options.max_fail):
            batch.state, halted = plan_.FAILED, batch
            allowed = "none may fail" if batch.kind == "canary" else \
                f"max-fail {options.max_fail:g}%"
            batch.note = (f"{len(batch.failed)} of {plural(len(batch.devices), 'device')} "
                          f"failed ({allowed})")
            break
        batch.state = plan_.OK
        if batch.failed:
            batch.note = (f"{len(batch.failed)} of {plural(len(batch.devices), 'device')} "
                          f"failed, within max-fail {options.max_fail:g}%")
        publish()
    untouched = [b for b in batches if b.state == plan_.PENDING]
    for b in untouched:
        b.state = plan_.NOT_STARTED
        for name in b.devices:
            outcomes[name] = Outcome(name, False, NOT_STARTED)
            ctx.device(name, force=True, state=NOT_STARTED)
    if halted is not None:
        view["halted_at"] = halted.index
        if options.rollback_on_fail:
            view["rolled_back"] = _roll_back(settings, ctx, updated, outcomes, forks, timeout)
    publish()
    not_started = [n for b in untouched for n in b.devices]
    if halted is not None:
        _audit_halt(settings, ctx, bundle, halted, not_started, view["rolled_back"])

    ordered = [outcomes[n] for b in batches for n in b.devices]
    batch_of = {n: b.index for b in batches for n in b.devices}
    result = {"bundle": f"{bundle.name}@{bundle.version}", "digest": bundle.digest,
              "rollout": view, "devices": [_device_row(o, batch_of[o.device]) for o in ordered]}
    state, error = _ending(batches, halted, cancelled, ordered, not_started, view)
    return RolloutDone(state, result, error, ordered)


def _ending(batches: list[plan_.Batch], halted: plan_.Batch | None, cancelled: bool,
            ordered: list[Outcome], not_started: list[str],
            view: dict[str, Any]) -> tuple[str, str | None]:
    """The job's state and error, in words."""
    failed = [o for o in ordered if not o.ok and o.state != NOT_STARTED]
    rest = (f"; {plural(len(not_started), 'device')} not started ({', '.join(not_started)})"
            if not_started else "")
    if cancelled:
        return "cancelled", f"cancelled: rollout stopped{rest}"
    if halted is not None:
        which = "the canary" if halted.kind == "canary" else \
            f"batch {halted.index} of {len(batches)}"
        names = "; ".join(o.error or f"{o.device}: {o.state}" for o in failed)
        back = ""
        if view["rolled_back"]:
            ok = sum(1 for r in view["rolled_back"] if r["ok"])
            back = f"; rolled back {ok} of {plural(len(view['rolled_back']), 'updated device')}"
        return "failed", f"rollout halted at {which}: {halted.note}: {names}{rest}{back}"
    if failed:
        names = "; ".join(o.error or f"{o.device}: failed" for o in failed)
        return "failed", (f"rollout completed; push failed on {len(failed)} of "
                          f"{plural(len(ordered), 'device')} (within max-fail): {names}")
    return "succeeded", None


def _audit_halt(settings: Settings, ctx: Context, bundle: Bundle, halted: plan_.Batch,
                not_started: list[str], rolled_back: list[dict[str, Any]]) -> None:
    """The ``rollout.halt`` event: what stopped, what was never touched, what went back."""
    with session_scope(settings) as session:
        audit.add_event(session, ctx.created_by, "rollout.halt", f"job:{ctx.job_id}", {
            "bundle": f"{bundle.name}@{bundle.version}", "batch": halted.index,
            "failed": list(halted.failed), "not_started": not_started,
            "rolled_back": [r["device"] for r in rolled_back if r["ok"]]})
