"""Bounded fan-out over devices. Every operation returns one Outcome per device; a device that
fails (or raises) never stops the others."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.errors import EdgeFleetError
from orchestrator.transport import Target


@dataclass
class Outcome:
    device: str
    ok: bool
    state: str
    error: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "ok": self.ok, "state": self.state, "error": self.error,
                "duration_s": round(self.duration_s, 3), **self.data}


Step = Callable[[Target], Outcome]


def fan_out(
    targets: Sequence[Target],
    step: Step,
    forks: int = 10,
    on_done: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run ``step`` for each target with at most ``forks`` at once; results in target order."""
    if forks < 1:
        raise EdgeFleetError(f"--forks must be at least 1 (got {forks})")

    def guarded(target: Target) -> Outcome:
        started = time.monotonic()
        try:
            outcome = step(target)
        except EdgeFleetError as exc:
            outcome = Outcome(target.name, False, "failed", str(exc))
        except Exception as exc:  # a bug or a library error: still only this device's failure
            outcome = Outcome(target.name, False, "failed", f"{type(exc).__name__}: {exc}")
        outcome.duration_s = outcome.duration_s or time.monotonic() - started
        return outcome

    results: dict[str, Outcome] = {}
    with ThreadPoolExecutor(max_workers=min(forks, max(1, len(targets)))) as pool:
        # Each device's thread runs in a copy of the caller's context: a job's lease policy
        # (leases.waiting_as) reaches the device steps.
        futures = {pool.submit(contextvars.copy_context().run, guarded, target): target
                   for target in targets}
        for future in as_completed(futures):
            outcome = future.result()
            results[outcome.device] = outcome
            if on_done:
                on_done(outcome)
    return [results[target.name] for target in targets]
