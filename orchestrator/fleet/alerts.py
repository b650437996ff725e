"""Alerts: the events worth a message to whoever runs the fleet, recorded once each and sent as
signed webhooks (orchestrator.notify.webhooks; README "Alerts" has the payloads).

======================= ============================================== =======================
kind                    raised by                                      once per (dedupe key)
======================= ============================================== =======================
``regression``          :func:`notify_regression` (the change-point    series x run where the
                        detector)                                      change starts
``device_offline``      a telemetry poll the device did not answer,    outage (its last
                        ``alert_offline_minutes`` after it was last    contact)
                        seen (:func:`after_telemetry`)
``device_throttled``    a telemetry reading with a get_throttled       reading; a condition
                        condition the previous reading of the device   re-alerts only after
                        did not have (:func:`after_telemetry`)         the repeat window
``job_failed``          a job ending "failed" (:func:`add_job_failed`  job
                        in the transaction that ends it:
                        ``jobs.finish_job``/``record_failed``)
======================= ============================================== =======================

Every alert is an ``Alert`` row unique by its dedupe key, so an outage noticed by every poll,
or by two processes at once, is one alert; the row also keeps its delivery state for
``GET /api/alerts`` and ``edgefleet alerts list``. With no webhook configured for a kind the
row is still written (state ``off``): what would have been sent stays visible.

The hooks are called from the operations themselves (a poll, a job finishing) and never raise
or wait: they write one row, hand its id to the background deliverer and return; any error of
theirs is logged and swallowed (the operation that raised an alert must not fail because of
it). A failed job's alert is written in the job's own ending transaction (a savepoint, so an
error of the alert's rolls back only the alert), so no crash leaves one without the other.
Telemetry jobs raise no ``job_failed``: one fails whenever a device does not answer, which is
the ``device_offline`` alert's business, and the poller runs one every minute.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.dbclock import db_now
from orchestrator.core.errors import EdgeFleetError
from orchestrator.core.models import Alert, Device, Job, TelemetrySnapshot
from orchestrator.core.utc import utcnow
from orchestrator.fleet.fanout import Outcome
from orchestrator.notify import webhooks

log = logging.getLogger(__name__)

KINDS = webhooks.KINDS
STATES = ("pending", "delivered", "failed", "off")
# get_throttled conditions, in bit order (agent/sensors.py THROTTLE_BITS).
THROTTLE_WORDS = ("under_voltage", "frequency_capped", "throttled", "soft_temp_limit")
MAX_TEXT = 4000  # an error quoted in a payload (a failed job's lists every device)

P = ParamSpec("P")
R = TypeVar("R")


def _never_raises(func: Callable[P, R]) -> Callable[P, R | None]:
    """A hook of an operation: an error of the alert's own is logged, never passed on."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        try:
            return func(*args, **kwargs)
        except Exception:
            log.exception("alert hook %s failed (the operation itself is unaffected)",
                          func.__name__)
            return None

    return wrapper


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_TEXT:
        return text
    return text[:MAX_TEXT] + f"... ({len(text) - MAX_TEXT} more characters)"


def _known(session: Session, dedupe_key: str) -> bool:
    return session.exec(select(Alert.id).where(Alert.dedupe_key == dedupe_key)).first() \
        is not None


def record(settings: Settings, kind: str, subject: str, dedupe_key: str, summary: str,
           data: dict[str, Any], now: datetime | None = None) -> int | None:
    """Record an alert unless one with ``dedupe_key`` exists, and start delivering it in the
    background when ``kind`` has a webhook. The new alert's id; None if it was known."""
    try:
        with session_scope(settings) as session:
            alert_id = add(session, settings, kind, subject, dedupe_key, summary, data, now)
    except IntegrityError:  # another process recorded the same event a moment ago
        return None
    if alert_id is not None:
        deliver(settings, alert_id)
    return alert_id


def add(session: Session, settings: Settings, kind: str, subject: str, dedupe_key: str,
        summary: str, data: dict[str, Any], now: datetime | None = None) -> int | None:
    """``record``'s row in the caller's transaction (an event and its alert commit together:
    a crash between two commits lost the alert for good); the caller ``deliver``s it after
    its commit. Claimed for this process meanwhile, so if it dies before delivering, another
    process's sweep delivers it once the claim lapses."""
    if kind not in KINDS:
        raise ValueError(f"alert kind {kind!r} is not one of {', '.join(KINDS)}")
    now = now or utcnow()
    url = webhooks.webhook_url(settings, kind)
    payload = {"id": None, "event": kind, "at": now.isoformat(), "subject": subject,
               "summary": summary, "data": data, "source": "edgefleet"}
    if _known(session, dedupe_key):
        return None
    alert = Alert(kind=kind, subject=subject, dedupe_key=dedupe_key, summary=summary,
                  payload=payload, state="pending" if url else "off", created_at=now)
    if url:  # ours to deliver: a sweep elsewhere leaves it alone meanwhile
        claimed = db_now(session)  # what every host's sweep compares (core.dbclock)
        alert.next_attempt_at = claimed
        alert.claimed_by = webhooks.CLAIM
        alert.claimed_until = claimed + webhooks.claim_hold(settings)
    session.add(alert)
    session.flush()
    alert.payload = {**payload, "id": alert.id}
    log.info("alert %s (%s): %s", alert.id, kind, summary)
    return alert.id


@_never_raises
def deliver(settings: Settings, alert_id: int) -> None:
    """Start delivering a committed alert in the background, when its kind has a webhook.
    Never raises: the event it announces is committed already (an alert left pending is
    delivered by a server's sweep once its claim lapses)."""
    with session_scope(settings) as session:
        alert = session.get(Alert, alert_id)
        if alert is None or alert.state != "pending":
            return
    webhooks.DELIVERER.put(settings, alert_id)


# --- regression ------------------------------------------------------------------------------


@_never_raises
def notify_regression(settings: Settings, *, device: str, bundle: str, precision: str | None,
                      threads: int | None, run_id: int, ratio: float,
                      ci95: Sequence[float] | None = None, p_value: float | None = None,
                      p50_before_ms: float | None = None, p50_after_ms: float | None = None,
                      bundle_version: str | None = None,
                      detail: dict[str, Any] | None = None) -> int | None:
    """A change point found in a series (device x bundle name x precision x threads of valid
    benchmark p50s) that makes it slower: ``run_id`` is the first run after the change,
    ``ratio`` the median after / the median before (> 1: slower), ``ci95`` its 95% interval,
    ``p_value`` the detector's. ``detail`` is passed through (JSON values only).

    Call it for every slowdown the detector finds, as often as it runs: each series x run
    alerts once. A change that made the series faster (``ratio`` <= 1) is not a regression and
    raises nothing. Returns the new alert's id (None: known already, not a slowdown, or an
    error, which is logged)."""
    if not ratio > 1:
        return None
    series = {"device": device, "bundle": bundle, "precision": precision, "threads": threads}
    ci = [float(v) for v in ci95] if ci95 is not None else None
    data = {"series": series, "run_id": run_id, "bundle_version": bundle_version,
            "ratio": float(ratio), "ci95": ci, "p_value": p_value,
            "p50_before_ms": p50_before_ms, "p50_after_ms": p50_after_ms,
            "detail": detail or {}}
    name = f"{bundle}@{bundle_version}" if bundle_version else bundle
    where = f"{device}, {name}" + (f" {precision}" if precision else "") + (
        f", {threads} thread{'s' if threads != 1 else ''}" if threads is not None else "")
    summary = f"{where}: p50 {ratio:.2f}x slower from run {run_id}"
    if ci is not None:
        summary += f" (95% CI {ci[0]:.2f}-{ci[1]:.2f}"
        summary += f", p={p_value:.2g})" if p_value is not None else ")"
    key = f"regression:{device}|{bundle}|{precision}|{threads}|run:{run_id}"
    return record(settings, "regression", f"{device}/{bundle}/{precision}/{threads}", key,
                  summary, data)


# --- jobs ------------------------------------------------------------------------------------


@_never_raises
def job_failed(settings: Settings, job_id: int) -> int | None:
    """The alert of a job that ended "failed" (none for telemetry jobs: see the module
    docstring), recorded on its own: for a job whose end was committed without it."""
    with session_scope(settings) as session:
        alert_id = add_job_failed(session, settings, job_id)
    if alert_id is not None:
        deliver(settings, alert_id)
    return alert_id


def add_job_failed(session: Session, settings: Settings, job_id: int) -> int | None:
    """``job_failed``'s alert in the transaction that ends the job (``jobs.finish_job``,
    ``jobs.record_failed``, a refused schedule): the caller ``deliver``s it after the commit."""
    job = session.get(Job, job_id)
    if job is None or job.state != "failed" or job.kind == "telemetry":
        return None
    bundle = (job.params or {}).get("bundle")
    data = {"job_id": job.id, "kind": job.kind, "targets": job.targets,
            "origin": job.origin, "created_by": job.created_by, "bundle": bundle,
            "error": _clip(job.error), "run_id": job.run_id,
            "schedule_id": job.schedule_id,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None}
    what = f"{job.kind} job {job_id}" + (f" ({bundle} on {job.targets})" if bundle else "")
    first_line = (job.error or "no error recorded").splitlines()[0]
    summary = f"{what} failed: {first_line[:300]}"
    return add(session, settings, "job_failed", f"job:{job_id}", f"job_failed:{job_id}",
               summary, data)


# --- telemetry: offline and throttled devices -------------------------------------------------


@_never_raises
def after_telemetry(settings: Settings, outcomes: Sequence[Outcome]) -> list[int]:
    """After a telemetry poll (``telemetry.take_snapshots``): a device that answered may be
    newly throttled; one that did not may have been offline too long. The new alerts' ids."""
    raised: list[int] = []
    for outcome in outcomes:
        try:
            alert_id = (check_throttled(settings, outcome.device) if outcome.ok
                        else check_offline(settings, outcome.device, outcome.error))
        except Exception:  # one device's problem is no reason to skip the others
            log.exception("alert check of %s failed", outcome.device)
            continue
        if alert_id is not None:
            raised.append(alert_id)
    return raised


def check_offline(settings: Settings, name: str, error: str | None = None,
                  now: datetime | None = None) -> int | None:
    """The ``device_offline`` alert of a device that did not answer, once its last contact
    (or, never seen, its addition) is more than ``alert_offline_minutes`` ago; once per
    outage: the key is the last contact, which the device's next answer moves on."""
    now = now or utcnow()
    with session_scope(settings) as session:
        device = session.exec(select(Device).where(Device.name == name)).first()
        if device is None:
            return None
        since = device.last_seen or device.created_at
        never = device.last_seen is None
        key = f"device_offline:{name}:{since.isoformat()}"
        if _known(session, key):
            return None
    minutes = (now - since).total_seconds() / 60
    if minutes <= settings.alert_offline_minutes:
        return None
    summary = (f"{name} has not answered for {minutes:.0f} min "
               + ("(never seen since it was added)" if never else
                  f"(last seen {since:%Y-%m-%d %H:%M} UTC)"))
    data = {"device": name, "last_seen": None if never else since.isoformat(),
            "offline_minutes": round(minutes, 1),
            "threshold_minutes": settings.alert_offline_minutes, "error": _clip(error)}
    return record(settings, "device_offline", name, key, summary, data, now)


def _words(snapshot: TelemetrySnapshot | None) -> tuple[set[str], set[str]]:
    """(now, since boot) get_throttled conditions of a reading; none for no reading or a
    device without the sensor (unknown is not a condition)."""
    if snapshot is None or snapshot.throttled_bits is None:
        return set(), set()
    flags = snapshot.throttle_flags or {}
    return set(flags.get("now") or []), set(flags.get("since_boot") or [])


def _ordered(words: set[str]) -> list[str]:
    return sorted(words, key=lambda w: (THROTTLE_WORDS.index(w) if w in THROTTLE_WORDS
                                        else len(THROTTLE_WORDS), w))


def check_throttled(settings: Settings, name: str, now: datetime | None = None) -> int | None:
    """The ``device_throttled`` alert of a device whose newest reading shows a condition
    (under-voltage, frequency capped, throttled, soft temperature limit) that its previous
    reading did not: a ``now`` bit newly set (it is happening) or a ``since boot`` bit newly
    set (it happened between the two readings). A device's first reading compares with a
    clean one. A condition alerted for that device within ``alert_throttle_repeat_minutes``
    does not alert again (a Pi at its soft temperature limit flips the now-bit every poll)."""
    now = now or utcnow()
    with session_scope(settings) as session:
        latest, *rest = session.exec(
            select(TelemetrySnapshot).where(TelemetrySnapshot.device_name == name)
            .order_by(col(TelemetrySnapshot.id).desc()).limit(2)).all() or [None]
        if latest is None or latest.throttled_bits is None:
            return None
        key = f"device_throttled:{name}:snapshot:{latest.id}"
        now_words, boot_words = _words(latest)
        prev_now, prev_boot = _words(rest[0] if rest else None)
        new = (now_words - prev_now) | (boot_words - prev_boot)
        if not new or _known(session, key):
            return None
        window = now - timedelta(minutes=settings.alert_throttle_repeat_minutes)
        for earlier in session.exec(select(Alert).where(
                Alert.kind == "device_throttled", Alert.subject == name,
                col(Alert.created_at) >= window)).all():
            new -= set(((earlier.payload or {}).get("data") or {}).get("new") or [])
        if not new:
            return None
        bits = latest.throttled_bits
        data = {"device": name, "throttled_hex": hex(bits), "new": _ordered(new),
                "now": _ordered(now_words), "since_boot": _ordered(boot_words),
                "temp_c": latest.temp_c, "freq_mhz": latest.freq_mhz,
                "taken_at": latest.taken_at.isoformat(), "snapshot_id": latest.id}
    earlier = " since the last reading" if rest else " since boot"
    said = [w.replace("_", "-" if w == "under_voltage" else " ")
            + (" now" if w in now_words else earlier) for w in _ordered(new)]
    summary = f"{name}: {', '.join(said)} (get_throttled {hex(bits)}"
    summary += f", {latest.temp_c:.1f} °C)" if latest.temp_c is not None else ")"
    return record(settings, "device_throttled", name, key, summary, data, now)


# --- reading them back -----------------------------------------------------------------------


def list_alerts(session: Session, limit: int = 100, kind: str | None = None) -> list[Alert]:
    """Newest first."""
    query = select(Alert).order_by(col(Alert.id).desc()).limit(max(1, min(int(limit), 1000)))
    if kind is not None:
        if kind not in KINDS:
            raise EdgeFleetError(f"alert kind {kind!r}: choose one of {', '.join(KINDS)}")
        query = query.where(Alert.kind == kind)
    return list(session.exec(query).all())


def alert_public(alert: Alert) -> dict[str, Any]:
    """The JSON shape of an alert for the API and the CLI: what was sent and how delivery
    went (the claim is internal; no URL or secret is ever stored)."""
    return {"id": alert.id, "kind": alert.kind, "subject": alert.subject,
            "summary": alert.summary, "state": alert.state, "attempts": alert.attempts,
            "last_error": alert.last_error, "created_at": alert.created_at.isoformat(),
            "delivered_at": alert.delivered_at.isoformat() if alert.delivered_at else None,
            "payload": alert.payload}
