"""Benchmark runs: fan out to devices (bounded, one lease per device), run the agent's ``bench``
in one session per device, store one Result per device x thread count.

A device that fails or goes silent gets a failed Result with the reason; the others complete.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.orm import defer, object_session
from sqlmodel import Session, col, select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import AgentError, EdgeFleetError, NotFoundError
from orchestrator.core.listings import run_row_public
from orchestrator.core.models import Bundle, Device, Result, Run
from orchestrator.fleet.agentclient import AgentSession
from orchestrator.fleet.fanout import Outcome, fan_out
from orchestrator.fleet.leases import leased
from orchestrator.inventory.devices import DeviceReport, record_device_report, to_target
from orchestrator.measure.entries import checked_common, checked_entries
from orchestrator.measure.rounds import BENCH_ROUNDS, merge_rounds
from orchestrator.measure.run_lifecycle import (
    close_runs,
    failure_row,
    keeping,
    missing_threads,
    open_runs,
    session_failure,
    state_reason,
    unexpected_failure,
)
from orchestrator.transport import Target, connect

EventHandler = Callable[[str, dict[str, Any]], None]

@dataclass
class BenchParams:
    threads: list[int] = field(default_factory=lambda: [1, 2, 4])
    warmup: int = 5
    runs: int = 30
    min_seconds: float = 0.0
    shapes: dict[str, list[int]] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    graph_optimization: str = "all"

    def payload(self, digest: str, recorded_constants: dict[str, Any] | None = None,
                ) -> dict[str, Any]:
        """The agent's bench request; ``recorded_constants`` (the bundle's ``input_constants``,
        ``bundle build --input``) are defaults under this run's own ``constants``. Merged here
        as well as by the agent, so an agent older than that manifest key uses them too."""
        out = {"digest": digest, **asdict(self)}
        if recorded_constants:
            out["constants"] = {**recorded_constants, **self.constants}
        return out


def pack_floats(values: Sequence[float] | None) -> bytes | None:
    if values is None:
        return None
    import numpy as np  # here, not at the top: `runs list` and `push` start faster without it

    return zlib.compress(np.asarray(values, dtype="<f8").tobytes())


def unpack_floats(blob: bytes | None) -> list[float] | None:
    if blob is None:
        return None
    import numpy as np  # start-up time, as in pack_floats

    return np.frombuffer(zlib.decompress(blob), dtype="<f8").tolist()


def result_row(run: Run, device: Device | Target, simulated: bool, precision: str | None,
               entry: dict[str, Any], common: dict[str, Any]) -> Result:
    """The Result row of one agent result entry (one thread count); bench and eval runs both
    store their results through it, so the columns mean the same in both."""
    stats = entry.get("latency_ms") or {}
    telemetry = entry.get("telemetry") or {}
    samples = telemetry.get("samples")
    return Result(
        run_id=run.id, device_name=device.name, threads=entry.get("threads"),
        ok=bool(entry.get("ok")), error=entry.get("error"), simulated=simulated,
        precision=precision,
        n=stats.get("n"), mean_ms=stats.get("mean"), std_ms=stats.get("std"),
        min_ms=stats.get("min"), max_ms=stats.get("max"), p50_ms=stats.get("p50"),
        p90_ms=stats.get("p90"), p95_ms=stats.get("p95"), p99_ms=stats.get("p99"),
        cpu_p50_ms=(entry.get("cpu_ms") or {}).get("p50"),
        load_ms=entry.get("load_ms"), first_inference_ms=entry.get("first_inference_ms"),
        peak_rss_mb=entry.get("peak_rss_mb"), steady_rss_mb=entry.get("steady_rss_mb"),
        model_size_mb=common.get("model_size_mb"),
        telemetry_status=telemetry.get("status"),
        temp_c_min=telemetry.get("temp_c_min"), temp_c_max=telemetry.get("temp_c_max"),
        freq_mhz_min=telemetry.get("freq_mhz_min"), freq_mhz_max=telemetry.get("freq_mhz_max"),
        throttled_bits=telemetry.get("throttled_bits"),
        throttle_flags=telemetry.get("throttle_flags") or {},
        valid=entry.get("valid") if entry.get("ok") else None,
        flags=list(entry.get("flags") or []), reasons=list(entry.get("reasons") or []),
        detail={k: common.get(k) for k in ("inputs", "providers", "onnxruntime")}
        | {"warmup": entry.get("warmup"), "wall_s": entry.get("wall_s"),
           "interval_s": telemetry.get("interval_s"), "round_sizes": entry.get("round_sizes"),
           "energy": entry.get("energy") or telemetry.get("energy")},
        latencies=pack_floats(entry.get("latencies_ms")),
        telemetry_samples=zlib.compress(json.dumps(samples).encode()) if samples else None,
    )


def round_params(params: BenchParams, rounds: int) -> list[BenchParams]:
    """Each round's params: the timed runs split as evenly as they go (30 over 3: 10 each;
    at least 1 a round), ``min_seconds`` in equal parts; warm-up runs are per round, as each
    round is a fresh process that needs them."""
    return [dataclasses.replace(params, runs=max(1, params.runs // rounds
                                                 + (index < params.runs % rounds)),
                                min_seconds=params.min_seconds / rounds)
            for index in range(rounds)]


def bench(settings: Settings, bundles: Sequence[Bundle], devices: Sequence[Device],
          params: BenchParams, targets: str, forks: int = 10, timeout: float | None = None,
          on_event: EventHandler | None = None, rounds: int = BENCH_ROUNDS,
          created_by: str | None = None, *, job_id: int | None = None,
          cancelled: Callable[[], bool] | None = None) -> tuple[list[Run], list[Outcome]]:
    """Benchmark each bundle (already pushed) on every device; one Run per bundle.

    Each thread count is measured in ``rounds`` fresh processes (``BENCH_ROUNDS``, why: see
    there), one agent ``bench`` call each, and merged into one Result (``merge_rounds``).
    With several bundles each device alternates them round by round
    (A B B A A B ...: ``params.runs`` split over the rounds), so slow drift of the machine —
    heat, other load — and order effects fall on both sides of a comparison instead of on
    whichever ran second.
    """
    author = created_by or getpass.getuser()
    with session_scope(settings) as session:
        runs = [Run(kind="bench", bundle_name=b.name, bundle_version=b.version,
                    bundle_digest=b.digest, targets=targets,
                    params=asdict(params) | {"rounds": rounds}, created_by=author)
                for b in bundles]
        open_runs(session, runs, job_id)
    simulated = {d.name: d.simulated for d in devices}
    recorded_constants = [json.loads(b.manifest_json).get("input_constants") or {}
                          for b in bundles]
    per_round = round_params(params, rounds)

    def relay(device: str) -> Callable[[dict[str, Any]], None] | None:
        return (lambda event: on_event(device, event)) if on_event else None

    def step(target: Target) -> Outcome:
        started = time.monotonic()
        rows: list[Result] = []
        errors: list[str] = []
        failure: str | None = None
        # Per bundle: (entry, common) of every thread count finished, as the agent reports it
        # (event "measured"), so a failure later in the session loses none of them.
        measured: list[list[tuple[dict[str, Any], dict[str, Any]]]] = [[] for _ in bundles]
        # Per bundle: the thread counts whose row is stored already. A thread count is stored
        # as soon as all its rounds are measured, not when the device's session ends: a
        # control plane killed later (SIGKILL, a crash) then still leaves it in the DB.
        stored: list[set[Any]] = [set() for _ in bundles]
        report = DeviceReport()  # what the device says it runs (and reverted): the DB follows

        def by_threads(index: int) -> dict[Any, list[tuple[dict[str, Any], dict[str, Any]]]]:
            grouped: dict[Any, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
            for entry, common in measured[index]:
                grouped.setdefault(entry.get("threads"), []).append((entry, common))
            return grouped

        def row_of(index: int, done: list[tuple[dict[str, Any], dict[str, Any]]]) -> Result:
            return result_row(runs[index], target, simulated[target.name],
                              bundles[index].precision, merge_rounds([e for e, _ in done]),
                              done[0][1])

        def store_complete(index: int) -> None:
            complete = [(threads, done) for threads, done in by_threads(index).items()
                        if len(done) == rounds and threads not in stored[index]]
            if not complete:
                return
            with session_scope(settings) as session:
                session.add_all([row_of(index, done) for _, done in complete])
            stored[index].update(threads for threads, _ in complete)

        def on_event(index: int, round_index: int) -> Callable[[dict[str, Any]], None]:
            keep = keeping(measured[index], relay(target.name), params.threads)

            def handle(event: dict[str, Any]) -> None:
                if rounds > 1 and event.get("event") == "bench":  # progress says which round
                    event = {**event, "round": round_index + 1, "rounds": rounds}
                keep(event)
                if event.get("event") == "measured":
                    store_complete(index)

            return handle

        try:
            with leased(settings, target.name, "bench"), \
                    connect(target, settings, timeout) as conn, \
                    AgentSession(conn, timeout=timeout) as agent:
                for round_index in range(rounds):
                    # A B, then B A (ABBA...): whatever the first of a pair does to the second
                    # (warm caches, a clock ramping up) falls on both sides equally.
                    order = list(range(len(bundles)))
                    if round_index % 2:
                        order.reverse()
                    for index in order:
                        mark = len(measured[index])
                        data = report.note(agent.call(
                            "bench", per_round[round_index].payload(bundles[index].digest,
                                                       recorded_constants[index]),
                            on_event=on_event(index, round_index)))
                        # The result line is authoritative (and all an older agent sends).
                        del measured[index][mark:]
                        common = checked_common(data)
                        measured[index].extend(
                            (e, common) for e in checked_entries(data, params.threads))
                        store_complete(index)
        except (AgentError, EdgeFleetError) as exc:
            if isinstance(exc, AgentError):
                report.note(exc.detail)
            missing = exc.detail.get("digest") if isinstance(exc, AgentError) else None
            failure = session_failure(target.name, exc, cancelled, next(
                (f"{b.name}@{b.version}" for b in bundles if b.digest == missing),
                "NAME@VERSION"))
            errors.append(failure)
        except Exception as exc:  # noqa: BLE001 - the finished thread counts must stay
            failure = unexpected_failure(target.name, "bench", exc)
            errors.append(failure)
        if failure is None:
            failure = next((why for why in (missing_threads(target.name, params.threads,
                                                            by_threads(index))
                                            for index in range(len(bundles))) if why), None)
            if failure is not None:
                errors.append(failure)
        for index, (run, bundle) in enumerate(zip(runs, bundles, strict=True)):
            grouped = by_threads(index)
            # After a failure, a thread count with only some of its rounds is dropped: it
            # would be an unbalanced A/B comparison.
            kept = {t: d for t, d in grouped.items() if len(d) == rounds or failure is None}
            for threads, done in kept.items():
                entry = merge_rounds([e for e, _ in done])
                if threads not in stored[index]:
                    rows.append(row_of(index, done))
                if not entry.get("ok"):
                    errors.append(f"{bundle.name}@{bundle.version} threads="
                                  f"{entry.get('threads')}: {entry.get('error')}")
            if failure is not None:
                rows.append(failure_row(run, target.name, failure, kept,
                                        simulated[target.name], bundle.precision))
        with session_scope(settings) as session:
            session.add_all(rows)
            record_device_report(session, target.name, report.data)
        outcome = Outcome(target.name, not errors, "failed" if errors else "done",
                          "; ".join(errors) or None,
                          data={"results": len(rows) + sum(len(s) for s in stored)})
        outcome.duration_s = time.monotonic() - started
        return outcome

    outcomes = fan_out([to_target(d) for d in devices], step, forks)
    return close_runs(settings, runs, outcomes, bool(cancelled and cancelled())), outcomes


# --- reading runs back -----------------------------------------------------------------------


def get_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFoundError(f"no run {run_id}; see `edgefleet runs list`")
    return run


def run_results(session: Session, run_id: int, *, latencies: bool = False,
                samples: bool = False) -> list[Result]:
    """A run's results by device and thread count. The raw blobs (``latencies``, the
    telemetry ``samples``) are loaded only when asked for: they are most of a row's bytes and
    a table of summaries draws neither. Not asked for, they are deferred with ``raiseload``,
    so reading one is an error, never a query per row."""
    query = (select(Result).where(Result.run_id == run_id)
             .order_by(col(Result.device_name), col(Result.threads)))
    skipped = [column for column, wanted in ((Result.latencies, latencies),
                                             (Result.telemetry_samples, samples)) if not wanted]
    if skipped:
        query = query.options(*(defer(column, raiseload=True) for column in skipped))
    return list(session.exec(query).all())


def result_raw(session: Session, run_id: int, result_id: int) -> dict[str, Any]:
    """One result of a run with its raw latencies and sampler rows (``result_public(raw=True)``):
    what the run page's charts draw, fetched per result so the page itself carries summaries
    only. NotFoundError if the result is not one of that run's."""
    run = get_run(session, run_id)
    result = session.get(Result, result_id)
    if result is None or result.run_id != run_id:
        raise NotFoundError(f"run {run_id} has no result {result_id}")
    return result_public(result, run, raw=True)


def list_runs(session: Session, limit: int = 50) -> list[Run]:
    return list(session.exec(select(Run).order_by(col(Run.id).desc()).limit(limit)).all())


def device_results(session: Session, name: str, limit: int = 50) -> list[dict[str, Any]]:
    """Benchmark results on one device, newest run first, in ``result_public`` shape (summaries
    only: the raw latencies are not drawn from here, so they are not loaded)."""
    pairs = session.exec(select(Result, Run).join(Run, col(Result.run_id) == col(Run.id))
                         .where(Result.device_name == name)
                         .options(defer(Result.latencies), defer(Result.telemetry_samples))
                         .order_by(col(Result.run_id).desc(), col(Result.threads))
                         .limit(limit)).all()
    return [result_public(result, run) for result, run in pairs]


KIND_NAMES = {"bench": "a benchmark", "eval": "an eval"}


def compared_runs(session: Session, a: int, b: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Runs A and B with their results and raw latencies (``run_public``), for
    ``pairing.compare_runs``: what ``runs compare``, ``/api/compare`` and the Compare page read.

    Runs of different kinds are refused (EdgeFleetError): an eval times each labelled sample's
    inference inside the evaluation, a benchmark a timed loop over one input, so "B is 1.95x
    slower" between the two says nothing about the model."""
    run_a, run_b = get_run(session, a), get_run(session, b)
    if run_a.kind != run_b.kind:
        names = [KIND_NAMES.get(r.kind, f"a {r.kind}") for r in (run_a, run_b)]
        raise EdgeFleetError(
            f"run {a} is {names[0]} run and run {b} {names[1]} run: runs of different kinds "
            "are not compared (an eval times each sample's inference inside the evaluation, "
            "a benchmark a timed loop); compare two benchmark runs, see `edgefleet runs list`")
    return tuple(run_public(r, run_results(session, r.id, latencies=True),  # type: ignore
                            latencies=True) for r in (run_a, run_b))


def result_public(result: Result, run: Run, raw: bool = False, *,
                  latencies: bool | None = None, samples: bool | None = None,
                  ) -> dict[str, Any]:
    """The JSON shape of one result (the CLI, the API and the reports use it).

    ``raw`` adds ``latencies_ms`` and ``telemetry.samples``; ``latencies``/``samples`` choose
    one of them alone (a comparison needs the latencies, not the sampler rows). Each must have
    been loaded (``run_results(..., latencies=True, samples=True)``)."""
    latencies = raw if latencies is None else latencies
    samples = raw if samples is None else samples
    out: dict[str, Any] = {
        "run_id": run.id, "device": result.device_name, "simulated": result.simulated,
        "bundle": {"name": run.bundle_name, "version": run.bundle_version,
                   "digest": run.bundle_digest},
        "precision": result.precision, "threads": result.threads, "ok": result.ok,
        "error": result.error,
        "latency_ms": None if result.n is None else {
            "n": result.n, "mean": result.mean_ms, "std": result.std_ms, "min": result.min_ms,
            "max": result.max_ms, "p50": result.p50_ms, "p90": result.p90_ms,
            "p95": result.p95_ms, "p99": result.p99_ms},
        "cpu_p50_ms": result.cpu_p50_ms,
        "load_ms": result.load_ms, "first_inference_ms": result.first_inference_ms,
        "peak_rss_mb": result.peak_rss_mb, "steady_rss_mb": result.steady_rss_mb,
        "model_size_mb": result.model_size_mb,
        "telemetry": {
            "status": result.telemetry_status, "temp_c_min": result.temp_c_min,
            "temp_c_max": result.temp_c_max, "freq_mhz_min": result.freq_mhz_min,
            "freq_mhz_max": result.freq_mhz_max, "throttled_bits": result.throttled_bits,
            "throttle_flags": result.throttle_flags},
        "valid": result.valid, "flags": result.flags, "reasons": result.reasons,
        "inputs": (result.detail or {}).get("inputs"),
        "round_sizes": (result.detail or {}).get("round_sizes"),
        "energy": (result.detail or {}).get("energy"),
    }
    if run.kind == "eval":
        from orchestrator.measure.evalmetrics import eval_public  # numpy: only for eval runs

        out["eval"] = eval_public(result)
    if latencies:
        out["latencies_ms"] = unpack_floats(result.latencies)
    if samples:
        blob = result.telemetry_samples
        out["telemetry"]["samples"] = json.loads(zlib.decompress(blob)) if blob else []
    return out


def run_public(run: Run, results: Sequence[Result] | None = None, raw: bool = False, *,
               latencies: bool | None = None, samples: bool | None = None) -> dict[str, Any]:
    # Why an interrupted run stopped: read through the session the run was loaded in (every
    # reader loads it in one), so no caller can forget to say it.
    out = run_row_public(run, state_reason(object_session(run), run))
    if results is not None:
        out["results"] = [result_public(r, run, raw, latencies=latencies, samples=samples)
                          for r in results]
        if run.kind == "eval":
            from orchestrator.measure.evalmetrics import run_agreement

            out["agreement"] = run_agreement(run, out["results"])
    return out
