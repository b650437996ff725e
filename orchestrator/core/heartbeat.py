"""One daemon thread per process renewing what the process holds (device leases, running
jobs), a quarter of the shortest TTL apart, so another worker on any host can tell a dead
holder from a slow one by the age of its heartbeat.

Why one class: leases (orchestrator.fleet.leases) and jobs (orchestrator.jobs.liveness) need
the same loop (start on the first hold, wake early on a new one, stop when nothing is held,
renew outside the lock so a slow database never blocks ``hold``/``drop``); two copies drifted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from orchestrator.core.config import Settings

K = TypeVar("K", bound=Hashable)
log = logging.getLogger(__name__)


class Heartbeat(Generic[K]):
    """``renew`` is called with every held (key, settings) each beat, outside the lock; it
    handles its own errors (a busy database: the next beat retries)."""

    def __init__(self, name: str, ttl_s: Callable[[Settings], float],
                 renew: Callable[[list[tuple[K, Settings]]], None]) -> None:
        self.name, self._ttl_s, self._renew = name, ttl_s, renew
        self._held: dict[K, Settings] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def hold(self, settings: Settings, key: K) -> None:
        with self._lock:
            self._held[key] = settings
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._beat, daemon=True, name=self.name)
                self._thread.start()
            self._wake.notify()

    def drop(self, key: K) -> None:
        with self._lock:
            self._held.pop(key, None)

    def holds(self, key: K) -> bool:
        """Whether this process is renewing ``key`` now (so it is alive, whatever its age)."""
        with self._lock:
            return key in self._held

    def _beat(self) -> None:
        while True:
            with self._lock:
                if not self._held:
                    self._thread = None
                    return
                interval = min(self._ttl_s(s) for s in self._held.values()) / 4
                self._wake.wait(max(0.05, interval))
                held = list(self._held.items())
            if held:
                try:
                    self._renew(held)
                except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                    # Why: a dead heartbeat thread makes this live process look dead to every
                    # other worker (its jobs interrupted, its leases taken while it works on).
                    log.exception("%s: renewing failed; the next beat retries", self.name)
