"""Change-point detection (orchestrator/measure/regressions.py) against this machine's measured
noise.

    python bench/changepoints.py                     # replay the recording, report (~15 min)
    python bench/changepoints.py --no-grid           # only the chosen settings (~5 min)
    python bench/changepoints.py --quick             # 60 trials, no grid (~1 min)
    python bench/changepoints.py record [--runs 60]  # re-record the A/A fixture (~5 min)
    python bench/changepoints.py record --timed-runs 300 --fixture F  # a nightly series' setting
    python bench/changepoints.py record --rounds 1,3 --fixture F  # 1 and 3 processes, alternately
    python bench/changepoints.py --fixture F --rounds 3         # replay the 3-process runs

Recording (``record``): one small model (``--model mlp``: bench/overhead.py's 16 x MatMul+Relu
on [16x512], a few ms per inference; ``--model cnn``: the tests' audio CNN, ~0.1 ms) is built,
pushed and benchmarked ``--runs`` times in a row through the product's own path (``runs.bench``:
the real agent on a local simulated Pi with clean sensors, default warm-up and timed runs,
threads 1 and 2). Every run is the same bundle on the same device: A/A, so any change point
found in it is a false alarm. Each run's p50 per thread count (wall clock, and the CPU p50 the
agent measures too: what the detector reads), its validity and the load average are written to
``bench/changepoints_aa.json`` (committed: the replay needs no benchmark, and its
figures can be checked).

Replay (default; ``--metric cpu|wall|both``, default both in turn): series are drawn from the
recorded p50s of one thread count by a circular
block bootstrap (blocks of ``BLOCK`` consecutive runs, so the drift a shared machine shows over
a few minutes stays in the noise; an i.i.d. shuffle would hide it), and the detector is run the
way the product runs it: on every prefix of the series, as each new run arrives.

- False alarms per 100 points on pure noise: distinct change points ever reported on a noise
  series while it grows (one that shows after run 12 and is gone after run 13 still counts: a
  user saw it), over all points. Goal <= 1. The recorded series themselves, in their order,
  are reported too.
- Detection: a step of S (p50 x (1 + S) from a point on) is injected into a noise series after
  10-30 points of history; found if a change point within one run of the step, in the slower
  direction, is reported by the time 3 points after it exist (and, apart, by 10). Goal for
  S = 10%: >= 90% within 3.
- The smallest step found reliably: the smallest S in ``STEPS`` that, like every larger one, is
  found in >= 90% of trials.
- The same on the measured noise scaled toward its median (``SHRINK``: its shape, drift and
  outliers kept, a quieter machine's amplitude), to show what a quieter device would get.

The settings grid printed first is what ``regressions.DETECTOR`` was chosen from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from orchestrator.measure.regressions import DETECTOR, DetectorSettings, change_indices  # noqa: E402

FIXTURE = Path(__file__).with_name("changepoints_aa.json")
BLOCK = 5  # runs per bootstrap block
HISTORY = (10, 30)  # points of noise before an injected step (inclusive range)
WITHIN = 3  # points after a step by which it must be found
NOISE_LENGTH = 40  # points of a pure-noise series
STEPS = (0.05, 0.10, 0.20, 0.30, 0.50, 1.0, 2.0)
GRID = [DetectorSettings(max_pvalue=p, min_points=3, windows=w, min_magnitude=0.0)
        for w in ((8,), (24,), (50,), (8, 24), (8, 50)) for p in (0.001, 0.0001)] + [
    DetectorSettings(max_pvalue=0.0001, min_points=2, windows=(8, 24), min_magnitude=0.0)] + [
    DetectorSettings(max_pvalue=p, min_points=3, windows=(8, 24), min_magnitude=m)
    for p, m in ((0.001, 0.05), (0.001, 0.07), (0.0003, 0.04), (0.0003, 0.05),
                 (0.0005, 0.05), (0.01, 0.07))]
SHRINK = (0.25, 0.1, 0.05)  # the measured noise's deviations from its median, scaled


# --- recording --------------------------------------------------------------------------------


MODELS = {
    "mlp": "bench/overhead.py's make_mlp(width=512, layers=16): 16 x MatMul+Relu on [16x512]",
    "cnn": "orchestrator.demo.model.make_demo_classifier(seed=0), log_mel 1x1x98x40",
}
MLP = (512, 16)


def record(out: Path, runs: int, threads: list[int], model_kind: str,
           timed_runs: int | None = None, rounds: Sequence[int] = ()) -> None:
    """``rounds``: processes per benchmark (bench's ``--rounds``); several alternate run by run,
    so each setting's runs see the same moments of the machine (its drift) side by side."""
    import onnxruntime
    import yaml

    from orchestrator.artifacts.bundles import build_bundle
    from orchestrator.core.config import Settings
    from orchestrator.core.db import session_scope
    from orchestrator.demo.model import make_demo_classifier
    from orchestrator.demo.simulate import create_simulated_device
    from orchestrator.fleet.agents import install_agents
    from orchestrator.fleet.deploy import push
    from orchestrator.inventory.devices import all_devices, sync_inventory
    from orchestrator.inventory.reader import load_inventory
    from orchestrator.measure.rounds import BENCH_ROUNDS
    from orchestrator.measure.runs import BenchParams, bench, run_results

    params = (BenchParams(threads=threads) if timed_runs is None
              else BenchParams(threads=threads, runs=timed_runs))
    rounds = list(rounds) or [BENCH_ROUNDS]
    with tempfile.TemporaryDirectory(prefix="edgefleet-aa-") as tmp:
        base = Path(tmp)
        settings = Settings(home=base / "home", database_url=None)
        sim = create_simulated_device(base / "sim", temp_c=50.0)
        inventory = base / "inventory.yml"
        inventory.write_text(yaml.safe_dump(
            {"all": {"hosts": {"aa-pi": sim.local_host_vars(base / "root")}}}))
        with session_scope(settings) as session:
            sync_inventory(session, load_inventory(inventory))
            devices = all_devices(session)
        assert install_agents(settings, devices)[1][0].ok
        if model_kind == "cnn":
            model = make_demo_classifier(base / "model" / "model.onnx")
            shapes = {"log_mel": [1, 1, 98, 40]}
        else:
            from overhead import make_mlp  # bench/overhead.py's compute-bound model

            model = make_mlp(base / "model" / "model.onnx", MLP[0], MLP[1])
            shapes = {}
        with session_scope(settings) as session:
            bundle = build_bundle(session, settings, model.parent, "aa",
                                  input_shapes=shapes).bundle
            session.expunge(bundle)
        assert push(settings, bundle, devices)[0].ok
        rows = []
        for index in range(runs * len(rounds)):
            started = datetime.now(UTC)
            (run,), outcomes = bench(settings, [bundle], devices, params, "aa-pi",
                                     rounds=rounds[index % len(rounds)])
            assert outcomes[0].ok, outcomes[0].error
            with session_scope(settings) as session:
                results = run_results(session, run.id)  # type: ignore[arg-type]
                rows.append({
                    "run": index + 1, "rounds": rounds[index % len(rounds)],
                    "at": started.isoformat(timespec="seconds"),
                    "load_1m": round(os.getloadavg()[0], 2),
                    "p50_ms": {str(r.threads): r.p50_ms for r in results},
                    "cpu_p50_ms": {str(r.threads): r.cpu_p50_ms for r in results},
                    "valid": {str(r.threads): r.valid for r in results}})
            print(f"run {index + 1}/{runs * len(rounds)}: "
                  + ", ".join(f"{t} thr {v:.4f} ms (CPU {rows[-1]['cpu_p50_ms'][t]:.4f})"
                              for t, v in rows[-1]["p50_ms"].items()), flush=True)
    out.write_text(json.dumps({
        "about": "A/A benchmark runs of one model (bench/changepoints.py record): the same "
                 "bundle on the same simulated Pi, one run after another",
        "model": MODELS[model_kind],
        "params": {"threads": threads, "warmup": params.warmup, "runs": params.runs,
                   "rounds": rounds},
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "onnxruntime": onnxruntime.__version__, "platform": platform.platform()},
        "runs": rows}, indent=1) + "\n")
    print(f"wrote {out}")


# --- replay -----------------------------------------------------------------------------------


def shrunk(noise: dict[str, np.ndarray], factor: float) -> dict[str, np.ndarray]:
    """The measured noise with every point's deviation from its series' median scaled by
    ``factor``: the same shape (bimodality, drift, outliers), a quieter machine's amplitude."""
    return {t: np.median(v) * (1 + factor * (v / np.median(v) - 1)) for t, v in noise.items()}


METRICS = {"cpu": "cpu_p50_ms", "wall": "p50_ms"}


def load_noise(path: Path, metric: str = "cpu", rounds: int | None = None,
               ) -> dict[str, np.ndarray]:
    """The recorded valid p50s per thread count, in run order: of each run's CPU time per timed
    run (``cpu``: what the detector reads when a series has it) or of its wall-clock time.
    ``rounds``: only the runs measured in that many processes (a recording alternating
    several); None: the recording's first setting (older recordings: 1)."""
    data = json.loads(path.read_text())
    settings = data["params"].get("rounds", 1)
    settings = settings if isinstance(settings, list) else [settings]
    wanted = settings[0] if rounds is None else rounds
    out: dict[str, list[float]] = {}
    for row in data["runs"]:
        if row.get("rounds", settings[0]) != wanted:
            continue
        for threads, p50 in (row.get(METRICS[metric]) or {}).items():
            if row["valid"].get(threads) and p50:
                out.setdefault(threads, []).append(p50)
    return {t: np.asarray(v) for t, v in out.items()}


def block_bootstrap(noise: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """``length`` points of circular blocks of ``BLOCK`` consecutive recorded points."""
    starts = rng.integers(0, len(noise), size=-(-length // BLOCK))
    picks = (starts[:, None] + np.arange(BLOCK)[None, :]).ravel()[:length] % len(noise)
    return noise[picks]


def streaming_alarms(series: Sequence[float], settings: DetectorSettings) -> int:
    """Distinct change points ever reported while the series grows point by point (indices
    within one run of an earlier report count once)."""
    seen: list[int] = []
    for end in range(2 * settings.min_points, len(series) + 1):
        for index, _ in change_indices(series[:end], settings):
            if all(abs(index - s) > 1 for s in seen):
                seen.append(index)
    return len(seen)


def found_within(series: Sequence[float], step_at: int, within: int,
                 settings: DetectorSettings) -> bool:
    """Whether a slower change point within one run of ``step_at`` is reported on some prefix
    that ends at most ``within`` points after the step."""
    for end in range(step_at + 1, min(len(series), step_at + within) + 1):
        values = series[:end]
        for index, _ in change_indices(values, settings):
            if abs(index - step_at) <= 1 and (np.median(values[index:])
                                             > np.median(values[max(0, index - 10):index])):
                return True
    return False


@dataclass
class Figures:
    settings: DetectorSettings
    alarms_per_100: float
    recorded_alarms: int
    recorded_points: int
    detection: dict[float, float]  # step -> share found within WITHIN points
    detection_late: dict[float, float]  # step -> share found within 10 points


def measure(noise: dict[str, np.ndarray], settings: DetectorSettings, trials: int,
            steps: Sequence[float], seed: int = 0) -> Figures:
    rng = np.random.default_rng(seed)
    keys = sorted(noise)
    alarms = points = 0
    for n in range(trials):
        series = list(block_bootstrap(noise[keys[n % len(keys)]], NOISE_LENGTH, rng))
        alarms += streaming_alarms(series, settings)
        points += len(series)
    recorded = sum(streaming_alarms(list(v), settings) for v in noise.values())
    detection, late = {}, {}
    for step in steps:
        hits = late_hits = 0
        for n in range(trials):
            history = int(rng.integers(HISTORY[0], HISTORY[1] + 1))
            series = block_bootstrap(noise[keys[n % len(keys)]], history + 10, rng)
            series[history:] *= 1 + step
            values = list(series)
            hits += found_within(values, history, WITHIN, settings)
            late_hits += found_within(values, history, 10, settings)
        detection[step] = hits / trials
        late[step] = late_hits / trials
    return Figures(settings, 100 * alarms / points, recorded,
                   sum(len(v) for v in noise.values()), detection, late)


def up_and_down(noise: dict[str, np.ndarray], settings: DetectorSettings, trials: int,
                step: float, seed: int = 3) -> float:
    """Share of trials where a regression of ``step`` after 20 runs, fixed 5 runs later, is
    found at both ends (each within one run) on the whole series of 35 runs."""
    rng = np.random.default_rng(seed)
    keys = sorted(noise)
    both = 0
    for n in range(trials):
        series = block_bootstrap(noise[keys[n % len(keys)]], 35, rng)
        series[20:25] *= 1 + step
        found = [i for i, _ in change_indices(list(series), settings)]
        both += any(abs(i - 20) <= 1 for i in found) and any(abs(i - 25) <= 1 for i in found)
    return both / trials


def noise_summary(noise: dict[str, np.ndarray]) -> str:
    parts = []
    for threads, values in sorted(noise.items()):
        rel = values / np.median(values)
        steps = np.abs(np.diff(values)) / values[:-1]
        parts.append(f"{threads} thread(s): {len(values)} runs, median p50 "
                     f"{np.median(values):.4f} ms, spread (p5-p95) {np.percentile(rel, 5):.3f}-"
                     f"{np.percentile(rel, 95):.3f} x median, run-to-run change median "
                     f"{100 * np.median(steps):.1f}%, max {100 * steps.max():.0f}%, "
                     f"{int((steps > 0.10).sum())} changes > 10%")
    return "\n".join(parts)


def smallest_reliable(detection: dict[float, float]) -> float | None:
    """The smallest step that, like every larger one, is found in >= 90% of trials."""
    for step in sorted(detection):
        if all(detection[s] >= 0.9 for s in detection if s >= step):
            return step
    return None


def report(noise: dict[str, np.ndarray], trials: int, grid: bool, grid_trials: int) -> None:
    print(noise_summary(noise))
    if grid:
        print(f"\nsettings grid ({grid_trials} noise series of {NOISE_LENGTH} points, "
              f"{grid_trials} trials per figure; goal: <= 1 false alarm per 100 points, "
              f"10% found within {WITHIN} points in >= 90%). Columns: false alarms per 100 "
              f"points; a +100% step found within {WITHIN} | within 10 points; on the noise "
              f"scaled x0.1, a +30% step within {WITHIN} | 10 points; and a +30% regression "
              "fixed 5 runs later: both ends found")
        print(f"{'windows':>8} {'max_p':>7} {'min_shift':>9} {'min_points':>10} {'alarms':>7} "
              f"{'+100%':>10} {'x0.1 +30%':>10} {'up-down':>8}")
        for settings in GRID:
            fig = measure(noise, settings, grid_trials, (1.0,))
            quiet = measure(shrunk(noise, 0.1), settings, grid_trials, (0.3,))
            both = up_and_down(shrunk(noise, 0.1), settings, grid_trials, 0.3)
            print(f"{'+'.join(map(str, settings.windows)):>8} {settings.max_pvalue:>7g} "
                  f"{100 * settings.min_magnitude:>8g}% "
                  f"{settings.min_points:>10} {fig.alarms_per_100:>7.2f} "
                  f"{fig.detection[1.0]:>4.0%} {fig.detection_late[1.0]:>4.0%} "
                  f"{quiet.detection[0.3]:>5.0%} {quiet.detection_late[0.3]:>4.0%} "
                  f"{both:>8.0%}", flush=True)
    fig = measure(noise, DETECTOR, trials, STEPS, seed=1)
    print(f"\nregressions.DETECTOR: max_pvalue {DETECTOR.max_pvalue:g}, min_magnitude "
          f"{DETECTOR.min_magnitude:g}, min_points {DETECTOR.min_points}, windows "
          f"{'+'.join(map(str, DETECTOR.windows))}")
    print(f"  false alarms: {fig.alarms_per_100:.2f} per 100 points of replayed noise "
          f"({trials} series of {NOISE_LENGTH}; goal <= 1); {fig.recorded_alarms} on the "
          f"{fig.recorded_points} recorded points in their order")
    print(f"  step found within {WITHIN} points (within 10) after it, {trials} trials each:")
    for step in STEPS:
        print(f"    +{100 * step:5.1f}%: {fig.detection[step]:6.1%}  "
              f"({fig.detection_late[step]:.1%})")
    print(f"  10% step: {fig.detection[0.10]:.1%} within {WITHIN} points (goal >= 90%)")
    print_smallest(fig)
    print("\nthe same settings on the measured noise scaled toward its median (its shape kept, "
          "a quieter machine's amplitude; false alarms do not change: the detector's tests are "
          "scale-free):")
    for factor in SHRINK:
        quiet_noise = shrunk(noise, factor)
        change = np.median(np.concatenate([np.abs(np.diff(v)) / v[:-1]
                                           for v in quiet_noise.values()]))
        quiet = measure(quiet_noise, DETECTOR, trials, STEPS, seed=2)
        print(f"  x{factor:g} (median run-to-run change {100 * change:.1f}%): "
              f"{quiet.alarms_per_100:.2f} false alarms per 100 points; "
              + ", ".join(f"+{100 * s:g}% {quiet.detection[s]:.0%}" for s in STEPS[:4])
              + f" within {WITHIN} points")
        print_smallest(quiet, "    ")


def print_smallest(fig: Figures, indent: str = "  ") -> None:
    smallest = smallest_reliable(fig.detection)
    later = smallest_reliable(fig.detection_late)
    print(f"{indent}smallest step found reliably (>= 90%): "
          f"{'none of these' if smallest is None else f'+{100 * smallest:g}%'} within "
          f"{WITHIN} points, {'none' if later is None else f'+{100 * later:g}%'} within 10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=["replay", "record"], default="replay")
    parser.add_argument("--runs", type=int, default=60, help="record: A/A runs")
    parser.add_argument("--timed-runs", type=int,
                        help="record: timed runs per benchmark (default: bench's, 30)")
    parser.add_argument("--rounds", help="record: processes per benchmark (bench's --rounds, "
                        "default 1; a list such as 1,3 alternates); replay: which of them")
    parser.add_argument("--threads", default="1,2", help="record: thread counts")
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp", help="record: model")
    parser.add_argument("--fixture", type=Path, default=FIXTURE)
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--grid-trials", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="60 trials, no grid")
    parser.add_argument("--no-grid", action="store_true", help="only the chosen settings")
    parser.add_argument("--metric", choices=["cpu", "wall", "both"], default="both",
                        help="replay the runs' CPU p50s, wall p50s, or both in turn")
    args = parser.parse_args()
    if args.mode == "record":
        record(args.fixture, args.runs, [int(t) for t in args.threads.split(",")], args.model,
               args.timed_runs, [int(r) for r in (args.rounds or "").split(",") if r])
        return
    started = time.monotonic()
    trials = 60 if args.quick else args.trials
    for metric in (["cpu", "wall"] if args.metric == "both" else [args.metric]):
        noise = load_noise(args.fixture, metric, int(args.rounds) if args.rounds else None)
        if not noise:
            print(f"\n(no {metric} p50s in {args.fixture})")
            continue
        print(f"\n=== {metric} p50s of the recorded runs ===")
        report(noise, trials, grid=not (args.quick or args.no_grid),
               grid_trials=args.grid_trials)
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
