"""The health bench of a staged rollout: after a batch is pushed, a short benchmark on its devices,
each compared with that device's previous valid result for the same bundle name.

Why this comparison and not another: the series of the regression detector are device x bundle
name x precision x thread count of valid benchmark p50s (``measure.regressions``), so "the
previous valid p50 for that bundle name" is that series' newest point before the push — usually
the version being replaced. A change point needs 3 runs of the new level (``DETECTOR.min_points``),
so it cannot judge one fresh run; what can is the test ``edgefleet bench --baseline`` gates with
(``stats.compare_runs`` on the raw latencies: Mann-Whitney U and a bootstrap CI of the ratio of
medians, then ``stats.gate``: significantly slower *and* by more than the bound,
``gate.DEFAULT_MAX_REGRESSION``). A device is unhealthy when that gate fails it, or when the
health bench itself fails on it. A device without a previous valid result, or whose new result
is throttled/invalid, is not judged (said in its note) rather than failed: the rollout should not
halt on a hot board or a first deployment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlmodel import col, select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Bundle, Device, Result, Run
from orchestrator.measure import runs
from orchestrator.measure.gate import DEFAULT_MAX_REGRESSION
from orchestrator.measure.stats import compare_runs, gate

# Short on purpose: it runs after every batch, while the rollout waits. 1 thread: the series
# every bench has (the default thread counts are 1, 2, 4).
HEALTH_PARAMS = runs.BenchParams(threads=[1], warmup=3, runs=30)


@dataclass(frozen=True)
class Health:
    """One device's verdict. ``ok`` False fails the device in its batch."""

    device: str
    ok: bool
    note: str
    ratio: float | None = None
    p50_ms: float | None = None
    previous_p50_ms: float | None = None
    previous_run_id: int | None = None

    def public(self) -> dict[str, Any]:
        return {"device": self.device, "ok": self.ok, "note": self.note, "ratio": self.ratio,
                "p50_ms": self.p50_ms, "previous_p50_ms": self.previous_p50_ms,
                "previous_run_id": self.previous_run_id}


def previous_result(settings: Settings, device: str, bundle_name: str, precision: str | None,
                    threads: int | None, before_run: int) -> dict[str, Any] | None:
    """The device's newest valid benchmark result of this series measured before
    ``before_run``, with its raw latencies (None when there is none)."""
    with session_scope(settings) as session:
        query = (select(Result, Run).join(Run, col(Result.run_id) == col(Run.id))
                 .where(Run.kind == "bench", Run.bundle_name == bundle_name,
                        col(Run.id) < before_run, Result.device_name == device,
                        col(Result.ok), col(Result.valid).is_(True),
                        Result.threads == threads, Result.precision == precision)
                 .order_by(col(Run.id).desc()).limit(1))
        row = session.exec(query).first()
        if row is None:
            return None
        result, run = row
        return runs.result_public(result, run, latencies=True)


def judge(settings: Settings, run_id: int, bundle_name: str,
          max_regression: float = DEFAULT_MAX_REGRESSION) -> dict[str, Health]:
    """Each device's verdict on the health run ``run_id``."""
    with session_scope(settings) as session:
        run = runs.get_run(session, run_id)
        fresh = runs.run_public(run, runs.run_results(session, run_id, latencies=True),
                                latencies=True)["results"]
    verdicts: dict[str, Health] = {}
    for new in fresh:
        name = new["device"]
        if not new.get("ok"):
            verdicts[name] = Health(name, False, f"health bench failed: {new.get('error')}")
            continue
        p50 = (new.get("latency_ms") or {}).get("p50")
        old = previous_result(settings, name, bundle_name, new.get("precision"),
                              new.get("threads"), run_id)
        if old is None:
            verdicts[name] = Health(name, True, "no previous valid p50 to compare with",
                                    p50_ms=p50)
            continue
        (row,) = compare_runs([old], [new]) or [None]
        old_p50 = (old.get("latency_ms") or {}).get("p50")
        if row is None or row.get("excluded"):
            why = (row or {}).get("excluded") or "not comparable"
            verdicts[name] = Health(name, True, f"not judged: {why}", p50_ms=p50,
                                    previous_p50_ms=old_p50, previous_run_id=old["run_id"])
            continue
        slower = bool(gate([row], max_regression))
        label = old["bundle"]["name"] + "@" + str(old["bundle"]["version"])
        note = (f"p50 {row['ratio']:.2f}x that of {label} (run {old['run_id']}), "
                f"95% CI {row['ci_low']:.2f}-{row['ci_high']:.2f}, p {row['p_value']:.2g}: "
                + (f"slower by more than {max_regression * 100:g}%" if slower
                   else row["verdict"]))
        verdicts[name] = Health(name, not slower, note, row["ratio"], p50, old_p50,
                                old["run_id"])
    return verdicts


def health_bench(settings: Settings, bundle: Bundle, devices: Sequence[Device], targets: str,
                 forks: int, timeout: float | None, *, job_id: int | None,
                 created_by: str | None, cancelled: Callable[[], bool] | None = None,
                 ) -> tuple[int | None, dict[str, Health]]:
    """Benchmark ``bundle`` on ``devices`` (just pushed there) and judge each; returns the
    health run's id and the verdicts by device."""
    if not devices:
        return None, {}
    done, outcomes = runs.bench(settings, [bundle], devices, HEALTH_PARAMS, targets, forks,
                                timeout, created_by=created_by, job_id=job_id,
                                cancelled=cancelled)
    run_id = done[0].id if done else None
    verdicts = judge(settings, run_id, bundle.name) if run_id is not None else {}
    for o in outcomes:  # a device whose session failed before any result
        if o.device not in verdicts:
            verdicts[o.device] = Health(o.device, o.ok, o.error or "no health result")
    return run_id, verdicts
