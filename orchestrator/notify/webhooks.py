"""Webhook delivery of alerts: a signed JSON POST per alert, retried with backoff, from
background threads of this process.

Why threads and a row per alert, not a POST in line: an alert is raised by a push, a poll or a
job finishing, and a receiver that hangs or answers 500 must not slow any of them. The caller
only writes the ``Alert`` row (orchestrator.fleet.alerts) and hands its id to :data:`DELIVERER`;
``WORKERS`` threads POST it, each attempt bounded by ``webhook_timeout_s``, retrying 408, 425,
429, 5xx and network errors after ``webhook_backoff_s`` x 2^(n-1) s (at most
``MAX_BACKOFF_S``, longer if the receiver's ``Retry-After`` asks) until
``webhook_attempts`` tries are spent. Other statuses fail at once: a receiver refusing a
payload or its signature will not change its mind. Redirects are not followed.

Who delivers: the process that raised the alert claims the row (``claimed_by``/
``claimed_until``). A CLI command waits at exit up to ``webhook_exit_wait_s`` for deliveries in
progress; whatever is still pending then (a receiver down, retries due later) is picked up by
``edgefleet serve``, whose scheduler calls :func:`sweep`, once the claim has lapsed. Delivery is
at least once: a receiver deduplicates on the payload's ``id`` (also the
``X-EdgeFleet-Delivery`` header).

Signature: ``X-EdgeFleet-Signature: sha256=HEX``, the HMAC-SHA256 under
``EDGEFLEET_WEBHOOK_SECRET`` of ``TIMESTAMP + "." + body``, where ``X-EdgeFleet-Timestamp`` is
the Unix time of the attempt (each retry is signed afresh). A receiver recomputes it
(``wire.verify_signature``) and refuses a timestamp more than ``TOLERANCE_S`` away from its
clock, so a captured request cannot be replayed later. The secret is read from the settings at
each attempt and goes nowhere else: not in the DB, not in an error, not in a log line. Neither
does the URL (it may carry a token): messages name its host only (:func:`where`).
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import logging
import os
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, update
from sqlmodel import col, select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.dbclock import db_now
from orchestrator.core.hostid import this_host
from orchestrator.core.models import Alert
from orchestrator.core.utc import utcnow
from orchestrator.notify.wire import AttemptResult, body_of, headers_for, post, where

log = logging.getLogger(__name__)

KINDS = ("regression", "device_offline", "device_throttled", "job_failed")
MAX_BACKOFF_S = 300.0
CLAIM_MARGIN_S = 30.0
WORKERS = 2  # one hanging receiver leaves the other thread to the rest
OFF_WORDS = ("", "off", "none")
# This process, as the holder of the alerts it is delivering.
CLAIM = f"{this_host()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def webhook_url(settings: Settings, kind: str) -> str | None:
    """Where alerts of ``kind`` go: its own URL if set, else ``webhook_url``; None if neither
    is set or the one that applies is "" / "off" / "none"."""
    own = getattr(settings, f"webhook_url_{kind}", None)
    url = settings.webhook_url if own is None else own
    if url is None or url.strip().lower() in OFF_WORDS:
        return None
    return url.strip()


def secret_of(settings: Settings) -> bytes | None:
    secret = settings.webhook_secret
    value = secret.get_secret_value() if secret is not None else ""
    return value.encode() if value else None



def claim_hold(settings: Settings) -> timedelta:
    """How long a claim covers one attempt: connect, send and receive may each take the
    timeout, plus a margin."""
    return timedelta(seconds=3 * settings.webhook_timeout_s + CLAIM_MARGIN_S)


def backoff_s(settings: Settings, attempt: int, retry_after_s: float | None = None) -> float:
    # The exponent is capped: 2.0 ** 1025 overflows (webhook_attempts has no upper bound).
    delay = min(settings.webhook_backoff_s * 2.0 ** min(attempt - 1, 64), MAX_BACKOFF_S)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, MAX_BACKOFF_S))
    return delay


def deliver_once(settings: Settings, alert_id: int) -> float | None:
    """One attempt at a pending alert this process may claim. Returns the delay until the
    next attempt, or None when there is none (delivered, failed for good, claimed by another
    live process, or nothing to do)."""
    with session_scope(settings) as session:
        now = db_now(session)  # claims are compared by one clock on every host (core.dbclock)
        taken = session.execute(
            update(Alert).where(col(Alert.id) == alert_id, col(Alert.state) == "pending",
                                or_(col(Alert.claimed_by) == CLAIM,
                                    col(Alert.claimed_until).is_(None),
                                    col(Alert.claimed_until) < now))
            .values(claimed_by=CLAIM, claimed_until=now + claim_hold(settings))).rowcount
        if not taken:
            return None
        alert = session.get(Alert, alert_id)
        assert alert is not None
        kind, payload, attempt = alert.kind, dict(alert.payload), alert.attempts + 1
        url = webhook_url(settings, kind)
        if url is None:  # the configuration changed since the alert was raised
            alert.state, alert.claimed_by, alert.claimed_until = "off", None, None
            alert.next_attempt_at = None
            return None
        if alert.attempts >= settings.webhook_attempts:  # attempts that never finished
            alert.state, alert.claimed_by, alert.claimed_until = "failed", None, None
            alert.next_attempt_at = None
            alert.last_error = (f"gave up after {alert.attempts} attempts, the last not "
                                f"finished ({alert.last_error or 'no error recorded'})")
            return None
        # Counted before it is made: an attempt its process never finished (killed, or a CLI
        # that exited while its receiver hung) still counts against webhook_attempts.
        alert.attempts = attempt
    secret = secret_of(settings)
    body = body_of(payload)
    try:
        result = post(url, body, headers_for(kind, alert_id, attempt, body, secret),
                      settings.webhook_timeout_s, secret)
    except Exception as exc:  # a failure of ours, not a reason to retry unrecorded for ever
        log.exception("alert %s (%s): the attempt failed", alert_id, kind)
        result = AttemptResult(False, True, f"the attempt failed: {type(exc).__name__}")
    done = _db_now(settings)
    if result.ok:
        _record(settings, alert_id, state="delivered", attempts=attempt, delivered_at=done,
                claimed_by=None, claimed_until=None, next_attempt_at=None)
        log.info("alert %s (%s) delivered to %s (attempt %d)", alert_id, kind, where(url),
                 attempt)
        return None
    error = f"attempt {attempt}: {result.error}"
    if result.retry and attempt < settings.webhook_attempts:
        delay = backoff_s(settings, attempt, result.retry_after_s)
        due = done + timedelta(seconds=delay)
        _record(settings, alert_id, attempts=attempt, last_error=error, next_attempt_at=due,
                claimed_until=due + claim_hold(settings))
        log.warning("alert %s (%s): %s; retrying in %.3g s", alert_id, kind, error, delay)
        return delay
    _record(settings, alert_id, state="failed", attempts=attempt, last_error=error,
            claimed_by=None, claimed_until=None, next_attempt_at=None)
    log.warning("alert %s (%s) not delivered: %s", alert_id, kind, error)
    return None


def _db_now(settings: Settings) -> datetime:
    with session_scope(settings) as session:
        return db_now(session)


def _record(settings: Settings, alert_id: int, **values: Any) -> None:
    with session_scope(settings) as session:
        session.execute(update(Alert).where(col(Alert.id) == alert_id).values(**values))


class Deliverer:
    """Background delivery in this process: a heap of (due, alert) taken by ``WORKERS``
    daemon threads, started on first use. Each item carries the settings it was raised under
    (a test or the demo switches EDGEFLEET_HOME at run time, so one process may deliver for
    several DBs, and its retries use the same URL and secret as its first attempt)."""

    def __init__(self, workers: int = WORKERS) -> None:
        self.workers = workers
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Settings, int]] = []
        self._known: set[tuple[str, int]] = set()  # queued or being attempted
        self._inflight: dict[int, tuple[Settings, int]] = {}  # being attempted, by seq
        self._busy = 0
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._exit_wait_s = 0.0

    def put(self, settings: Settings, alert_id: int, delay_s: float = 0.0) -> None:
        url = settings.db_url
        with self._cond:
            self._exit_wait_s = max(self._exit_wait_s, settings.webhook_exit_wait_s)
            if (url, alert_id) in self._known:
                return
            self._known.add((url, alert_id))
            heapq.heappush(self._heap, (time.monotonic() + delay_s, next(self._seq), settings,
                                        alert_id))
            self._start()
            self._cond.notify()

    def _start(self) -> None:
        if self._threads:
            return
        self._threads = [threading.Thread(target=self._work, name=f"edgefleet-alerts-{i}",
                                          daemon=True) for i in range(self.workers)]
        for thread in self._threads:
            thread.start()
        atexit.register(self.at_exit)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(None if not self._heap
                                    else self._heap[0][0] - time.monotonic())
                _, seq, settings, alert_id = heapq.heappop(self._heap)
                self._inflight[seq] = (settings, alert_id)
                self._busy += 1
            delay: float | None = None
            try:
                delay = deliver_once(settings, alert_id)
            except Exception:  # the DB went away for a moment: the sweep will find it again
                log.exception("delivering alert %s failed", alert_id)
            with self._cond:
                self._busy -= 1
                self._inflight.pop(seq, None)
                if delay is None:
                    self._known.discard((settings.db_url, alert_id))
                else:
                    heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq),
                                                settings, alert_id))
                self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._known)

    def flush(self, timeout_s: float) -> bool:
        """Wait until nothing due within ``timeout_s`` is left to attempt (retries due later
        are left to the sweep of a server); True if nothing at all is left."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                now = time.monotonic()
                due_soon = self._heap and self._heap[0][0] <= deadline
                if not self._busy and not due_soon:
                    return not self._heap
                if now >= deadline:
                    return False
                self._cond.wait(deadline - now)

    def at_exit(self) -> None:
        """A CLI command's end: wait a little for deliveries in progress, then give up the
        claim on what is left, so that a server takes it over at its next sweep."""
        if not self.pending() or self.flush(self._exit_wait_s):
            return
        with self._cond:
            left = [(item[2], item[3]) for item in self._heap] + list(self._inflight.values())
            count = len(self._known)
        for settings, alert_id in left:
            try:
                with session_scope(settings) as session:
                    session.execute(update(Alert).where(
                        col(Alert.id) == alert_id, col(Alert.claimed_by) == CLAIM,
                        col(Alert.state) == "pending").values(claimed_until=db_now(session)))
            except Exception:  # exiting anyway: the claim lapses by itself
                log.debug("could not release the claim on alert %s", alert_id)
        log.warning("%d alert(s) not delivered yet; a running `edgefleet serve` delivers "
                    "them (`edgefleet alerts list` shows them)", count)


DELIVERER = Deliverer()

SWEEP_INTERVAL_S = 10.0
_last_sweep: dict[str, float] = {}


def sweep(settings: Settings, min_interval_s: float | None = None, limit: int = 100) -> int:
    """Take over pending alerts that no live process is delivering (a CLI that exited before
    its receiver answered, a server restarted mid-retry); at most every ``min_interval_s``
    per DB. Returns how many were queued here."""
    last = _last_sweep.get(settings.db_url)
    interval = SWEEP_INTERVAL_S if min_interval_s is None else min_interval_s
    if last is not None and time.monotonic() - last < interval:
        return 0
    _last_sweep[settings.db_url] = time.monotonic()
    try:
        with session_scope(settings) as session:
            now = db_now(session)
            rows = session.exec(select(Alert.id, Alert.next_attempt_at).where(
                col(Alert.state) == "pending",
                or_(col(Alert.claimed_until).is_(None), col(Alert.claimed_until) < now))
                .order_by(col(Alert.id)).limit(limit)).all()
    except Exception:  # the scheduler's other work must go on: next sweep, next time
        log.exception("looking for undelivered alerts failed")
        return 0
    for alert_id, due in rows:
        delay = max(0.0, (due - now).total_seconds()) if due is not None else 0.0
        DELIVERER.put(settings, alert_id, delay)
    return len(rows)


def send_test(settings: Settings) -> list[dict[str, Any]]:
    """One signed ``test`` event to each distinct configured URL, now, in this thread (for
    `edgefleet alerts test`); nothing is stored. Per URL: the kinds that use it, its host,
    whether it was signed, ok, and the error in words that name the host only."""
    by_url: dict[str, list[str]] = {}
    for kind in KINDS:
        url = webhook_url(settings, kind)
        if url is not None:
            by_url.setdefault(url, []).append(kind)
    secret = secret_of(settings)
    results = []
    for url, kinds in by_url.items():
        payload = {"id": 0, "event": "test", "at": utcnow().isoformat(), "subject": "",
                   "summary": "EdgeFleet webhook test: configured for " + ", ".join(kinds),
                   "data": {"kinds": kinds}, "source": "edgefleet"}
        body = body_of(payload)
        result = post(url, body, headers_for("test", 0, 1, body, secret),
                      settings.webhook_timeout_s, secret)
        results.append({"kinds": kinds, "host": where(url), "signed": secret is not None,
                        "ok": result.ok, "error": result.error})
    return results
