"""The health bench of a staged rollout: after a batch is pushed, each device it updated is
benchmarked on the new version *and* on the version of that bundle name it ran before (still in
its store: the agent keeps 3), alternately, and judged by the baseline gate.

Why interleaved rather than against the p50 stored from an earlier run: two separate runs are
exposed to whatever the machine did in between. ``bench/rollout_health.py`` measured it on the
shared 2-core VM: a new version doing the same work as the one it replaced, benchmarked alone (1
thread, 30 runs) and judged against the previous version's separate run by the gate's test, was
"significantly slower by more than 5%" in 2 of 12 rounds (ratios up to 1.33) — a rollout halted
by noise; measured alternately, in 0 of 12, and both ways caught a version doing twice the work
12 of 12 times. Measured alternately in rounds (A B B A ...,
``runs.bench`` with ``rounds``), the slow drift of a machine falls on both versions alike, and
``pairing.compare_runs`` compares round medians (Mann-Whitney U + cluster bootstrap), which is what
``edgefleet bench --baseline`` and its gate (``measure.gate.check``: significantly slower *and*
by more than ``DEFAULT_MAX_REGRESSION``) already do. This module only picks the pairs and words
the verdicts: nothing statistical is new here.

The change-point detector (``measure.regressions``) cannot judge one fresh run: a new level needs
``DETECTOR.min_points`` (3) runs. A device the gate finds slower is *unhealthy*, so is one whose
health bench failed; one that has no earlier version of this bundle name (a first deployment),
or whose pair was not comparable (throttled: the gate leaves invalid results out), is not judged
and says so rather than failing: a hot board is not a bad bundle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlmodel import select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Bundle, Device
from orchestrator.measure import gate, runs

# Short on purpose: it runs after every batch while the rollout waits. 1 thread (a series every
# bench has); 30 timed runs over 5 rounds per version, as `bench --baseline`'s default rounds.
HEALTH_PARAMS = runs.BenchParams(threads=[1], warmup=3, runs=30)
HEALTH_ROUNDS = 5


@dataclass(frozen=True)
class Health:
    """One device's verdict. ``ok`` False fails the device in its batch."""

    device: str
    ok: bool
    note: str
    ratio: float | None = None
    baseline: str | None = None  # N@V it was compared with
    run_ids: tuple[int, ...] = ()  # the baseline's and the new version's health runs

    def public(self) -> dict[str, Any]:
        return {"device": self.device, "ok": self.ok, "note": self.note, "ratio": self.ratio,
                "baseline": self.baseline, "run_ids": list(self.run_ids)}


def _earlier(settings: Settings, bundle: Bundle,
             previous: dict[str, Any] | None) -> Bundle | None:
    """The bundle a device ran before the push, if it is an earlier version of the same name
    known here (the agent reports it by digest)."""
    if not previous or previous.get("digest") in (None, bundle.digest) \
            or previous.get("name") != bundle.name:
        return None
    with session_scope(settings) as session:
        found = session.exec(select(Bundle).where(Bundle.digest == previous["digest"])).first()
        if found is not None:
            session.expunge(found)
        return found


def _verdict(device: str, row: dict[str, Any] | None, failed: set[str], label: str,
             run_ids: tuple[int, ...]) -> Health:
    if row is None:
        return Health(device, False, "health bench failed: no result", None, label, run_ids)
    if row.get("excluded"):
        reason = str(row["excluded"])
        if "failed" in reason:  # the health bench itself failed on the device
            return Health(device, False, f"health bench: {reason}", None, label, run_ids)
        return Health(device, True, f"not judged: {reason}", None, label, run_ids)
    slower = device in failed
    note = (f"p50 {row['ratio']:.2f}x that of {label} measured alternately, 95% CI "
            f"{row['ci_low']:.2f}-{row['ci_high']:.2f}, p {row['p_value']:.2g}: "
            + (f"slower by more than {gate.DEFAULT_MAX_REGRESSION * 100:g}%" if slower
               else str(row["verdict"])))
    return Health(device, not slower, note, row["ratio"], label, run_ids)


def health_bench(settings: Settings, bundle: Bundle,
                 updated: Sequence[tuple[Device, dict[str, Any] | None]], targets: str,
                 forks: int, timeout: float | None, *, job_id: int | None,
                 created_by: str | None, cancelled: Callable[[], bool] | None = None,
                 ) -> tuple[list[int], dict[str, Health]]:
    """Judge each device of ``updated`` (the device and what it ran before the push, as its
    push outcome's ``previous`` says); returns the health runs' ids and the verdicts."""
    verdicts: dict[str, Health] = {}
    groups: dict[str, tuple[Bundle, list[Device]]] = {}
    for device, previous in updated:
        earlier = _earlier(settings, bundle, previous)
        if earlier is None:
            verdicts[device.name] = Health(device.name, True, "not judged: no earlier version "
                                           f"of {bundle.name} on the device to compare with")
        else:
            groups.setdefault(earlier.digest, (earlier, []))[1].append(device)
    run_ids: list[int] = []
    for earlier, devices in groups.values():
        label = f"{earlier.name}@{earlier.version}"
        done, _ = runs.bench(settings, [earlier, bundle], devices, HEALTH_PARAMS, targets,
                             forks, timeout, rounds=HEALTH_ROUNDS, created_by=created_by,
                             job_id=job_id, cancelled=cancelled)
        ids = tuple(r.id for r in done if r.id is not None)
        run_ids.extend(ids)
        checked = gate.check(settings, ids[0], ids[1], label, gate.DEFAULT_MAX_REGRESSION)
        rows = {row["device"]: row for row in checked["comparison"]}
        failed = {row["device"] for row in checked["gate"]["failed"]}
        for device in devices:
            verdicts[device.name] = _verdict(device.name, rows.get(device.name), failed, label,
                                             ids)
    return run_ids, verdicts
