"""What the agent's measurement costs, measured side by side in one run.

    python bench/overhead.py [--rounds 6] [--runs 200] [--threads 1] [--mb 16]

- p50 overhead: the agent's ``bench`` (fresh child process, telemetry sampler on at 4 Hz,
  progress events) against a bare loop of ``session.run`` in its own process with the same model,
  session options, thread count and input, alternated A/B/A/B. Goal: agent p50 / bare p50 <= 1.01.
- Cold start: spawning ``python edgefleet-agent.pyz ... status`` until its first JSON line.
  Goal < 0.5 s.
- Memory: the agent child's peak RSS minus the bare loop's, both holding the same ORT session.
  Goal < 40 MB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import yaml  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from orchestrator.agentclient import call_agent  # noqa: E402
from orchestrator.agents import install_agents  # noqa: E402
from orchestrator.bundles import build_bundle  # noqa: E402
from orchestrator.config import Settings  # noqa: E402
from orchestrator.db import session_scope  # noqa: E402
from orchestrator.deploy import push  # noqa: E402
from orchestrator.devices import all_devices, sync_inventory, to_target  # noqa: E402
from orchestrator.inventory import load_inventory  # noqa: E402
from orchestrator.simulate import create_simulated_device  # noqa: E402
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
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=16)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="edgefleet-bench-overhead-"))
    settings = Settings(home=base / "home", database_url=None)
    sim = create_simulated_device(base / "sim")
    root = base / "root"
    inventory = base / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"local-pi": {
        "ansible_connection": "local", "edgefleet_root": str(root),
        "edgefleet_python": sys.executable, "edgefleet_env": sim.env}}}}))
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
    agent_p50, bare_p50, agent_rss, bare_rss = [], [], [], []
    with connect(to_target(devices[0]), settings) as conn:
        for round_index in range(args.rounds):
            # Alternate which goes first, so warm-up or drift within a round favours neither.
            for side in ("agent", "bare") if round_index % 2 == 0 else ("bare", "agent"):
                if side == "agent":
                    entry = call_agent(conn, "bench", payload)["results"][0]
                    assert entry["ok"] and entry["telemetry"]["status"] == "clean", entry
                    agent_p50.append(entry["latency_ms"]["p50"])
                    agent_rss.append(entry["peak_rss_mb"])
                else:
                    bare = json.loads(subprocess.run(  # noqa: S603
                        [sys.executable, "-c", BARE], input=bare_cfg, capture_output=True,
                        text=True, check=True).stdout)
                    bare_p50.append(bare["p50_ms"])
                    bare_rss.append(bare["peak_rss_mb"])

    a, b = statistics.median(agent_p50), statistics.median(bare_p50)
    print(f"model: {args.layers} x MatMul+Relu [16x{args.width}], {args.threads} thread(s), "
          f"{args.runs} timed runs, "
          f"{args.rounds} alternating rounds (medians of per-round p50)")
    print(f"  agent bench p50 {a:.4f} ms (sampler on)   bare session.run p50 {b:.4f} ms")
    paired = sorted(x / y for x, y in zip(agent_p50, bare_p50, strict=True))
    quartiles = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
    print(f"  agent/bare p50, median of per-round ratios: {statistics.median(paired):.3f} "
          f"(IQR {quartiles[0]:.3f}-{quartiles[2]:.3f}; goal <= 1.01)")
    print(f"  per-round p50 ms: agent {[round(x, 4) for x in agent_p50]}")
    print(f"                    bare  {[round(x, 4) for x in bare_p50]}")
    rss = statistics.median(agent_rss) - statistics.median(bare_rss)
    print(f"  peak RSS: agent child {statistics.median(agent_rss):.1f} MB, bare "
          f"{statistics.median(bare_rss):.1f} MB -> overhead {rss:.1f} MB  (goal < 40 MB)")
    start = cold_start_s(sys.executable, str(package.path), str(root))
    print(f"  agent cold start (spawn -> first JSON line, `status`): {start * 1000:.0f} ms "
          "(goal < 500 ms)")


if __name__ == "__main__":
    main()
