"""``bench`` through the real zipapp on real ONNX models: statistics, per-process RSS, inputs,
errors, and throttling injected into a fake Pi while the timed runs are going on.

Synchronisation is on the agent's own progress events: the sensors are changed when the first
``"phase": "timed"`` event arrives, and ``min_seconds`` keeps the timed runs going long enough
for the sampler (and its final synchronous sample) to see the change.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from agent_helpers import (
    REPO,
    AgentRun,
    Bundle,
    agent_env,
    make_bundle,
    push,
    run_agent,
    run_watching,
    stopped,
    write,
)
from onnx import TensorProto, helper, numpy_helper

from agent.protocol import manifest_digest

MB = 1024 * 1024
THERMAL = "class/thermal/thermal_zone0/temp"
THROTTLED = "devices/platform/soc/soc:firmware/get_throttled"
CPUS = 4


def finish(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


def dynamic_model() -> bytes:
    """out = ReduceMean(x) * Cast(sr) + y; x is [batch, 16], sr an int64 scalar, y float [1]."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["mean"], keepdims=0),
             helper.make_node("Cast", ["sr"], ["rate"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["mean", "rate"], ["scaled"]),
             helper.make_node("Add", ["scaled", "y"], ["out"])]
    return finish(helper.make_graph(
        nodes, "dynamic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, []),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])]))


def plain_model() -> bytes:
    """Relu(x @ W), x [64, 512]: about a millisecond a run, so long runs keep short lists."""
    weight = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    return finish(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["out"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 512])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [64, 512])],
        [numpy_helper.from_array(weight, "w")]))


def model_bundle(name: str, model: bytes, extra: dict[str, bytes] | None = None) -> Bundle:
    """A bundle whose manifest carries the model signature, as ``bundle build`` records it."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    inputs = [{"name": i.name, "dtype": i.type[len("tensor("):-1], "shape": list(i.shape)}
              for i in session.get_inputs()]
    base = make_bundle(name, "1.0", {"model.onnx": model, **(extra or {})})
    manifest = dict(base.manifest, model={"path": "model.onnx", "inputs": inputs})
    return Bundle(manifest, manifest_digest(manifest), base.contents)


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp, text)
    os.replace(tmp, path)


class FakePi:
    """A fake sysfs tree + a fake vcgencmd that answers get_throttled from a file."""

    def __init__(self, base: Path, *, throttled: str | None = "0", sysfs_throttled: bool = True,
                 khz: int = 2400000) -> None:
        self.sysfs = base / "sys"
        write(self.sysfs / THERMAL, "55000\n")
        for cpu in range(CPUS):
            write(self.sysfs / f"devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq", f"{khz}\n")
        self.throttled = self.sysfs / THROTTLED if sysfs_throttled else base / "state/throttled"
        if throttled is not None:
            write(self.throttled, throttled + "\n")
        self.bindir = base / "bin"
        write(self.bindir / "vcgencmd",
              f'#!/bin/sh\ncase "$1" in get_throttled) echo "throttled=0x$(cat "{self.throttled}")"'
              ";;\n*) exit 1;; esac\n")
        (self.bindir / "vcgencmd").chmod(0o755)
        self.env = agent_env(EDGEFLEET_SYSFS=str(self.sysfs),
                             PATH=f"{self.bindir}{os.pathsep}{os.environ['PATH']}")

    def set_freq(self, khz: int) -> None:
        for cpu in range(CPUS):
            atomic_write(self.sysfs / f"devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq",
                         f"{khz}\n")


def bench(pyz: Path, root: Path, bundle: Bundle, env: dict[str, str], **fields: Any) -> AgentRun:
    return run_agent(pyz, root, "bench", dict({"digest": bundle.digest}, **fields), env=env)


def bench_watching(pyz: Path, root: Path, request: dict[str, Any], env: dict[str, str],
                   on_event: Callable[[dict[str, Any]], None]) -> AgentRun:
    """``bench`` with ``on_event`` called on each progress line as it arrives."""
    return run_watching(pyz, root, "bench", request, env, on_event)


def on_first_timed(action: Callable[[], None]) -> Callable[[dict[str, Any]], None]:
    fired: list[dict[str, Any]] = []

    def handler(ev: dict[str, Any]) -> None:
        if not fired and ev["event"] == "bench" and ev["phase"] == "timed":
            fired.append(ev)
            action()

    return handler


def only_entry(run: AgentRun) -> dict[str, Any]:
    (entry,) = run.data["results"]
    assert entry["ok"], entry
    return entry


def test_latency_stats_per_process_rss_and_clean_telemetry(
        pyz: Path, root: Path, tmp_path: Path) -> None:
    model = dynamic_model()
    bundle = model_bundle("dyn", model)
    push(pyz, root, bundle, plan=False)
    pi = FakePi(tmp_path)
    run = bench(pyz, root, bundle, pi.env, threads=[1, 2], warmup=3, runs=20, min_seconds=0.3,
                shapes={"x": [4, 16]}, constants={"sr": 16000})
    data = run.data
    assert data["bundle"] == {"name": "dyn", "version": "1.0", "digest": bundle.digest}
    assert data["model_size_mb"] == round(len(model) / MB, 3)
    assert data["inputs"] == [
        {"name": "x", "dtype": "float", "shape": [4, 16], "source": "generated"},
        {"name": "sr", "dtype": "int64", "shape": [], "source": "constant"},
        {"name": "y", "dtype": "float", "shape": [1], "source": "generated"},
    ]
    assert data["providers"] == ["CPUExecutionProvider"]
    assert data["onnxruntime"] == ort.__version__ and data["simulated"] is True
    assert [e["threads"] for e in data["results"]] == [1, 2]
    for entry in data["results"]:
        assert entry["ok"] and entry["error"] is None and entry["warmup"] == 3
        lat = entry["latencies_ms"]
        assert entry["runs"] == len(lat) >= 20 and entry["wall_s"] >= 0.3
        assert sum(lat) / 1000 <= entry["wall_s"] + 1e-3
        stats = entry["latency_ms"]
        assert stats["n"] == len(lat) and stats["mean"] == np.mean(lat)
        assert stats["std"] == np.std(lat, ddof=1)
        assert stats["min"] == min(lat) and stats["max"] == max(lat)
        for q in (50, 90, 95, 99):
            assert stats[f"p{q}"] == np.percentile(lat, q)
        assert stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p95"] <= stats["p99"]
        # the CPU time of each timed run too (what change-point detection reads), same count
        cpu = entry["cpu_ms"]
        assert cpu["n"] == len(lat) and 0 <= cpu["min"] <= cpu["p50"] <= cpu["max"]
        # p50, not min, > 0: one run of a ~20 us inference can read 0.0 of process CPU time
        # (a CI run under load had 1 such run of 10,966; Linux adds another running thread's
        # time to the process clock at a scheduler tick). The latencies above are exact.
        assert cpu["p50"] > 0
        assert entry["load_ms"] > 0 and entry["first_inference_ms"] > 0
        assert 0 < entry["rss_before_load_mb"] <= entry["peak_rss_mb"]
        assert 0 < entry["steady_rss_mb"] <= entry["peak_rss_mb"]
        telemetry = entry["telemetry"]
        assert telemetry["status"] == "clean" and entry["valid"] is True and entry["flags"] == []
        assert telemetry["throttled_bits"] == 0 and telemetry["temp_c_max"] == 55.0
        assert telemetry["freq_mhz_min"] == telemetry["freq_mhz_max"] == 2400.0
        assert len(telemetry["samples"]) >= 2 and telemetry["samples"][0][0] == 0.0
    # each thread count was measured (and its peak RSS read) in a process of its own
    progress = [ev for ev in run.events if ev["event"] == "bench"]
    pids = {ev["threads"]: {e["pid"] for e in progress if e["threads"] == ev["threads"]}
            for ev in progress}
    assert len(pids[1]) == len(pids[2]) == 1 and pids[1] != pids[2]
    phases = [(ev["threads"], ev["phase"]) for ev in progress]
    assert phases.index((1, "load")) < phases.index((1, "warmup")) < phases.index((1, "timed"))
    assert phases.index((1, "timed")) < phases.index((2, "load"))
    # As each thread count finished, its whole entry was reported (kept if the session dies).
    measured = [ev for ev in run.events if ev["event"] == "measured"]
    assert [ev["entry"] for ev in measured] == data["results"]
    assert run.events.index(measured[0]) < run.events.index(
        next(ev for ev in progress if ev["threads"] == 2))
    assert measured[0]["common"]["model_size_mb"] == data["model_size_mb"]
    assert measured[0]["common"]["onnxruntime"] == ort.__version__


def test_sample_inputs_npz_and_constants(pyz: Path, root: Path, tmp_path: Path) -> None:
    buffer = tmp_path / "sample_inputs.npz"
    np.savez(buffer, x=np.ones((3, 16), dtype=np.float32), y=np.array([0.5], dtype=np.float32))
    bundle = model_bundle("dyn", dynamic_model(), {"sample_inputs.npz": buffer.read_bytes()})
    push(pyz, root, bundle, plan=False)
    run = bench(pyz, root, bundle, FakePi(tmp_path / "pi").env, threads=[1], runs=3,
                warmup=0, constants={"sr": 8000})
    assert [(i["name"], i["shape"], i["source"]) for i in run.data["inputs"]] == [
        ("x", [3, 16], "npz"), ("sr", [], "constant"), ("y", [1], "npz")]
    assert only_entry(run)["runs"] == 3


def test_bad_input_and_missing_bundles_fail_before_measuring(
        pyz: Path, root: Path, tmp_path: Path) -> None:
    bundle = model_bundle("dyn", dynamic_model())
    push(pyz, root, bundle, plan=False)
    env = FakePi(tmp_path).env
    # A dim named like a batch is 1 when nobody says otherwise, and the result says so.
    ran = bench(pyz, root, bundle, env, threads=[1], runs=2, warmup=0)
    (x,) = [i for i in ran.data["inputs"] if i["name"] == "x"]
    assert x["shape"] == [1, 16] and [a["name"] for a in x["assumed"]] == ["batch"]
    cases = [
        ({"shapes": {"x": [4]}}, r"--shape x=4 has 1 dimension but input 'x' has 2"),
        ({"shapes": {"x": [4, 16]}, "constants": {"rate": 1}},
         r"--input names 'rate', which is not an input of the model \(inputs: x, sr, y\)"),
        ({"thread": [1]}, r"unknown bench field\(s\) thread"),
        ({"sample_hz": 1}, r"sample_hz must be a number from 4"),
    ]
    for fields, message in cases:
        run = bench(pyz, root, bundle, env, **fields)
        assert run.error["code"] == "bad_input", run.error
        assert re.search(message, run.error["message"]), run.error["message"]
        assert not [e for e in run.events if e["event"] == "bench"]  # nothing was measured

    other = "ab" * 32
    error = run_agent(pyz, root, "bench", {"digest": other}, env=env).error
    assert error["code"] == "not_on_device"
    assert other in error["message"] and "push it first" in error["message"]
    error = run_agent(pyz, tmp_path / "never used", "bench", {"digest": other}, env=env).error
    assert error["code"] == "not_on_device"
    version_dir = root / json.loads((root / "state.json").read_text())["history"][-1]["dir"]
    (root / "current").unlink()
    shutil.rmtree(version_dir)
    error = bench(pyz, root, bundle, env, shapes={"x": [1, 16]}).error
    assert error["code"] == "not_on_device"
    assert "bundle dyn@1.0" in error["message"] and "push it first" in error["message"]


@pytest.mark.parametrize("source", ["sysfs", "vcgencmd"])
def test_throttling_injected_during_the_timed_runs(
        pyz: Path, root: Path, tmp_path: Path, source: str) -> None:
    bundle = model_bundle("plain", plain_model())
    push(pyz, root, bundle, plan=False)
    pi = FakePi(tmp_path, sysfs_throttled=source == "sysfs")
    run = bench_watching(pyz, root, {"digest": bundle.digest, "threads": [1], "warmup": 1,
                                     "runs": 5, "min_seconds": 1.5}, pi.env,
                         on_first_timed(lambda: atomic_write(pi.throttled, "50005\n")))
    entry = only_entry(run)
    telemetry = entry["telemetry"]
    assert entry["valid"] is False and telemetry["status"] == "throttled"
    assert entry["flags"] == ["under_voltage", "throttled"]
    assert telemetry["throttled_bits"] == 0x50005
    assert telemetry["throttle_flags"] == {"now": ["under_voltage", "throttled"],
                                           "new_since_start": ["under_voltage", "throttled"]}
    bits = [s[3] for s in telemetry["samples"]]
    assert bits[0] == 0 and bits[-1] == 0x50005 and len(bits) >= 5
    seen = bits.count(0x50005)
    assert f"under-voltage seen in {seen} of {len(bits)} samples (get_throttled 0x50005)" \
        in entry["reasons"]
    assert entry["wall_s"] >= 1.5


def test_temperature_ramp_past_80c(pyz: Path, root: Path, tmp_path: Path) -> None:
    bundle = model_bundle("plain", plain_model())
    push(pyz, root, bundle, plan=False)
    pi = FakePi(tmp_path)
    run = bench_watching(pyz, root, {"digest": bundle.digest, "threads": [1], "warmup": 1,
                                     "runs": 5, "min_seconds": 1.0}, pi.env,
                         on_first_timed(lambda: atomic_write(pi.sysfs / THERMAL, "82500\n")))
    entry = only_entry(run)
    assert entry["flags"] == ["temp_over_80c"] and entry["valid"] is False
    assert entry["telemetry"]["temp_c_min"] == 55.0
    assert entry["telemetry"]["temp_c_max"] == 82.5 >= 80
    assert any("82.5 °C" in reason for reason in entry["reasons"])


def test_frequency_drop_under_load(pyz: Path, root: Path, tmp_path: Path) -> None:
    bundle = model_bundle("plain", plain_model())
    push(pyz, root, bundle, plan=False)
    pi = FakePi(tmp_path, khz=2400000)
    run = bench_watching(pyz, root, {"digest": bundle.digest, "threads": [1], "warmup": 1,
                                     "runs": 5, "min_seconds": 1.0}, pi.env,
                         on_first_timed(lambda: pi.set_freq(1500000)))
    entry = only_entry(run)
    assert entry["flags"] == ["frequency_drop"] and entry["valid"] is False
    telemetry = entry["telemetry"]
    assert (telemetry["freq_mhz_min"], telemetry["freq_mhz_max"]) == (1500.0, 2400.0)
    assert telemetry["throttled_bits"] == 0  # the firmware said nothing: the drop alone tells


def test_no_sensors_is_unknown_not_clean(pyz: Path, root: Path, tmp_path: Path) -> None:
    bundle = model_bundle("plain", plain_model())
    push(pyz, root, bundle, plan=False)
    empty = tmp_path / "no-sensors"
    empty.mkdir()
    run = bench(pyz, root, bundle, agent_env(EDGEFLEET_SYSFS=str(empty), PATH=str(empty)),
                threads=[1], warmup=0, runs=3)
    entry = only_entry(run)
    telemetry = entry["telemetry"]
    assert telemetry["status"] == "unknown" and entry["valid"] is True and entry["flags"] == []
    for key in ("temp_c_min", "temp_c_max", "freq_mhz_min", "freq_mhz_max", "throttled_bits"):
        assert telemetry[key] is None
    assert all(sample[1:] == [None, None, None] for sample in telemetry["samples"])
    assert entry["reasons"][0].startswith("sensors unknown")


def test_a_killed_measurement_is_that_entrys_error(
        pyz: Path, root: Path, tmp_path: Path) -> None:
    bundle = model_bundle("plain", plain_model())
    push(pyz, root, bundle, plan=False)
    killed: list[int] = []

    def kill_the_first_child(ev: dict[str, Any]) -> None:
        if not killed and ev["event"] == "bench" and ev["threads"] == 1:
            killed.append(ev["pid"])
            os.kill(ev["pid"], signal.SIGKILL)  # what the OOM killer does

    run = bench_watching(pyz, root, {"digest": bundle.digest, "threads": [1, 2], "warmup": 0,
                                     "runs": 3, "min_seconds": 0.5},
                         FakePi(tmp_path).env, kill_the_first_child)
    first, second = run.data["results"]
    assert first["threads"] == 1 and first["ok"] is False and first["valid"] is None
    assert "killed by signal 9 (SIGKILL)" in first["error"]
    assert f"measuring 1 thread in pid {killed[0]}" in first["error"]  # its stderr tail
    assert second["threads"] == 2 and second["ok"] is True and second["runs"] >= 3


def test_python_m_agent_session(root: Path, tmp_path: Path, pyz: Path) -> None:
    """``python -m agent`` re-invokes itself from the source tree; inside a session; and a
    get_throttled 0x50000 from before the run is reported, not held against it."""
    bundle = model_bundle("plain", plain_model())
    push(pyz, root, bundle, plan=False)
    pi = FakePi(tmp_path, throttled="50000", sysfs_throttled=False)
    request = {"v": 1, "command": "bench",
               "input": {"digest": bundle.digest, "threads": [2], "warmup": 0, "runs": 2}}
    run = run_agent(pyz, root, "session", json.dumps(request) + "\n", env=pi.env, cwd=REPO,
                    argv=[sys.executable, "-m", "agent", "--root", str(root), "session"])
    entry = only_entry(run)
    assert entry["threads"] == 2 and entry["valid"] is True
    assert entry["telemetry"]["status"] == "clean"
    assert entry["telemetry"]["throttled_bits"] == 0
    assert entry["telemetry"]["samples"][0][3] == 0x50000
    assert any("already occurred since boot" in r and "0x50000" in r for r in entry["reasons"])


def test_a_push_meanwhile_does_not_prune_the_version_being_measured(
        pyz: Path, root: Path, tmp_path: Path) -> None:
    """Four pushes of other bundles while a bench runs push its version out of the history;
    before agent.inuse their prune deleted its dir under it, and the second thread count's
    child failed to load the model. Now the dir stays until the bench is over, and the next
    prune removes it."""
    bundle = model_bundle("plain", plain_model())
    measured_dir = push(pyz, root, bundle, plan=False).data["dir"]
    others = [make_bundle("other", f"{n}.0", {"model.onnx": b"other %d" % n})
              for n in range(1, 6)]
    pushed: list[dict[str, Any]] = []

    def push_four_others(ev: dict[str, Any]) -> None:
        # The bench (agent and child) is stopped while the pushes run: its next thread count
        # loads the model after them, however fast the machine.
        if not pushed and ev["event"] == "bench" and ev["threads"] == 1:
            with stopped(ev):
                pushed.extend(push(pyz, root, other, plan=False).data for other in others[:4])

    run = bench_watching(pyz, root, {"digest": bundle.digest, "threads": [1, 2], "warmup": 0,
                                     "runs": 3}, FakePi(tmp_path).env, push_four_others)
    assert [p["pruned"] for p in pushed] == [[]] * 4  # in use: kept
    assert measured_dir not in [e["dir"] for e in read_history(root)]
    first, second = run.data["results"]
    assert first["ok"] and second["ok"], (first, second)
    assert second["threads"] == 2 and second["runs"] >= 3
    assert (root / measured_dir).is_dir()
    after = push(pyz, root, others[4], plan=False).data  # nobody reads it now
    assert measured_dir in after["pruned"] and not (root / measured_dir).exists()


def read_history(root: Path) -> list[dict[str, Any]]:
    return json.loads((root / "state.json").read_text())["history"]
