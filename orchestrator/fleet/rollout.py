"""Staged rollouts: which devices a push reaches in which order (canary, then batches), and when a
batch's failures halt it.

Why a plan of its own, apart from running it (``jobs.rollout``): the options are checked before a
job is queued (``jobs.params``), so a pattern that selects no canary or a batch of "0" is refused
at the door, and the batches shown on the job page are exactly the ones that will run. Each batch
is pushed by ``deploy.push``, i.e. by ``fanout.fan_out``: the per-batch engine is the one every
fleet operation uses.

Order: the canary devices first, alone; then the other targets in *inventory order* (the order
their hosts appear in the inventory file, ``Device.source`` = ``file:line``; devices without a
source, added some other way, after them by name), cut into batches of ``--batch`` devices or
``--batch PCT%`` of them (rounded up, at least 1).

Halting: a batch fails when its failed devices exceed ``max_fail`` percent of its size (AWX's
``max_fail_percentage``: 0 means one failure halts). The canary tolerates none, whatever
``max_fail`` says: it exists to stop a bad bundle at one device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.core.errors import EdgeFleetError
from orchestrator.core.listings import select_by_pattern
from orchestrator.core.models import Device

KEYS = ("canary", "batch", "max_fail", "health_bench", "rollback_on_fail")
# Batch states shown on the job page and in ``--json``.
PENDING, RUNNING, OK, FAILED, NOT_STARTED, CANCELLED = (
    "pending", "running", "ok", "failed", "not started", "cancelled")


@dataclass(frozen=True)
class RolloutOptions:
    """A push's rollout options, as a job stores them (``params["rollout"]``).

    ``batch``: a device count ("2") or a share of the non-canary targets ("50%"); None puts
    them all in one batch. ``max_fail``: percent (0-100) of a batch's devices that may fail
    before the rollout halts."""

    canary: str | None = None
    batch: str | None = None
    max_fail: float = 0.0
    health_bench: bool = False
    rollback_on_fail: bool = False

    def public(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Batch:
    """One step of a rollout: its devices (inventory order) and how it ended."""

    index: int  # 0 is the canary when there is one
    kind: str  # "canary" | "batch"
    devices: list[str]
    state: str = PENDING
    failed: list[str] = field(default_factory=list)
    note: str | None = None

    def public(self) -> dict[str, Any]:
        return {"index": self.index, "kind": self.kind, "devices": list(self.devices),
                "state": self.state, "failed": list(self.failed), "note": self.note}


def _bad(key: str, message: str, value: Any) -> EdgeFleetError:
    return EdgeFleetError(f"push job: rollout {key!r} {message} (got {value!r})")


def parse_batch(value: Any) -> str | None:
    """``2``, ``"2"`` -> ``"2"``; ``"50%"`` -> ``"50%"``; None/"" -> None; else an error
    naming the forms accepted."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = str(value).strip() if not isinstance(value, bool) else ""
    number = text[:-1].strip() if text.endswith("%") else text
    try:
        amount = float(number) if text.endswith("%") else int(number)
    except ValueError:
        amount = math.nan
    if text.endswith("%"):
        if not 0 < amount <= 100:
            raise _bad("batch", "must be a device count such as 2 or a share such as 50%",
                       value)
        return f"{amount:g}%"
    if isinstance(value, float) or not (isinstance(amount, int) and amount >= 1):
        raise _bad("batch", "must be a device count such as 2 or a share such as 50%", value)
    return str(amount)


def parse_max_fail(value: Any) -> float:
    """Percent of a batch that may fail: ``10``, ``"10"`` and ``"10%"`` are all 10 percent."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return 0.0
    text = str(value).strip()
    if isinstance(value, bool):
        text = ""
    try:
        amount = float(text[:-1] if text.endswith("%") else text)
    except ValueError:
        amount = math.nan
    if not 0 <= amount <= 100:
        raise _bad("max_fail", "must be a percentage from 0 to 100, e.g. 0 or 25%", value)
    return amount


def check_options(value: Any) -> RolloutOptions:
    """A job's ``rollout`` parameter, normalized; EdgeFleetError naming the first problem."""
    if not isinstance(value, dict):
        raise _bad("", "must be an object such as {\"canary\": \"pi-1\", \"batch\": \"25%\"}",
                   value)
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise EdgeFleetError(f"push job: unknown rollout option(s) "
                             f"{', '.join(map(repr, unknown))}; allowed: {', '.join(KEYS)}")
    canary = value.get("canary")
    if canary is not None and not (isinstance(canary, str) and canary.strip()):
        raise _bad("canary", "must be a target pattern such as 'pi5-a'", canary)
    flags = {}
    for key in ("health_bench", "rollback_on_fail"):
        flag = value.get(key, False)
        if not isinstance(flag, bool):
            raise _bad(key, "must be true or false", flag)
        flags[key] = flag
    return RolloutOptions(canary.strip() if canary else None, parse_batch(value.get("batch")),
                          parse_max_fail(value.get("max_fail")), **flags)


def inventory_order(devices: Sequence[Device]) -> list[Device]:
    """The devices in the order their hosts appear in the inventory (see the module doc)."""

    def key(device: Device) -> tuple[int, str, int, str]:
        source = device.source or ""
        path, _, line = source.rpartition(":")
        if not path or not line.isdigit():
            return (1, "", 0, device.name)
        return (0, path, int(line), device.name)

    return sorted(devices, key=key)


def batch_size(batch: str | None, count: int) -> int:
    """Devices per batch for ``count`` non-canary devices."""
    if count == 0:
        return 0
    if batch is None:
        return count
    if batch.endswith("%"):
        return max(1, math.ceil(float(batch[:-1]) / 100 * count))
    return int(batch)


def plan(devices: Sequence[Device], options: RolloutOptions) -> list[Batch]:
    """The batches of a rollout over ``devices`` (the selected targets)."""
    ordered = inventory_order(devices)
    canary: list[Device] = []
    if options.canary:
        try:
            canary = select_by_pattern(ordered, options.canary, lambda d: (d.name, d.groups))
        except EdgeFleetError as exc:
            raise EdgeFleetError(f"push job: the canary must select devices among the "
                                 f"targets: {exc}") from None
        if not canary:
            raise EdgeFleetError(f"push job: the canary pattern {options.canary!r} selects "
                                 "none of the targets")
        canary = inventory_order(canary)
    chosen = {d.name for d in canary}
    rest = [d.name for d in ordered if d.name not in chosen]
    batches = [Batch(0, "canary", [d.name for d in canary])] if canary else []
    size = batch_size(options.batch, len(rest))
    for start in range(0, len(rest), size or 1):
        batches.append(Batch(len(batches), "batch", rest[start:start + size]))
    return batches


def exceeds(batch: Batch, max_fail: float) -> bool:
    """Whether the batch's failures halt the rollout (the canary tolerates none)."""
    if not batch.failed:
        return False
    if batch.kind == "canary":
        return True
    return len(batch.failed) > max_fail / 100 * len(batch.devices)
