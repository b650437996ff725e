"""How much of a benchmark's run-to-run noise is the process: fresh processes of one model, one
after another, each timing its own runs, and change-point detection replayed on points made of
1 process (30 timed runs) or of the median of 3 processes' p50s (10 timed runs each: the same
work, what ``bench --rounds 3`` does).

    python bench/process_noise.py                    # 240 processes (~1 min), then the replay
    python bench/process_noise.py --processes 120 --threads 2

Each process is a bare onnxruntime loop like the agent's measurement child (a fresh session of
bench/overhead.py's MLP, one untimed inference, 5 warm-up runs, gc off, each timed run's CPU time
read around it), with none of the product around it: what is measured is the spread between
processes. The replay is bench/changepoints.py's (block bootstrap, the detector on every prefix).
Why it exists: it is the evidence for and against ``bench --rounds`` (README "Regressions").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from changepoints import MLP, measure  # noqa: E402

from orchestrator.measure.regressions import DETECTOR  # noqa: E402

CHILD = """
import gc, json, sys, time
import numpy as np
import onnxruntime as ort
path, threads, warmup, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
options = ort.SessionOptions()
options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
options.log_severity_level = 3
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
feeds = {"x": np.random.default_rng(0).standard_normal((16, 512)).astype(np.float32)}
session.run(None, feeds)
gc.disable()
for _ in range(warmup):
    session.run(None, feeds)
cpu = []
for _ in range(runs):
    start = time.process_time_ns()
    session.run(None, feeds)
    cpu.append((time.process_time_ns() - start) / 1e6)
print(json.dumps(cpu))
"""
TIMED = 30


def record(processes: int, threads: int) -> list[np.ndarray]:
    from overhead import make_mlp

    with tempfile.TemporaryDirectory(prefix="edgefleet-procnoise-") as tmp:
        model = make_mlp(Path(tmp) / "model.onnx", *MLP)
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        out = []
        for index in range(processes):
            done = subprocess.run(  # noqa: S603 - our interpreter, our script
                [sys.executable, "-c", CHILD, str(model), str(threads), "5", str(TIMED)],
                capture_output=True, text=True, check=True, env=env)
            out.append(np.asarray(json.loads(done.stdout)))
            if index % 40 == 0:
                print(f"process {index + 1}/{processes}", flush=True)
    return out


def points(cpu: list[np.ndarray], per_point: int) -> np.ndarray:
    """One value per ``per_point`` consecutive processes: the median of their CPU p50s, each
    over its first TIMED / per_point runs (the work of one 30-run benchmark in all)."""
    runs = TIMED // per_point
    return np.array([np.median([np.median(cpu[i + j][:runs]) for j in range(per_point)])
                     for i in range(0, len(cpu) - per_point + 1, per_point)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=240)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trials", type=int, default=300)
    args = parser.parse_args()
    cpu = record(args.processes, args.threads)
    p50 = np.array([np.median(c) for c in cpu])
    rel = p50 / np.median(p50)
    print(f"{len(cpu)} processes, {args.threads} thread(s): CPU p50 median {np.median(p50):.4f}"
          f" ms; p5-p95 {np.percentile(rel, 5):.3f}-{np.percentile(rel, 95):.3f}x, "
          f"{np.mean(rel > 1.06):.1%} above 1.06x, max {rel.max():.2f}x; consecutive "
          f"processes correlate at {np.corrcoef(p50[:-1], p50[1:])[0, 1]:.2f}")
    for per_point in (1, 3):
        series = points(cpu, per_point)
        change = np.median(np.abs(np.diff(series)) / series[:-1])
        fig = measure({"1": series}, DETECTOR, args.trials, (0.10, 0.20))
        print(f"  {per_point} process(es) per point ({len(series)} points, run-to-run change "
              f"{change:.1%}): false alarms {fig.alarms_per_100:.2f} per 100 points; found "
              f"within 3 runs: +10% {fig.detection[0.10]:.0%}, +20% {fig.detection[0.20]:.0%}",
              flush=True)


if __name__ == "__main__":
    main()
