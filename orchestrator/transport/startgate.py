"""At most ``EDGEFLEET_MAX_STARTING`` commands starting at once in this process.

A command is *starting* from its launch (an SSH login, the device's login shell, the agent's
imports) until its first output, its end, or its login allowance passes. ``--forks`` bounds
the devices worked on at once; it did not bound how many of them start together, and starts
are where a crowd hurts: 200 at once on a 2-core controller (or 200 logical devices behind
one sshd, whose logins each run the user's ``.bashrc``: here ``pyenv init``, whose rehash
spins on one lock file shared by every login) took longer than the 60 s allowance, which then
failed devices that were only waiting their turn (README, "1,000 devices"). A start waits for
a slot *before* it launches, so its allowance counts from its own launch, never from the
queue: the silence timeout keeps telling a hung device from a busy controller.

Pacing logins alone (released once authenticated) was measured not to be enough: the shell
start that follows each login is the costly part. Once started, commands run side by side
up to ``--forks`` as before.

A slot is given back from the channel (first output, finish, abort); one never given back
(a channel dropped on an error path) expires when its allowance has passed, so none leaks.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable

MAX_STARTING_ENV = "EDGEFLEET_MAX_STARTING"
DEFAULT_MAX_STARTING = 16
_WAIT_POLL_S = 0.25  # how often a waiting start looks at whether it was cancelled


def max_starting() -> int:
    """The limit: ``EDGEFLEET_MAX_STARTING`` (0 or less: no limit), else the default."""
    try:
        value = int(os.environ.get(MAX_STARTING_ENV, DEFAULT_MAX_STARTING))
    except ValueError:
        return DEFAULT_MAX_STARTING
    return value if value > 0 else 1 << 30


class Slot:
    """One start's place at the gate; ``release`` is idempotent and thread-safe."""

    def __init__(self, gate: StartGate) -> None:
        self._gate = gate
        self.deadline = math.inf  # set once the command is launched (``expire_after``)

    def expire_after(self, seconds: float) -> None:
        with self._gate.cond:
            self.deadline = time.monotonic() + seconds

    def release(self) -> None:
        self._gate.give_back(self)


class StartGate:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.cond = threading.Condition()
        self._held: set[Slot] = set()
        self.waiting = 0  # starts waiting for a slot now

    def take(self, cancelled: Callable[[], bool]) -> Slot | None:
        """A slot, waiting for one while the gate is full; None if ``cancelled()`` turned true
        while waiting (nothing taken)."""
        with self.cond:
            while True:
                now = time.monotonic()
                for slot in [s for s in self._held if s.deadline <= now]:
                    self._held.discard(slot)  # past its allowance: its channel is done for
                if len(self._held) < self.limit:
                    slot = Slot(self)
                    self._held.add(slot)
                    return slot
                if cancelled():
                    return None
                soonest = min(s.deadline for s in self._held) - now
                self.waiting += 1
                try:
                    self.cond.wait(min(_WAIT_POLL_S, max(soonest, 0.001)))
                finally:
                    self.waiting -= 1

    def give_back(self, slot: Slot) -> None:
        with self.cond:
            if slot in self._held:
                self._held.discard(slot)
                self.cond.notify()

    def starting(self) -> int:
        with self.cond:
            return len(self._held)


_gate: StartGate | None = None
_gate_lock = threading.Lock()


def the_gate() -> StartGate:
    """This process's gate; a new one if ``EDGEFLEET_MAX_STARTING`` changed (the slots of
    the old one are given back to it, harmlessly)."""
    global _gate
    limit = max_starting()
    with _gate_lock:
        if _gate is None or _gate.limit != limit:
            _gate = StartGate(limit)
        return _gate
