"""Server time of the dashboard pages on a large fleet DB, measured in-process.

    python bench/dashboard.py [--scale N] [--requests 30] [--warmup 3] [--profile PAGE]
                              [--keep DIR] [--pages trends,trends-new,...]

Seeds a fresh home (the DB made by the migrations, as on any start) with a fleet's worth of
history, written with bulk core INSERTs so seeding takes seconds:

- 50 devices with facts (Pi model, cores, onnxruntime, sensors with temperature and throttle
  flags), 100 telemetry snapshots each (5,000 rows);
- 200 runs of 4 bundles: 40 "full" runs (50 devices x threads 1/2/4 = 150 results each) and
  160 smaller ones (25 devices x 1 thread), 10,000 results in all, each with its aggregate
  columns filled, 100 raw latencies (``runs.pack_floats``: 1,000,000 samples) and ~40
  telemetry sampler rows (40 per result); ~10% are invalid (throttled) and ~1% failed. Two of
  the full runs were measured interleaved in 4 rounds (``round_sizes``, a speed per round).

``--scale N`` makes the history N times as long (N x 200 runs, N x 10,000 results: ``--scale 10``
is 10,000,000 latency samples), as a fleet's DB grows: the pages show the newest runs, so what
must not grow with it is their time. Rows go in per chunk of runs, so memory stays flat.

Then times requests through ``fastapi.testclient.TestClient`` against ``create_app(settings,
run_jobs=False)`` (no tokens: every request is the local admin): the Fleet page ``/``, a Run
page of a full run (150 results), Compare of two full runs, the API equivalents
(``/api/devices``, ``/api/runs/{id}``, ``/api/compare``), and Compare of the two interleaved runs
(``compare-4r``: the round-level statistics). Each is requested ``--warmup`` times
untimed, then ``--requests`` times; printed: p50/p95/max wall ms, whether p95 < 150 ms (the
goal), the median CPU ms of the process per request (steadier than wall time when other work
shares the machine), SQL statements per request (an engine event listener: an N+1 pattern shows
as a count that grows with the rows) and the response size.

``--profile PAGE`` (fleet, run, compare, api-devices, api-run, api-compare, compare-4r) prints
the top of a cProfile of that page's requests instead of the table. Numbers are times of one
process on this machine: compare them between commits, not between machines. The app is used as
a server uses it (``with TestClient(...)``: its startup and shutdown run).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

warnings.filterwarnings("ignore", message="Using `httpx` with")  # starlette's, not ours
from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import event, func, insert, select  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from orchestrator.core.config import Settings  # noqa: E402
from orchestrator.core.db import get_engine  # noqa: E402
from orchestrator.core.models import Device, Result, Run, TelemetrySnapshot  # noqa: E402
from orchestrator.measure.runs import pack_floats  # noqa: E402
from web.app import create_app  # noqa: E402

GOAL_MS = 150.0
DEVICES = 50
SNAPSHOTS_PER_DEVICE = 100
FULL_RUNS = 40  # 50 devices x 3 thread counts
SMALL_RUNS = 160  # 25 devices x 1 thread
SMALL_DEVICES = 25
SAMPLES_PER_RESULT = 100
SAMPLER_ROWS = 40  # ~10 s of a 4 Hz sampler
INVALID_SHARE = 0.10
FAILED_SHARE = 0.01
ROUNDS = 4  # two full runs measured as an interleaved A/B (``bench --rounds 4``)
INTERLEAVED = (15, 10)  # counted back from the end: a first-crack@2 / roast-level@1 pair
CHUNK_RUNS = 200  # runs whose results are generated and inserted at once
BUNDLES = [("first-crack", "1", 3.1), ("first-crack", "2", 2.6), ("roast-level", "1", 7.9),
           ("roast-level", "2-int8", 4.4)]
THREADS = (1, 2, 4)
PI_MODELS = ["Raspberry Pi 5 Model B Rev 1.0", "Raspberry Pi 4 Model B Rev 1.5"]


def _facts(rng: np.random.Generator, index: int, now: datetime) -> dict[str, Any]:
    hot = index % 10 == 0
    temp = float(rng.uniform(81, 85) if hot else rng.uniform(45, 70))
    now_words = ["soft_temp_limit"] if hot else []
    since = now_words + (["under_voltage"] if index % 17 == 0 else [])
    return {
        "pi_model": PI_MODELS[index % 2], "arch": "aarch64", "cores": 4,
        "ram_mb": 8192 if index % 2 == 0 else 4096, "os": "Debian GNU/Linux 12 (bookworm)",
        "kernel": "6.6.51+rpt-rpi-2712", "python": {"version": "3.11.2"},
        "onnxruntime": {"version": "1.20.1"}, "numpy": "1.26.4",
        "disk_free_bytes": int(rng.integers(2, 50)) * 10**9, "agent_version": "0.4.0",
        "sensors": {"temp_c": round(temp, 1), "throttled_hex": "0x80008" if hot else "0x0",
                    "throttle_flags": {"now": now_words, "since_boot": since},
                    "freq_mhz": 1500.0 if hot else 2400.0},
        "taken_at": now.isoformat(),
    }


def seed(engine: Engine, seed_value: int = 0, scale: int = 1) -> dict[str, Any]:
    """Bulk-insert the fleet (``scale`` x 200 runs); returns the ids the timings use."""
    rng = np.random.default_rng(seed_value)
    now = datetime.now(UTC)
    names = [f"pi{5 if i % 2 == 0 else 4}-{i:03d}" for i in range(DEVICES)]
    devices = [{
        "name": name, "address": f"10.0.{i // 200}.{i % 200 + 10}", "port": 22,
        "connection": "ssh", "groups": ["roastery" if i < 25 else "lab", f"rack{i % 5}"],
        "labels": {"cooler": "none" if i % 10 == 0 else "active", "site": "lisbon"},
        "simulated": False, "agent_version": "0.4.0",
        "active_bundle": "first-crack@2", "active_digest": "b" * 64,
        "last_seen": now - timedelta(seconds=int(rng.integers(10, 600))),
        "user": "pi", "key_file": None, "root": "~/.edgefleet", "python": "python3",
        "agent_python": None, "env": {}, "facts": _facts(rng, i, now),
        "source": f"inventory.yml:{i + 3}", "created_at": now, "updated_at": now,
    } for i, name in enumerate(names)]
    snapshots = [{
        "device_name": name, "taken_at": now - timedelta(minutes=SNAPSHOTS_PER_DEVICE - k),
        "temp_c": float(55 + 10 * np.sin(k / 9) + rng.normal(0, 1)),
        "freq_mhz": 2400.0, "throttled_bits": 0, "throttle_flags": {"now": [], "since_boot": []},
        "load_1m": float(rng.uniform(0, 2)), "mem_available_mb": 3000.0,
        "disk_free_bytes": 20 * 10**9,
    } for name in names for k in range(SNAPSHOTS_PER_DEVICE)]

    runs, layouts = [], []
    total = (FULL_RUNS + SMALL_RUNS) * scale
    interleaved = {total - back for back in INTERLEAVED}
    for index in range(total):
        full = index % 5 == 0  # 40 full runs spread among each 200
        rounds = ROUNDS if index in interleaved else 1
        bundle = BUNDLES[index % len(BUNDLES)]
        threads = list(THREADS) if full else [1]
        runs.append({
            "id": index + 1, "kind": "bench", "bundle_name": bundle[0],
            "bundle_version": bundle[1], "bundle_digest": f"{index % len(BUNDLES):064x}",
            "targets": "all" if full else "roastery", "created_by": "bench",
            "params": {"threads": threads, "warmup": 5, "runs": SAMPLES_PER_RESULT,
                       "rounds": rounds},
            "state": "succeeded", "created_at": now - timedelta(hours=total - index),
            "finished_at": now - timedelta(hours=total - index, minutes=-5),
        })
        layouts.append((index + 1, bundle[2], names if full else names[:SMALL_DEVICES],
                        threads, rounds))

    with engine.begin() as conn:
        conn.execute(insert(Device), devices)
        conn.execute(insert(TelemetrySnapshot), snapshots)
        conn.execute(insert(Run), runs)
    count = 0
    for start in range(0, len(layouts), CHUNK_RUNS):
        results = []
        for run_id, base_ms, run_devices, threads, rounds in layouts[start:start + CHUNK_RUNS]:
            for d_index, name in enumerate(run_devices):
                speed = 1.0 + 0.05 * (d_index % 7)
                for t in threads:
                    results.append(_result(rng, run_id, name, t, base_ms * speed / t ** 0.6,
                                           now, rounds))
        with engine.begin() as conn:
            conn.execute(insert(Result), results)
        count += len(results)
    full_ids = [r["id"] for r in runs if r["targets"] == "all"]
    with engine.connect() as conn:  # a result of the run page's run: its chart data's URL
        result_id = conn.execute(select(func.min(Result.id)).where(
            Result.run_id == full_ids[-1], Result.ok)).scalar_one()
    return {"devices": len(devices), "snapshots": len(snapshots), "runs": len(runs),
            "results": count, "samples": count * SAMPLES_PER_RESULT,
            "run": full_ids[-1], "result": result_id, "compare": (full_ids[-5], full_ids[-1]),
            "rounds": tuple(sorted(i + 1 for i in interleaved))}


def _result(rng: np.random.Generator, run_id: int, device: str, threads: int,
            median_ms: float, now: datetime, rounds: int = 1) -> dict[str, Any]:
    roll = rng.random()
    row: dict[str, Any] = {
        "run_id": run_id, "device_name": device, "threads": threads, "simulated": False,
        "precision": "fp32", "model_size_mb": 12.5, "throttle_flags": {}, "flags": [],
        "reasons": [], "detail": {"inputs": {"x": [1, 3, 224, 224]}, "warmup": 5,
                                  "wall_s": 1.2, "interval_s": 0.25,
                                  "round_sizes": None if rounds == 1 else
                                  [SAMPLES_PER_RESULT // rounds] * rounds},
        "created_at": now, "error": None, "ok": True,
    }
    if roll < FAILED_SHARE:  # every row names every column: one executemany for all
        empty = {c.name: None for c in Result.__table__.columns if c.name != "id"}
        return empty | row | {"ok": False, "error": "agent timed out after 300 s"}
    lat = median_ms * rng.lognormal(0.0, 0.08, SAMPLES_PER_RESULT)
    lat[rng.random(SAMPLES_PER_RESULT) < 0.02] *= 3  # a GC pause now and then
    if rounds > 1:  # each round is a process of its own, with its own speed
        lat *= np.repeat(rng.lognormal(0.0, 0.03, rounds), SAMPLES_PER_RESULT // rounds)
    invalid = roll < FAILED_SHARE + INVALID_SHARE
    temps = rng.uniform(78, 84, SAMPLER_ROWS) if invalid else rng.uniform(50, 65, SAMPLER_ROWS)
    bits = 0x8 if invalid else 0
    samples = [[round(k * 0.25, 3), round(float(temps[k]), 1), 1500.0 if invalid else 2400.0,
                bits] for k in range(SAMPLER_ROWS)]
    p = np.percentile(lat, [50, 90, 95, 99])
    if "cpu_p50_ms" in Result.__table__.c:  # a checkout whose agent measures CPU time too
        row = row | {"cpu_p50_ms": float(p[0] * 0.97)}
    return row | {
        "n": SAMPLES_PER_RESULT, "mean_ms": float(lat.mean()), "std_ms": float(lat.std(ddof=1)),
        "min_ms": float(lat.min()), "max_ms": float(lat.max()), "p50_ms": float(p[0]),
        "p90_ms": float(p[1]), "p95_ms": float(p[2]), "p99_ms": float(p[3]),
        "load_ms": float(rng.uniform(80, 200)), "first_inference_ms": float(median_ms * 4),
        "peak_rss_mb": float(rng.uniform(90, 140)), "steady_rss_mb": 88.0,
        "telemetry_status": "throttled" if invalid else "clean",
        "temp_c_min": float(temps.min()), "temp_c_max": float(temps.max()),
        "freq_mhz_min": 1500.0 if invalid else 2400.0, "freq_mhz_max": 2400.0,
        "throttled_bits": bits,
        "throttle_flags": {"now": ["soft_temp_limit"] if invalid else [], "new_since_start":
                           ["soft_temp_limit"] if invalid else []},
        "valid": not invalid, "flags": ["soft_temp_limit"] if invalid else [],
        "reasons": ["throttled during the run (soft_temp_limit)"] if invalid else [],
        "latencies": pack_floats(lat),
        "telemetry_samples": zlib.compress(json.dumps(samples).encode()),
    }


class QueryCounter:
    """Counts the SQL statements the engine executes (all sessions, this process)."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        event.listen(engine, "before_cursor_execute", self._hit)

    def _hit(self, *_: Any) -> None:
        self.count += 1


def pages(ids: dict[str, Any]) -> dict[str, str]:
    a, b = ids["compare"]
    return {"fleet": "/", "run": f"/runs/{ids['run']}", "compare": f"/runs/compare?a={a}&b={b}",
            "api-devices": "/api/devices", "api-run": f"/api/runs/{ids['run']}",
            "api-compare": f"/api/compare?a={a}&b={b}",
            "compare-4r": "/runs/compare?a={}&b={}".format(*ids["rounds"]),
            "run-charts": f"/runs/{ids['run']}/results/{ids['result']}/charts",
            "runs": "/runs", "trends": "/trends", "trends-new": "/trends",
            "trends-1000-new": "/trends?runs=1000",
            "trend-chart": "/trends/chart?of=first-crack&device=pi5-000",
            "versions": "/runs/compare?bundle=first-crack",
            "device": "/devices/pi5-000"}


PAGES = ["fleet", "run", "compare", "api-devices", "api-run", "api-compare", "compare-4r",
         "run-charts", "runs", "trends", "trends-new", "trends-1000-new", "trend-chart",
         "versions", "device"]


def forget_answers() -> None:
    """What a newly stored result does to the Trends page's cached answer
    (``regressions._answers``, keyed by the results' max id): it is recomputed, while the
    change points of every series the result did not touch stay cached. A no-op in a checkout
    without that cache."""
    from orchestrator.measure import regressions

    answers = getattr(regressions, "_answers", None)
    if answers is not None:
        answers.clear()


BEFORE_EACH: dict[str, Callable[[], None]] = {"trends-new": forget_answers,
                                               "trends-1000-new": forget_answers}


def measure(client: TestClient, counter: QueryCounter, url: str, warmup: int,
            requests: int, before_each: Callable[[], None] = lambda: None,
            ) -> dict[str, Any] | None:
    """The timings of ``url``, or None if this checkout has no such page (404): the script
    runs against older commits too, for before/after figures. ``before_each`` runs before
    every request, untimed."""
    if client.get(url).status_code == 404:
        return None
    for _ in range(warmup):
        before_each()
        response = client.get(url)
        response.raise_for_status()
    times, cpu, queries = [], [], []
    size = 0
    for _ in range(requests):
        before_each()
        before = counter.count
        started, cpu_started = time.perf_counter(), time.process_time()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - cpu_started) * 1000)
        queries.append(counter.count - before)
        response.raise_for_status()
        size = len(response.content)
    times.sort()
    return {"p50": statistics.median(times), "p95": float(np.percentile(times, 95)),
            "max": times[-1], "cpu": statistics.median(cpu), "queries": max(queries),
            "bytes": size}


def profile(client: TestClient, url: str, requests: int, top: int = 35) -> None:
    """cProfile of the route functions: FastAPI runs them in a worker thread, which a profiler
    enabled in this thread would not see, so each call is wrapped where FastAPI dispatches it."""
    import fastapi.routing

    profiler = cProfile.Profile()
    original = fastapi.routing.run_in_threadpool

    async def profiled(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def call(*a: Any, **k: Any) -> Any:
            profiler.enable()
            try:
                return func(*a, **k)
            finally:
                profiler.disable()
        return await original(call, *args, **kwargs)

    client.get(url).raise_for_status()
    fastapi.routing.run_in_threadpool = profiled  # type: ignore[assignment]
    try:
        for _ in range(requests):
            client.get(url).raise_for_status()
    finally:
        fastapi.routing.run_in_threadpool = original
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile", choices=PAGES)
    parser.add_argument("--pages", help="comma-separated page names to time (default: all)")
    parser.add_argument("--keep", type=Path, help="seed into this home and keep it; a home "
                        "kept before is timed again as it is (another checkout, no re-seeding)")
    parser.add_argument("--scale", type=int, default=1,
                        help="history N times as long (10: 10M latency samples)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="efdash") as tmp:
        home = args.keep or Path(tmp) / "home"
        settings = Settings(home=home, database_url=None)
        engine = get_engine(settings)
        started = time.perf_counter()
        saved = home / "bench-ids.json"  # a kept home is timed again without re-seeding
        if args.keep and saved.exists():
            ids = json.loads(saved.read_text())
        else:
            ids = seed(engine, scale=args.scale)
            if args.keep:
                saved.write_text(json.dumps(ids))
        seeded_s = time.perf_counter() - started
        db_mb = (home / "edgefleet.db").stat().st_size / 2**20 \
            if (home / "edgefleet.db").exists() else float("nan")
        print(f"seeded {ids['devices']} devices, {ids['snapshots']} snapshots, {ids['runs']} "
              f"runs, {ids['results']} results, {ids['samples']:,} latency samples in "
              f"{seeded_s:.1f} s (DB {db_mb:.0f} MB + WAL)")
        counter = QueryCounter(engine)
        urls = pages(ids)
        # Host localhost: without an admin token only loopback names are served (local_mode).
        with TestClient(create_app(settings, run_jobs=False),
                        base_url="http://localhost") as client:
            if args.profile:
                profile(client, urls[args.profile], args.requests)
                return
            run: Callable[[str, str], dict[str, Any] | None] = \
                lambda name, url: measure(  # noqa: E731
                    client, counter, url, args.warmup, args.requests,
                    BEFORE_EACH.get(name, lambda: None))
            print(f"\n{args.requests} requests each after {args.warmup} warmups; goal: p95 < "
                  f"{GOAL_MS:.0f} ms\n")
            print(f"{'page':<12} {'url':<28} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} "
                  f"{'CPU ms':>8} {'SQL':>5} {'kB':>7}  goal")
            chosen = args.pages.split(",") if args.pages else list(urls)
            for name, url in urls.items():
                if name not in chosen:
                    continue
                m = run(name, url)
                if m is None:
                    print(f"{name:<12} {url:<28} (no such page in this checkout)")
                    continue
                print(f"{name:<12} {url:<28} {m['p50']:8.1f} {m['p95']:8.1f} {m['max']:8.1f} "
                      f"{m['cpu']:8.1f} {m['queries']:5d} {m['bytes'] / 1024:7.0f}  "
                      f"{'ok' if m['p95'] < GOAL_MS else 'MISSED'}")


if __name__ == "__main__":
    main()
