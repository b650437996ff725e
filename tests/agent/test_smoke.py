"""The smoke test after ``activate`` and ``verify``, through the real zipapp with real
onnxruntime sessions on tiny real ONNX models.

Golden files are made by the control plane's own code (orchestrator.artifacts.golden), the way
``bundle build`` makes them; a failing case is a bundle whose files all verify (hashes
consistent with the manifest) but whose golden outputs are wrong, or whose model onnxruntime
cannot load.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
from agent_helpers import Bundle, agent_env, make_bundle, push, read_state, run_agent, upload
from onnx import TensorProto, helper, numpy_helper

from agent.protocol import manifest_digest
from orchestrator.artifacts.golden import compute_golden, npz_bytes


def linear_model(seed: int) -> bytes:
    """logits = x @ W + b ([1, 4] -> [1, 3]) and label = ArgMax(logits) (int64)."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((4, 3)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]),
         helper.make_node("Add", ["h", "b"], ["logits"]),
         helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0)],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3]),
         helper.make_tensor_value_info("label", TensorProto.INT64, [1])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


SIGNATURE = [{"name": "x", "dtype": "float", "shape": [1, 4]}]


def golden_bundle(tmp_path: Path, version: str, seed: int = 0, *, logits_shift: float = 0.0,
                  device_model: bytes | None = None, model: bytes | None = None) -> Bundle:
    """A bundle as ``bundle build`` makes it (golden from orchestrator.artifacts.golden) of
    ``model`` (default: the linear one); ``logits_shift`` tampers the golden logits,
    ``device_model`` ships other model bytes than the golden's."""
    model = model if model is not None else linear_model(seed)
    path = tmp_path / f"golden-{version}.onnx"
    path.write_bytes(model)
    golden = compute_golden(path, path.name, SIGNATURE, [("model.onnx", path)], {}, "fp32").golden
    assert golden is not None
    outputs = golden.outputs
    if logits_shift:
        with np.load(io.BytesIO(golden.outputs)) as data:
            arrays = {key: data[key] for key in data.files}
        arrays["logits"] = arrays["logits"] + np.float32(logits_shift)
        outputs = npz_bytes(arrays)
    base = make_bundle("m", version, {
        "model.onnx": device_model if device_model is not None else model,
        ".edgefleet/golden_inputs.npz": golden.inputs,
        ".edgefleet/golden_outputs.npz": outputs,
    })
    manifest = dict(base.manifest, model={"path": "model.onnx", "inputs": SIGNATURE},
                    golden={"inputs": ".edgefleet/golden_inputs.npz",
                            "outputs": ".edgefleet/golden_outputs.npz",
                            "rtol": golden.rtol, "atol": golden.atol})
    return Bundle(manifest, manifest_digest(manifest), base.contents)


def activate(pyz: Path, root: Path, bundle: Bundle):  # noqa: ANN201 - AgentRun
    upload(root, bundle)
    return run_agent(pyz, root, "activate", bundle.request)


def version_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "versions").iterdir())


def cached_inodes(root: Path) -> set[str]:
    path = root / "cache" / "hashes.json"
    return set(json.loads(path.read_text())) if path.exists() else set()


def store_inodes(root: Path) -> set[str]:
    found = set()
    for top in (root / "blobs", root / "versions"):
        for path in top.rglob("*"):
            st = path.lstat()
            found.add(f"{st.st_dev}:{st.st_ino}")
    return found


def test_smoke_passes_and_verify_rehashes(pyz: Path, root: Path, tmp_path: Path) -> None:
    run = push(pyz, root, golden_bundle(tmp_path, "1"), plan=False)
    smoke = run.data["smoke"]
    assert smoke["ok"] is True and smoke["ms"] > 0
    assert [(o["name"], o["ok"]) for o in smoke["outputs"]] == [("label", True),
                                                               ("logits", True)]
    assert smoke["max_abs"] is not None and smoke["max_abs"] <= 1e-4
    assert [e["phase"] for e in run.events if e["event"] == "smoke"] == ["start", "done"]

    verified = run_agent(pyz, root, "verify", {}).data
    assert verified["ok"] is True and verified["problems"] == []
    assert verified["active"]["version"] == "1"
    assert verified["files"] == {"checked": 3, "failed": [], "problems": {}}
    assert verified["smoke"]["ok"] is True

    # A model file changed under the version dir (same size, so only a re-hash can tell).
    model = root / "current" / "model.onnx"
    os.chmod(model, 0o644)
    data = bytearray(model.read_bytes())
    data[-1] ^= 0x01
    model.write_bytes(bytes(data))
    broken = run_agent(pyz, root, "verify", {}).data
    assert broken["ok"] is False
    assert broken["files"]["failed"] == ["model.onnx"]
    assert "expected" in broken["files"]["problems"]["model.onnx"]


def test_tampered_golden_never_goes_live_and_the_previous_version_stays(
        pyz: Path, root: Path, tmp_path: Path) -> None:
    v1 = golden_bundle(tmp_path, "1", seed=0)
    push(pyz, root, v1, plan=False)
    v1_dir = read_state(root)["history"][-1]["dir"]
    v2 = golden_bundle(tmp_path, "2", seed=1, logits_shift=0.5)

    failed = activate(pyz, root, v2)
    error = failed.error
    assert error["code"] == "smoke_failed" and error["reason"] == "mismatch"
    assert 0.49 < error["max_abs"] < 0.51 and error["max_rel"] > 0
    logits = next(o for o in error["outputs"] if o["name"] == "logits")
    assert logits["ok"] is False and 0.49 < logits["max_abs"] < 0.51
    assert "output 'logits'" in error["message"] and "max abs 0.5" in error["message"]
    assert "m@1 stays active (m@2 never went live)" in error["message"]
    assert error["rolled_back_to"]["version"] == "1"

    state = read_state(root)
    assert [e["version"] for e in state["history"]] == ["1"] and state["pending"] is None
    assert os.readlink(root / "current") == v1_dir
    assert version_dirs(root) == [v1_dir.split("/")[1]]  # v2's dir is gone, no staging left
    assert cached_inodes(root) <= store_inodes(root)  # no entry for an inode that left the store
    status = run_agent(pyz, root, "status").data
    assert status["active"]["digest"] == v1.digest
    assert run_agent(pyz, root, "plan", v1.request).data["already_active"] is True
    assert run_agent(pyz, root, "verify", {}).data["ok"] is True

    # The same bad bundle again is tested again (not "already active"), and fails again.
    assert activate(pyz, root, v2).error["code"] == "smoke_failed"
    # A correct v2 then goes through, and prune still finds every file it needs.
    good = push(pyz, root, golden_bundle(tmp_path, "2", seed=1), plan=False).data
    assert good["smoke"]["ok"] is True and good["changed"] is True
    assert run_agent(pyz, root, "verify", {}).data["ok"] is True


def test_first_activation_that_fails_to_load_leaves_nothing_active(pyz: Path, root: Path,
                                                                   tmp_path: Path) -> None:
    # The manifest vouches for these bytes (hashes are consistent), as it would for a model
    # built on a control plane whose onnxruntime accepts something the device's rejects.
    bundle = golden_bundle(tmp_path, "1", device_model=b"\x08\x07" + b"not a model" * 20)
    error = activate(pyz, root, bundle).error
    assert error["code"] == "smoke_failed" and error["reason"] == "load_failed"
    assert "model.onnx did not load or run" in error["message"]
    assert "cannot load it" in error["error"]
    assert "nothing is active now" in error["message"]
    assert error["rolled_back_to"] is None and error["max_abs"] is None
    assert not (root / "current").exists() and not (root / "current").is_symlink()
    assert read_state(root)["history"] == []
    assert version_dirs(root) == []
    assert run_agent(pyz, root, "verify", {}).error["code"] == "nothing_active"


def test_malformed_golden_is_refused_before_anything_changes(pyz: Path, root: Path,
                                                             tmp_path: Path) -> None:
    good = golden_bundle(tmp_path, "1")
    manifest = dict(good.manifest, golden=dict(good.manifest["golden"], outputs="nope.npz"))
    bad = Bundle(manifest, manifest_digest(manifest), good.contents)
    error = activate(pyz, root, bad).error
    assert error["code"] == "bad_input" and "nope.npz" in error["message"]
    assert not (root / "current").exists()
    assert not (root / "versions").exists() or version_dirs(root) == []


def endless_model(trips: int = 10**7) -> bytes:
    """The linear model's inputs and outputs, with a Loop of ``trips`` [1,512]x[512,512]
    MatMuls on a state made from ``x`` (so nothing is folded at load) feeding the logits: by
    default a model that runs for hours, as one hanging in a driver would."""
    rng = np.random.default_rng(0)
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("MatMul", ["s_in", "big"], ["s_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [1, 512])])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "p"], ["s0"]),
         helper.make_node("Loop", ["trips", "go", "s0"], ["s"], body=body),
         helper.make_node("ReduceSum", ["s"], ["r"], keepdims=1),
         helper.make_node("Mul", ["r", "zero"], ["nothing"]),
         helper.make_node("MatMul", ["x", "w"], ["h"]),
         helper.make_node("Add", ["h", "nothing"], ["logits"]),
         helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0)],
        "endless",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3]),
         helper.make_tensor_value_info("label", TensorProto.INT64, [1])],
        [numpy_helper.from_array(rng.standard_normal((4, 512)).astype(np.float32), "p"),
         numpy_helper.from_array(np.eye(512, dtype=np.float32), "big"),
         numpy_helper.from_array(np.array(trips, dtype=np.int64), "trips"),
         numpy_helper.from_array(np.array(True), "go"),
         numpy_helper.from_array(np.zeros((1, 1), np.float32), "zero"),
         numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


def test_a_smoke_test_that_never_ends_is_killed_and_the_previous_version_stays(
        pyz: Path, root: Path, tmp_path: Path) -> None:
    """The activation holds the device's lock while its smoke child runs: without a bound, a
    model that hangs kept every later push, rollback and bench waiting for ever."""
    push(pyz, root, golden_bundle(tmp_path, "1"), plan=False)
    slow = golden_bundle(tmp_path, "2", device_model=endless_model())
    upload(root, slow)
    started = time.monotonic()
    run = run_agent(pyz, root, "activate", slow.request,
                    env=agent_env(EDGEFLEET_SMOKE_TIMEOUT_S="2"))
    assert time.monotonic() - started < 50  # run_agent itself gives up at 60 s
    error = run.error
    assert error["code"] == "smoke_failed", error
    assert "took longer than 2 s (EDGEFLEET_SMOKE_TIMEOUT_S) and was killed" in error["message"]
    assert read_state(root)["history"][-1]["version"] == "1"
    assert run_agent(pyz, root, "verify", {}).ok  # the lock is free, version 1 intact


def test_a_failed_activation_leaves_nothing_that_fills_the_disk(pyz: Path, root: Path,
                                                                tmp_path: Path) -> None:
    """Each bundle whose smoke test failed left its blobs in blobs/, and the clean-up came only
    with a successful activation: on a small SD card the free space the plan reports then
    refused every later push, the clean-up that would make room included. The next plan
    removes them (its own blobs kept)."""
    good = golden_bundle(tmp_path, "1")
    push(pyz, root, good, plan=False)
    for seed in (1, 2):
        bad = golden_bundle(tmp_path, f"bad-{seed}", seed, logits_shift=0.5)
        assert activate(pyz, root, bad).error["code"] == "smoke_failed"
    assert len(list((root / "blobs").iterdir())) > len(good.contents)  # as it was left
    (root / "versions" / ".staging-killed").mkdir()  # a copy a SIGKILL interrupted
    (root / "versions" / ".staging-killed" / "model.onnx").write_bytes(b"x" * 4096)
    left = [root / "cache" / ".hashes.json.tmp-0badf00d", root / "trust" / ".sig-killed"]
    for temp in left:  # a kill between a temp file's creation and its rename
        temp.parent.mkdir(exist_ok=True)
        temp.write_bytes(b"{")
    following = golden_bundle(tmp_path, "2", 3)
    model = following.sha_of("model.onnx")  # received by an earlier try, not activated yet
    (root / "blobs" / model).write_bytes(following.contents[model])
    planned = run_agent(pyz, root, "plan", following.request).data
    kept = {p.name for p in (root / "blobs").iterdir()}
    assert kept == set(good.contents) | {model}
    assert not (root / "versions" / ".staging-killed").exists()
    assert not any(temp.exists() for temp in left)
    present = {model} | (set(following.contents) & set(good.contents))  # shared inputs
    assert set(planned["present"]) == present
    assert set(planned["missing"]) == set(following.contents) - present
    assert read_state(root)["history"][-1]["version"] == "1"
    push(pyz, root, following)  # and the next push goes through


def no_golden_bundle(version: str, model: bytes) -> Bundle:
    base = make_bundle("m", version, {"model.onnx": model})
    manifest = dict(base.manifest, model={"path": "model.onnx", "inputs": SIGNATURE})
    return Bundle(manifest, manifest_digest(manifest), base.contents)


def test_without_golden_outputs_the_model_must_still_load(pyz: Path, root: Path) -> None:
    """A bundle without golden outputs (a dimension no --shape resolved, an output that is not
    a tensor) went live unchecked: a model this device's onnxruntime cannot load was found by
    the first bench, with the device already running it. Now its smoke test loads it."""
    loads = push(pyz, root, no_golden_bundle("1", linear_model(0)), plan=False).data
    assert loads["smoke"]["ok"] and loads["smoke"]["load_only"]
    broken = no_golden_bundle("2", linear_model(1)[:-40])  # a truncated export
    error = activate(pyz, root, broken).error
    assert error["code"] == "smoke_failed" and error["reason"] == "load_failed", error
    assert "did not load" in error["message"] and "1 stays active" in error["message"]
    assert read_state(root)["history"][-1]["version"] == "1"


def test_a_rollback_smoke_tests_again_under_an_onnxruntime_that_never_ran_it(
        pyz: Path, root: Path, tmp_path: Path) -> None:
    """Each version records the onnxruntime that passed its smoke test. A rollback to a
    version tested under another one (the device's onnxruntime upgraded since: here the record
    in state.json says so) runs the smoke test again before the swap; a version that fails it
    (here: takes longer than EDGEFLEET_SMOKE_TIMEOUT_S, and is killed) is skipped like one
    that no longer verifies, and the current version stays. Before, a rollback put live a
    model this onnxruntime had never run."""
    first = push(pyz, root, golden_bundle(tmp_path, "1", model=endless_model(20_000)),
                 plan=False).data
    runtime = first["smoke"]["onnxruntime"]
    assert runtime and read_state(root)["history"][0]["smoke_onnxruntime"] == runtime
    push(pyz, root, golden_bundle(tmp_path, "2"), plan=False)

    state = read_state(root)
    state["history"][0]["smoke_onnxruntime"] = "1.0.0"  # passed under another onnxruntime
    (root / "state.json").write_text(json.dumps(state))
    refused = run_agent(pyz, root, "rollback", env=agent_env(EDGEFLEET_SMOKE_TIMEOUT_S="0.2"))
    assert refused.error["code"] == "nothing_to_roll_back", refused.error
    assert (f"m@1: its smoke test fails under onnxruntime {runtime}, which it was not tested "
            "with") in refused.error["message"]
    assert "EDGEFLEET_SMOKE_TIMEOUT_S" in refused.error["message"]
    assert read_state(root)["history"][-1]["version"] == "2"  # nothing moved
    assert run_agent(pyz, root, "verify", {}).data["active"]["version"] == "2"

    rolled = run_agent(pyz, root, "rollback").data  # the default timeout: it passes
    assert rolled["active"]["version"] == "1" and rolled["smoke"]["ok"] is True
    assert rolled["smoke"]["onnxruntime"] == runtime
    assert read_state(root)["history"] == [dict(rolled["active"])]
    assert rolled["active"]["smoke_onnxruntime"] == runtime  # recorded: not run again
