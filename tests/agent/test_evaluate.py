"""``dataset_plan`` / ``dataset_stage`` / ``eval`` through the real zipapp on real ONNX models:
probabilities equal the model's maths computed here in numpy, preprocessing and inference timed
apart, one fresh child per thread count, staged datasets survive a bundle activation's pruning
(and are neither re-sent nor re-hashed), and the errors that say what to do."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from agent_helpers import (
    AgentRun,
    Bundle,
    agent_env,
    fake_sysfs,
    make_bundle,
    push,
    run_agent,
    run_watching,
    stopped,
)
from onnx import TensorProto, helper, numpy_helper

from agent.evaluate import to_probabilities
from agent.protocol import manifest_digest

CLASSES = ["bark", "quiet", "siren"]
W = np.random.default_rng(3).standard_normal((16, 3)).astype(np.float32)
B = np.array([0.1, -0.2, 0.05], dtype=np.float32)


def classifier(input_name: str = "x") -> bytes:
    """logits = x @ W + b and probabilities = softmax(logits); x is [batch, 16]."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", [input_name, "W", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "tiny", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


def model_bundle(version: str = "1", seed_byte: bytes = b"") -> Bundle:
    bundle = make_bundle("tiny", version, {"model.onnx": classifier(),
                                           "notes.txt": b"v" + version.encode() + seed_byte})
    bundle.manifest["model"] = {"path": "model.onnx", "inputs": [
        {"name": "x", "dtype": "float", "shape": ["batch", 16]}]}
    bundle.manifest["labels"] = CLASSES
    bundle.digest = manifest_digest(bundle.manifest)
    return bundle


def dataset(fmt: str, files: dict[str, bytes], samples: list[dict[str, str]]) -> Bundle:
    ds = make_bundle("clips", "1", files)
    ds.manifest.update(kind="dataset", format=fmt, labels=CLASSES, samples=samples,
                       sampling_rate=16000 if fmt == "audio" else None)
    ds.digest = manifest_digest(ds.manifest)
    return ds


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


X = np.random.default_rng(5).standard_normal((6, 16)).astype(np.float32)
LABELS = ["bark", "quiet", "siren", "bark", "quiet", "siren"]


def tensor_dataset() -> Bundle:
    out = io.BytesIO()
    np.savez(out, x=X, labels=np.array([CLASSES.index(label) for label in LABELS]))
    return dataset("tensors", {"tensors.npz": out.getvalue()},
                   [{"id": f"#{i}", "path": "tensors.npz", "label": label}
                    for i, label in enumerate(LABELS)])


def audio_dataset() -> Bundle:
    files = {f"samples/{i:06d}.npy": npy(X[i]) for i in range(len(X))}
    return dataset("audio", files, [{"id": f"{label}/c{i}.wav", "path": f"samples/{i:06d}.npy",
                                     "label": label} for i, label in enumerate(LABELS)])


def stage(pyz: Path, root: Path, ds: Bundle, env: dict[str, str]) -> dict[str, Any]:
    """What the control plane does: plan, upload what is missing, stage."""
    planned = run_agent(pyz, root, "dataset_plan", ds.request, env=env).data
    incoming = root / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    for sha in planned["missing"]:
        part = incoming / f"{sha}.part"
        part.write_bytes(ds.contents[sha])
        os.utime(part, (time.time() - 3600, time.time() - 3600))  # old enough to be cached
    staged = run_agent(pyz, root, "dataset_stage", ds.request, env=env).data
    return {"plan": planned, "stage": staged}


def evaluate(pyz: Path, root: Path, bundle: Bundle, ds: Bundle, env: dict[str, str],
             **fields: Any) -> AgentRun:
    return run_agent(pyz, root, "eval", dict({"digest": bundle.digest, "dataset": ds.digest,
                                              "threads": [1, 2], "warmup": 1}, **fields), env=env)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return agent_env(EDGEFLEET_SYSFS=str(fake_sysfs(tmp_path / "hw", throttled_file="0\n")))


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("make", [tensor_dataset, audio_dataset])
def test_eval_gives_the_models_probabilities_per_thread_count(
        pyz: Path, root: Path, env: dict[str, str], make: Any) -> None:
    bundle, ds = model_bundle(), make()
    push(pyz, root, bundle, env=env)
    first = stage(pyz, root, ds, env)
    assert first["stage"]["changed"] and first["plan"]["missing"]
    manifest = json.loads((root / first["stage"]["dir"] / ".edgefleet-dataset.json").read_text())
    assert manifest == ds.manifest
    run = evaluate(pyz, root, bundle, ds, env)
    data = run.data
    assert data["dataset"] == {"name": "clips", "version": "1", "digest": ds.digest,
                               "format": ds.manifest["format"], "samples": 6}
    assert data["labels"] == CLASSES and data["bundle"]["digest"] == bundle.digest
    expected = softmax(X.astype(np.float64) @ W + B)
    assert [r["threads"] for r in data["results"]] == [1, 2]
    for result in data["results"]:
        assert result["ok"], result["error"]
        assert result["output"] == "probabilities"
        assert [(s["id"], s["label"]) for s in result["samples"]] == [
            (s["id"], s["label"]) for s in ds.manifest["samples"]]
        probs = np.array([s["probs"] for s in result["samples"]])
        np.testing.assert_allclose(probs, expected, atol=1e-5)
        assert all(s["pre_ms"] >= 0 and s["infer_ms"] > 0 for s in result["samples"])
        assert result["latencies_ms"] == [s["infer_ms"] for s in result["samples"]]
        assert result["latency_ms"]["n"] == 6 and result["preprocessing_ms"]["n"] == 6
        assert result["load_ms"] > 0 and result["first_inference_ms"] > 0
        assert result["peak_rss_mb"] > 0
        assert result["telemetry"]["status"] == "clean" and result["valid"] is True
        assert result["telemetry"]["temp_c_max"] == 61.5
    pids = {(e["threads"], e["pid"]) for e in run.events if e["event"] == "eval"}
    assert len({pid for _, pid in pids}) == 2 and {t for t, _ in pids} == {1, 2}
    assert {e["phase"] for e in run.events if e["event"] == "eval"} >= {"load", "samples"}


def inode_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}"


def test_a_staged_dataset_survives_pruning_and_is_not_resent(pyz: Path, root: Path,
                                                             env: dict[str, str]) -> None:
    ds = tensor_dataset()
    push(pyz, root, model_bundle("1"), env=env)
    stage(pyz, root, ds, env)
    blob = next(iter(ds.contents))
    assert (root / "blobs" / blob).is_file()
    push(pyz, root, model_bundle("2"), env=env)  # activation prunes unreferenced blobs
    assert not (root / "blobs" / blob).exists()
    staged_file = next((root / "datasets").iterdir()) / "tensors.npz"
    assert hashlib.sha256(staged_file.read_bytes()).hexdigest() == blob
    cache = json.loads((root / "cache" / "hashes.json").read_text())
    assert inode_key(staged_file) in cache  # still vouched for: no re-hash next time
    again = stage(pyz, root, ds, env)
    assert again["plan"]["already_staged"] and again["plan"]["missing"] == []
    assert again["stage"]["changed"] is False
    assert evaluate(pyz, root, model_bundle("2"), ds, env, threads=[1]).data["results"][0]["ok"]


def test_prunes_meanwhile_keep_what_an_eval_reads(pyz: Path, root: Path, tmp_path: Path,
                                                  env: dict[str, str]) -> None:
    """Four bundles and four datasets staged while an eval runs push its version and its
    dataset out; before agent.inuse their prunes deleted both under it (the second thread
    count found no model). Now both stay until the eval is over."""
    bundle, ds = model_bundle("1"), tensor_dataset()
    measured_dir = push(pyz, root, bundle, env=env).data["dir"]
    dataset_dir = stage(pyz, root, ds, env)["stage"]["dir"]
    pruned: list[str] = []

    def push_and_stage_others(ev: dict[str, Any]) -> None:
        if not pruned and ev["event"] == "eval" and ev["threads"] == 1:
            with stopped(ev):
                for n in range(2, 6):
                    pruned.extend(push(pyz, root, model_bundle(str(n)), env=env).data["pruned"])
                    other = dataset("tensors", {"tensors.npz": npy(X * n)},
                                    [{"id": "#0", "path": "tensors.npz", "label": "bark"}])
                    pruned.extend(stage(pyz, root, other, env)["stage"]["pruned"])
                pruned.append("done")

    run = run_watching(pyz, root, "eval", {"digest": bundle.digest, "dataset": ds.digest,
                                           "threads": [1, 2], "warmup": 1}, env,
                       push_and_stage_others)
    assert pruned == ["done"]  # both in use: kept
    assert [(r["threads"], r["ok"]) for r in run.data["results"]] == [(1, True), (2, True)]
    after = push(pyz, root, model_bundle("6"), env=env,  # nobody reads them now
                 plan=False).data  # (a plan would prune it first: activate's says so)
    assert measured_dir in after["pruned"] and not (root / measured_dir).exists()
    last = dataset("tensors", {"tensors.npz": npy(X * 7)},
                   [{"id": "#0", "path": "tensors.npz", "label": "bark"}])
    assert dataset_dir in stage(pyz, root, last, env)["stage"]["pruned"]


def test_eval_errors_say_what_to_do(pyz: Path, root: Path, env: dict[str, str]) -> None:
    bundle, ds = model_bundle(), tensor_dataset()
    absent = evaluate(pyz, root, bundle, ds, env).error
    assert absent["code"] == "not_on_device" and "edgefleet push" in absent["message"]
    assert "evaluate it" in absent["message"]
    push(pyz, root, bundle, env=env)
    unstaged = evaluate(pyz, root, bundle, ds, env).error
    assert unstaged["code"] == "dataset_not_on_device" and "edgefleet eval" in unstaged["message"]
    stage(pyz, root, ds, env)
    bad = evaluate(pyz, root, bundle, ds, env, threads=[0]).error
    assert bad["code"] == "bad_input" and "threads" in bad["message"]
    tampered = next((root / "datasets").iterdir()) / "tensors.npz"
    tampered.chmod(0o644)
    content = bytearray(tampered.read_bytes())
    content[len(content) // 2] ^= 0xFF
    tampered.write_bytes(bytes(content))
    broken = evaluate(pyz, root, bundle, ds, env).error
    assert broken["code"] == "dataset_not_on_device" and "tensors.npz" in broken["message"]
    restaged = stage(pyz, root, ds, env)  # the damaged copy is replaced
    assert restaged["stage"]["changed"] and restaged["plan"]["missing"]
    assert evaluate(pyz, root, bundle, ds, env, threads=[1]).data["results"][0]["ok"]


def test_probability_rule() -> None:
    assert to_probabilities([[0.2, 0.8]]) == [0.2, 0.8]  # already a distribution
    logits = to_probabilities([2.0, 0.0])
    assert logits[0] == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert to_probabilities([0.3]) == pytest.approx([0.7, 0.3])  # one score = P(class 1)
    assert to_probabilities([0.0]) == [1.0, 0.0]
    assert to_probabilities([3.0]) == pytest.approx([1 - 1 / (1 + np.exp(-3.0)),
                                                     1 / (1 + np.exp(-3.0))])
    assert to_probabilities([0.5, 0.6]) == pytest.approx(list(softmax(np.array([[0.5, 0.6]]))[0]))
    with pytest.raises(ValueError, match="NaN"):
        to_probabilities([float("nan"), 1.0])
