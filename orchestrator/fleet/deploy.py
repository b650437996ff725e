"""Push, verify, activate, roll back.

Per device: the agent says which blobs it holds (after re-checking them), we refuse early what
cannot work (old onnxruntime, no disk space), send only the missing blobs to ``.part`` files, and
the agent verifies every file, the manifest digest and the golden outputs before swapping
``current``. Each step is recorded as a Deployment row, so the CLI, the API and the web show the
same history; what the device reports about itself on the way (its active version, a change
its journal reverted after a crash) corrects the DB first (devices.record_device_report).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlmodel import Session

from agent.protocol import E_NOTHING_TO_ROLL_BACK, E_SMOKE_FAILED
from orchestrator.artifacts.blobfetch import blob_store, ensure_local, needed_files
from orchestrator.artifacts.blobstore import BlobStore
from orchestrator.artifacts.bundles import manifest_of
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import AgentError, EdgeFleetError
from orchestrator.core.listings import push_signature
from orchestrator.core.models import Bundle, Deployment, Device
from orchestrator.fleet import early
from orchestrator.fleet.agentclient import AgentSession, call_agent
from orchestrator.fleet.answers import checked_smoke
from orchestrator.fleet.fanout import Outcome, fan_out
from orchestrator.fleet.leases import is_held, leased
from orchestrator.inventory.devices import (
    DeviceReport,
    get_device,
    history_ref,
    is_history_entry,
    record_device_report,
    to_target,
)
from orchestrator.transport import Connection, Target, adopt, connect

log = logging.getLogger(__name__)


class PushProgress(Protocol):
    def start(self, device: str, total_bytes: int) -> None: ...
    def advance(self, device: str, nbytes: int) -> None: ...
    def state(self, device: str, state: str) -> None: ...


class NoProgress:
    def start(self, device: str, total_bytes: int) -> None: ...
    def advance(self, device: str, nbytes: int) -> None: ...
    def state(self, device: str, state: str) -> None: ...


class CountingProgress:
    """Passes progress on and counts the bytes one device's push really put on the wire, so a
    push that fails midway reports them instead of 0."""

    def __init__(self, inner: PushProgress) -> None:
        self.inner, self.sent = inner, 0

    def start(self, device: str, total_bytes: int) -> None:
        self.inner.start(device, total_bytes)

    def advance(self, device: str, nbytes: int) -> None:
        self.sent += nbytes
        self.inner.advance(device, nbytes)

    def state(self, device: str, state: str) -> None:
        self.inner.state(device, state)


def push_over(conn: Connection, bundle: Bundle, store: BlobStore, progress: PushProgress,
              timeout: float | None = None, report: DeviceReport | None = None,
              started: early.EarlyPush | None = None) -> Outcome:
    """One device's push over an open connection, in one agent session; ``report`` gathers
    what the agent's results say about the device, even when the push fails. ``started``: the
    session a CLI push opened before its job was recorded (``fleet.early``), adopted here: its
    plan and the stream it sent replace this push's own, and the rest is the same."""
    target = conn.target
    manifest = manifest_of(bundle)
    payload: dict[str, Any] = {"manifest": manifest, "digest": bundle.digest}
    signature = push_signature(bundle)  # a device with pinned keys checks it (agent.signatures)
    if signature is not None:
        payload["signature"] = signature
    report = report if report is not None else DeviceReport()
    progress.state(target.name, "planning")
    if started is not None:
        try:
            planned = started.wait_planned()  # raises what the early plan raised
        finally:
            if started.plan_result is not None:
                report.note(started.plan_result)
        assert started.session is not None
        agent = started.session
    else:
        agent = AgentSession(conn, timeout=timeout)
    with agent as session:
        if started is None:
            planned = early.plan_push(session, target, manifest, bundle.digest, store,
                                      report.note, signature)
        else:
            early.check_runtime(target, planned.plan, manifest)
        if planned.plan.get("already_active"):
            progress.start(target.name, 0)
            return Outcome(target.name, True, "unchanged", data={"bytes_sent": 0})
        total, resumed = planned.total, planned.resumed
        progress.start(target.name, total)
        progress.state(target.name, "transferring")
        def on_bytes(n: int) -> None:
            progress.advance(target.name, n)

        if started is not None:
            started.wait_sent(on_bytes)
        else:
            session.send_blobs(planned.uploads, on_bytes=on_bytes)
        sent = total
        progress.state(target.name, "verifying")
        try:
            result = report.note(session.call("activate", payload))
        except AgentError as exc:
            report.note(exc.detail)
            if exc.code != E_SMOKE_FAILED:
                raise
            # The agent kept the previous version; the session is intact, so end it normally.
            failed = checked_smoke(exc.detail)
            return Outcome(target.name, False, "failed", str(exc), data={
                "bytes_sent": sent, "resumed_bytes": resumed, "smoke": smoke_summary(failed),
                "smoke_detail": {key: failed.get(key) for key in SMOKE_FIELDS},
                "rolled_back_to": failed["rolled_back_to"]})
    state = "active" if result.get("changed", True) else "unchanged"
    smoke = checked_smoke(result["smoke"]) if result.get("smoke") else None
    data = {"bytes_sent": sent, "resumed_bytes": resumed, "previous": result.get("previous"),
            "smoke_detail": smoke,
            "smoke": smoke_summary(smoke) if smoke else
            "no golden outputs" if state == "active" else None}
    # What went wrong after the version went live (a clean-up, the trust records): the push
    # succeeded, and the user should still hear of it.
    warnings = [str(result[k]) for k in ("trust_record_error", "prune_error") if result.get(k)]
    if warnings:
        data["warnings"] = warnings
    return Outcome(target.name, True, state, data=data)


SMOKE_FIELDS = ("reason", "outputs", "max_abs", "max_rel", "error", "ms", "rolled_back_to")


def smoke_summary(smoke: dict[str, Any]) -> str:
    """One cell for the push table: passed/failed, worst differences, time it took."""
    if smoke.get("ok") and smoke.get("load_only"):  # no golden outputs: the model loads
        took = f", {smoke['ms']:.0f} ms" if smoke.get("ms") is not None else ""
        return f"loaded (no golden outputs to compare){took}"
    if smoke.get("ok"):
        head = "passed"
    elif smoke.get("reason") == "load_failed":
        return "failed: model did not load"
    else:
        head = "failed"
    worst = [smoke.get("max_abs"), smoke.get("max_rel")]  # checked_smoke: finite or None
    diffs = ("" if None in worst else f", max abs {worst[0]:.2g}, max rel {worst[1]:.2g}")
    took = f", {smoke['ms']:.0f} ms" if smoke.get("ms") is not None else ""
    return f"{head}{diffs}{took}"


def rolled_back_active(rolled_back_to: Any) -> tuple[str | None, str | None] | None:
    """The device's active bundle after a failed smoke test: the version it kept (the new one
    never went live; the field keeps its old name). (None, None): nothing active; None:
    unknown (the device's answer is not a history entry: its next contact will say)."""
    if not rolled_back_to:
        return None, None
    return history_ref(rolled_back_to)


def unexpected(device: str, operation: str, exc: Exception,
               data: dict[str, Any] | None = None) -> Outcome:
    """A device step's failure nobody foresaw (a bug, an answer of a shape no check caught):
    logged with its traceback, and a failed outcome saying so, so that the device's row is
    closed and the other devices go on."""
    log.exception("%s: %s failed unexpectedly", device, operation)
    return Outcome(device, False, "failed", f"{device}: {operation} failed unexpectedly "
                   f"({type(exc).__name__}: {str(exc)[:300]}); the traceback is in the log (the "
                   "server's, or the command's stderr)",
                   data=dict(data or {}))


def _finish(settings: Settings, deployment_id: int, outcome: Outcome,
            active: tuple[str | None, str | None] | None,
            report: DeviceReport | None = None) -> None:
    """Close the Deployment row; ``active`` (when known, even for a failed outcome such as a
    smoke test that kept the previous version) is what the device runs now; ``(None, None)``
    means nothing. ``report`` (what the device said about itself) is recorded first."""
    with session_scope(settings) as session:
        if report is not None and report.data:
            recovered = record_device_report(session, outcome.device, report.data)
            if recovered:
                outcome.data["recovered"] = recovered
        row = session.get(Deployment, deployment_id)
        assert row is not None
        row.state = outcome.state
        row.bytes_sent = int(outcome.data.get("bytes_sent", 0))
        row.duration_s = round(outcome.duration_s, 3)
        row.error = outcome.error
        row.finished_at = datetime.now(UTC)
        session.add(row)
        if outcome.ok or active is not None:
            device = get_device(session, outcome.device)
            if active:
                device.active_bundle, device.active_digest = active
            device.last_seen = row.finished_at
            session.add(device)


def _add_rows(session: Session, devices: Sequence[Device], operation: str,
              bundle: Bundle | None, job_id: int | None = None) -> dict[str, int]:
    """One pending Deployment per device, named with its job: if the process dies, whoever
    recovers the job marks them interrupted (``jobs.recover_interrupted``)."""
    rows = {
        d.name: Deployment(
            device_name=d.name, operation=operation, state="pending",
            bundle_name=bundle.name if bundle else None,
            bundle_version=bundle.version if bundle else None,
            bundle_digest=bundle.digest if bundle else None, job_id=job_id,
        )
        for d in devices
    }
    session.add_all(rows.values())
    session.flush()
    return {name: row.id for name, row in rows.items()}  # type: ignore[misc]


def _start_rows(settings: Settings, devices: Sequence[Device], operation: str,
                bundle: Bundle | None, job_id: int | None = None) -> dict[str, int]:
    with session_scope(settings) as session:
        return _add_rows(session, devices, operation, bundle, job_id)


def push(settings: Settings, bundle: Bundle, devices: Sequence[Device], forks: int = 10,
         timeout: float | None = None, progress: PushProgress | None = None, *,
         job_id: int | None = None) -> list[Outcome]:
    progress = progress or NoProgress()
    store = blob_store(settings)
    # A worker that did not build the bundle fetches its blobs first, once for every device;
    # no source or a refused download fails the push before any device is touched.
    ensure_local(settings, store, needed_files(manifest_of(bundle),
                                               f"{bundle.name}@{bundle.version}"))
    row_ids = _start_rows(settings, devices, "push", bundle, job_id)
    active = (f"{bundle.name}@{bundle.version}", bundle.digest)

    def step(target: Target) -> Outcome:
        started = time.monotonic()
        report = DeviceReport()
        counted = CountingProgress(progress)
        # A CLI push began it (same digest, same signature in its plan): adopt it.
        begun = early.claim(target.name, bundle.digest, push_signature(bundle))
        if begun is not None and is_held(settings, target.name):
            # Another operation took the device since the early start: stop streaming to it
            # now rather than for as long as this push waits for it (a bench's numbers).
            begun.discard()
            begun = None

        def close(outcome: Outcome) -> Outcome:
            outcome.duration_s = time.monotonic() - started
            outcome.data.setdefault("bytes_sent", 0)
            progress.state(target.name, outcome.state)
            now = active if outcome.ok else (
                rolled_back_active(outcome.data["rolled_back_to"])
                if "rolled_back_to" in outcome.data else None)
            _finish(settings, row_ids[target.name], outcome, now, report)
            return outcome

        try:
            with leased(settings, target.name, "push"), \
                    (adopt(begun.connection()) if begun else
                     connect(target, settings, timeout)) as conn:
                # Recorded while the device is still held: once its lease is released, a
                # waiting push of another version may finish first, and this row's late
                # write would put the older version back as the device's active one.
                return close(push_over(conn, bundle, store, counted, timeout, report, begun))
        except EdgeFleetError as exc:
            outcome = Outcome(target.name, False, "failed", str(exc),
                              data={"bytes_sent": counted.sent})
        except Exception as exc:  # noqa: BLE001 - the row must close, whatever broke
            outcome = unexpected(target.name, "push", exc, {"bytes_sent": counted.sent})
        finally:
            if begun is not None:
                begun.discard()  # closed already when adopted; stopped if it was not
        return close(outcome)

    return fan_out([to_target(d) for d in devices], step, forks)


def rollback(settings: Settings, devices: Sequence[Device], forks: int = 10,
             timeout: float | None = None, *, job_id: int | None = None,
             before: Callable[[str], None] | None = None) -> list[Outcome]:
    """Swap each device back to the bundle it ran before. Run as a ``rollback`` job
    (``jobs.execute.run_rollback``), whose audit event says who asked; the Deployment rows,
    named with the job, say how each device ended. ``before(device)`` runs first on each
    device and may raise to stop it there (a cancelled job)."""
    row_ids = _start_rows(settings, devices, "rollback", None, job_id)

    def step(target: Target) -> Outcome:
        started = time.monotonic()
        active = None
        report = DeviceReport()
        try:
            if before is not None:
                before(target.name)
            with leased(settings, target.name, "rollback"), \
                    connect(target, settings, timeout) as conn:
                result = report.note(call_agent(conn, "rollback", {}))
            active = history_ref(result.get("active"))
            if active is None:
                raise EdgeFleetError(f"{target.name}: the device's rollback answer names no "
                                     "active version; its next contact (telemetry, verify) "
                                     "will say what it runs")
            previous = result.get("previous")
            outcome = Outcome(target.name, True, "rolled-back", data={
                "active": active[0], "from": {key: previous[key][:200] for key in (
                    "name", "version", "digest")} if is_history_entry(previous) else None})
        except AgentError as exc:
            report.note(exc.detail)
            state = "nothing-to-roll-back" if exc.code == E_NOTHING_TO_ROLL_BACK else "failed"
            outcome = Outcome(target.name, False, state, str(exc))
        except EdgeFleetError as exc:
            outcome = Outcome(target.name, False, "failed", str(exc))
        except Exception as exc:  # noqa: BLE001 - the row must close, whatever broke
            outcome = unexpected(target.name, "rollback", exc)
        outcome.duration_s = time.monotonic() - started
        _finish(settings, row_ids[target.name], outcome, active, report)
        return outcome

    return fan_out([to_target(d) for d in devices], step, forks)
