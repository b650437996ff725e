"""What the agent's measurement costs, measured side by side in one run.

    python bench/overhead.py [--rounds 12] [--runs 400] [--threads 1] [--cpu N]

- p50 overhead: the agent's ``bench`` (fresh child process, telemetry sampler on at 4 Hz,
  progress events) against a bare loop of ``session.run`` in its own process with the same model,
  session options, thread count and input, alternated A/B/A/B. Goal: agent p50 / bare p50 <= 1.01.
  A second bare loop in every round (A/A) shows what the machine's own noise does to the same
  ratio: a 1% claim means something only if that control is much tighter than 1%. Everything
  runs pinned to one CPU (``--cpu``, with ``--threads 1``) so no process migrates mid-run; the
  verdict uses a bootstrap 95% confidence interval of the median per-round ratio.
- The same overhead taken apart, measured in ways this machine's noise cannot blur: the CPU
  the telemetry sampler uses per second (its share of a core, on a simulated Pi 5 that reads
  power with a fork+exec of vcgencmd and on a board without), and the agent's per-run
  bookkeeping (clock, append, progress check) with a no-op ``run``, against the bare loop's.
  Their sum over the p50 bounds what the agent can add, whatever the A/B ratio shows.
- Cold start: spawning ``python edgefleet-agent.pyz ... status`` until its first JSON line.
  Goal < 0.5 s.
- Memory: the agent child's peak RSS minus the bare loop's, both holding the same ORT session.
  Goal < 40 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import yaml  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from scipy import stats  # noqa: E402

from orchestrator.artifacts.bundles import build_bundle  # noqa: E402
from orchestrator.core.config import Settings  # noqa: E402
from orchestrator.core.db import session_scope  # noqa: E402
from orchestrator.demo.simulate import create_simulated_device  # noqa: E402
from orchestrator.fleet.agentclient import call_agent  # noqa: E402
from orchestrator.fleet.agents import install_agents  # noqa: E402
from orchestrator.fleet.deploy import push  # noqa: E402
from orchestrator.inventory.devices import all_devices, sync_inventory, to_target  # noqa: E402
from orchestrator.inventory.reader import load_inventory  # noqa: E402
from orchestrator.transport import connect  # noqa: E402

BARE = textwrap.dedent("""
    import json, sys, time
    import numpy as np, onnxruntime as ort
    cfg = json.loads(sys.stdin.read())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cfg["threads"]
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(cfg["model"], opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(cfg["shape"]).astype(np.float32)
    feed = {cfg["input"]: x}
    for _ in range(cfg["warmup"]):
        sess.run(None, feed)
    lat = []
    for _ in range(cfg["runs"]):
        t0 = time.perf_counter_ns(); sess.run(None, feed); lat.append(time.perf_counter_ns() - t0)
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    print(json.dumps({"p50_ms": float(np.percentile(lat, 50)) / 1e6,
                      "peak_rss_mb": int(hwm) / 1024}))
""")


def make_mlp(path: Path, width: int, layers: int) -> Path:
    """A compute-bound model (``layers`` x MatMul+Relu of ``width``), so per-inference time is
    milliseconds and a 1% difference is measurable."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Relu", [f"m{i}"], [f"h{i}"])]
        prev = f"h{i}"
    graph = helper.make_graph(
        nodes, "overhead_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, width])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [16, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


SIDES = ["agent", "bare", "bare again"]


class RatioSummary(NamedTuple):
    median: float
    low: float
    high: float

    @property
    def text(self) -> str:
        return (f"median of per-round ratios {self.median:.3f}, "
                f"95% CI {self.low:.3f}-{self.high:.3f}")


def ratio_summary(numerator: list[float], denominator: list[float]) -> RatioSummary:
    """Median of paired per-round ratios with a bootstrap 95% CI (scipy.stats.bootstrap)."""
    ratios = np.array([x / y for x, y in zip(numerator, denominator, strict=True)])
    if len(ratios) < 3:
        return RatioSummary(float(np.median(ratios)), float(ratios.min()), float(ratios.max()))
    ci = stats.bootstrap((ratios,), np.median, confidence_level=0.95, n_resamples=4000,
                         method="percentile", random_state=np.random.default_rng(0))
    return RatioSummary(float(np.median(ratios)), float(ci.confidence_interval.low),
                        float(ci.confidence_interval.high))


def sampler_cpu_share(base: Path, seconds: float = 4.0) -> dict[str, float]:
    """CPU seconds per second the sampler (thread + the processes it starts) uses at 4 Hz."""
    import resource
    import threading

    from agent.sampler import Sampler
    from agent.sensors import SensorReader

    def cpu() -> float:
        own, kids = (resource.getrusage(resource.RUSAGE_SELF),
                     resource.getrusage(resource.RUSAGE_CHILDREN))
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    shares = {}
    for label, model in (("Pi 5, power via vcgencmd", "Raspberry Pi 5 Model B Rev 1.0"),
                         ("Pi 4, no power reading", "Raspberry Pi 4 Model B Rev 1.4")):
        sim = create_simulated_device(base / f"sampler-{model.split()[2]}", model=model)
        sampler = Sampler(SensorReader(str(sim.sysfs), str(sim.bin_dir)), 4.0)
        used, started = cpu(), time.monotonic()
        sampler.start()
        threading.Event().wait(seconds)  # a measurement window, not synchronisation
        sampler.stop()
        shares[label] = (cpu() - used) / (time.monotonic() - started)
    return shares


def bookkeeping_ns(loops: int = 300_000) -> float:
    """Per-run cost of the agent's timed-loop bookkeeping over the bare loop's (no-op run)."""
    from agent.bench import Progress

    def noop(*_: object) -> None:
        return None

    def agent_loop() -> int:
        progress, clock, latencies = Progress(lambda event: None, 1), time.perf_counter_ns, []
        began = clock()
        for _ in range(loops):
            start = clock()
            noop(None, None)
            end = clock()
            latencies.append(end - start)
            progress.update("timed", len(latencies), loops, now=end)
        return clock() - began

    def bare_loop() -> int:
        clock, latencies = time.perf_counter_ns, []
        began = clock()
        for _ in range(loops):
            start = clock()
            noop(None, None)
            latencies.append(clock() - start)
        return clock() - began

    agent_ns = min(agent_loop() for _ in range(5))
    bare_ns = min(bare_loop() for _ in range(5))
    return max(0.0, (agent_ns - bare_ns) / loops)


def cold_start_s(python: str, pyz: str, root: str, repeats: int = 9) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        proc = subprocess.Popen([python, pyz, f"--root={root}", "status"],  # noqa: S603
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        proc.stdout.readline()
        times.append(time.perf_counter() - started)
        proc.wait()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)),
                        help="CPU to pin to with --threads 1 (default: the last one allowed)")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="edgefleet-bench-overhead-"))
    settings = Settings(home=base / "home", database_url=None)
    sim = create_simulated_device(base / "sim")
    root = base / "root"
    inventory = base / "inventory.yml"
    hosts = {"local-pi": sim.local_host_vars(root)}
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    with session_scope(settings) as session:
        sync_inventory(session, load_inventory(inventory))
        devices = all_devices(session)
    package, installed = install_agents(settings, devices)
    assert installed[0].ok, installed[0].error
    model = make_mlp(base / "model" / "model.onnx", args.width, args.layers)
    with session_scope(settings) as session:
        bundle = build_bundle(session, settings, model.parent, "overhead").bundle
    assert push(settings, bundle, devices)[0].ok

    payload = {"digest": bundle.digest, "threads": [args.threads], "warmup": args.warmup,
               "runs": args.runs}
    bare_cfg = json.dumps({"model": str(model), "threads": args.threads,
                           "shape": [16, args.width],
                           "input": "x", "warmup": args.warmup, "runs": args.runs})
    if args.threads == 1 and args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})  # inherited by the agent, its child and bare loops
    p50: dict[str, list[float]] = {side: [] for side in SIDES}
    rss_mb: dict[str, list[float]] = {side: [] for side in SIDES}
    with connect(to_target(devices[0]), settings) as conn:
        for round_index in range(args.rounds):
            # Rotate which goes first, so warm-up or drift within a round favours none.
            shift = round_index % len(SIDES)
            for side in SIDES[shift:] + SIDES[:shift]:
                if side == "agent":
                    entry = call_agent(conn, "bench", payload)["results"][0]
                    assert entry["ok"] and entry["telemetry"]["status"] == "clean", entry
                    p50[side].append(entry["latency_ms"]["p50"])
                    rss_mb[side].append(entry["peak_rss_mb"])
                else:
                    bare = json.loads(subprocess.run(  # noqa: S603
                        [sys.executable, "-c", BARE], input=bare_cfg, capture_output=True,
                        text=True, check=True).stdout)
                    p50[side].append(bare["p50_ms"])
                    rss_mb[side].append(bare["peak_rss_mb"])

    pinned = f"pinned to CPU {args.cpu}" if args.threads == 1 and args.cpu is not None else \
        "not pinned"
    print(f"model: {args.layers} x MatMul+Relu [16x{args.width}], {args.threads} thread(s), "
          f"{args.runs} timed runs, {args.rounds} rotating rounds, {pinned}")
    print(f"  p50 ms, median over rounds: agent {statistics.median(p50['agent']):.4f} "
          f"(sampler on)  bare {statistics.median(p50['bare']):.4f}  "
          f"bare again {statistics.median(p50['bare again']):.4f}")
    overhead = ratio_summary(p50["agent"], p50["bare"])
    control = ratio_summary(p50["bare again"], p50["bare"])
    print(f"  agent/bare p50      {overhead.text}   (goal <= 1.01)")
    print(f"  A/A bare again/bare {control.text}   (the noise floor)")
    if overhead.high <= 1.01:
        print("  -> goal met: the 95% CI of agent/bare lies at or below 1.01")
    else:
        print(f"  -> not shown: the CI reaches {overhead.high:.3f}; the A/A control spans "
              f"{control.low:.3f}-{control.high:.3f}, so this machine cannot resolve 1%")
    for side in SIDES:
        print(f"  per-round p50 ms {side:>10}: {[round(x, 4) for x in p50[side]]}")
    rss = statistics.median(rss_mb["agent"]) - statistics.median(rss_mb["bare"])
    print(f"  peak RSS: agent child {statistics.median(rss_mb['agent']):.1f} MB, bare "
          f"{statistics.median(rss_mb['bare']):.1f} MB -> overhead {rss:.1f} MB  (goal < 40 MB)")
    shares = sampler_cpu_share(base)
    extra_ns = bookkeeping_ns()
    p50_ms = statistics.median(p50["bare"])
    print("  taken apart (deterministic): sampler CPU at 4 Hz " + ", ".join(
        f"{label} {share * 100:.2f}% of a core" for label, share in shares.items()))
    worst = max(shares.values())
    print(f"    agent bookkeeping per timed run {extra_ns:.0f} ns = "
          f"{extra_ns / (p50_ms * 1e6) * 100:.3f}% of the p50; bound on agent/bare: "
          f"{1 + worst + extra_ns / (p50_ms * 1e6):.4f} if every sampler cycle landed on the "
          f"measured core (goal <= 1.01)")
    start = cold_start_s(sys.executable, str(package.path), str(root))
    print(f"  agent cold start (spawn -> first JSON line, `status`): {start * 1000:.0f} ms "
          "(goal < 500 ms)")


if __name__ == "__main__":
    main()
