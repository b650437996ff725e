"""Evaluation end to end over real OpenSSH on three hosts: a WAV folder (8 kHz stereo) becomes
a 16 kHz dataset, is pushed once, the devices compute AST log-mel features in numpy and run the
model; every metric equals scikit-learn's on the probabilities the devices returned, the devices
agree, ``runs show`` says so, and a second eval sends no dataset bytes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from scipy.io import wavfile
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from agent.features import load_feature_extractor
from orchestrator.demo.audio import write_eval_set
from orchestrator.demo.model import make_trained_classifier

from ..conftest import Cli
from .test_push_e2e import setup_fleet

PRE = {"feature_extractor_type": "ASTFeatureExtractor", "sampling_rate": 16000,
       "num_mel_bins": 16, "max_length": 64, "feature_size": 1, "do_normalize": True,
       "mean": -4.2677393, "std": 4.5689974, "padding_value": 0.0}
LABELS = ["background", "crack"]


def clips(seed: int) -> dict[str, list[np.ndarray]]:
    """0.6 s stereo int16 at 8 kHz: quiet noise, or noise with a few loud pops."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {"background": [], "crack": []}
    for label in LABELS:
        for _ in range(5):
            noise = rng.normal(0, rng.uniform(200, 2500), size=(4800, 2))
            if label == "crack":
                for start in rng.integers(0, 4600, size=int(rng.integers(1, 5))):
                    noise[start:start + 120] += rng.normal(0, 9000, size=(120, 2))
            out[label].append(np.clip(noise, -32768, 32767).astype(np.int16))
    return out


def energy_classifier(folder: Path, bias: float) -> None:
    """P(crack) = softmax over [0, mean log-mel feature + bias]: a model with a real threshold."""
    weights = np.zeros((16, 2), dtype=np.float32)
    weights[:, 1] = 1.0 / 16
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input_values"], ["pooled"], axes=[1], keepdims=0),
         helper.make_node("Gemm", ["pooled", "W", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "energy", [helper.make_tensor_value_info("input_values", TensorProto.FLOAT,
                                                 ["batch", 64, 16])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(weights, "W"),
         numpy_helper.from_array(np.array([0.0, bias], dtype=np.float32), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir()
    (folder / "model.onnx").write_bytes(model.SerializeToString(deterministic=True))
    (folder / "config.json").write_text(json.dumps({"id2label": dict(enumerate(LABELS))}))
    (folder / "preprocessor_config.json").write_text(json.dumps(PRE))


def median_score(data: dict[str, list[np.ndarray]]) -> float:
    """The mean feature of a clip whose score sits in the middle, computed here with the same
    filterbank: the bias puts the decision boundary among the clips, so both classes occur."""
    from scipy.signal import resample_poly

    extractor = load_feature_extractor(PRE)
    assert extractor is not None
    scores = [float(extractor(resample_poly(c.mean(axis=1) / 32768.0, 2, 1)
                              .astype(np.float32)).mean())
              for arrays in data.values() for c in arrays]
    return float(np.median(scores))


def sklearn_metrics(result: dict, labels: list[str] = LABELS) -> dict:
    samples = result["eval"]["samples"]
    truth = [labels.index(s["label"]) for s in samples]
    p_crack = np.array([s["probs"][1] for s in samples])
    pred = (p_crack >= 0.5).astype(int)
    precision, recall, f1, _ = precision_recall_fscore_support(truth, pred, average="binary",
                                                               zero_division=0)
    return {"accuracy": accuracy_score(truth, pred), "precision": precision, "recall": recall,
            "f1": f1, "roc_auc": roc_auc_score(truth, p_crack),
            "confusion_matrix": confusion_matrix(truth, pred, labels=[0, 1]).tolist(),
            "pred": [labels[p] for p in pred]}


def test_eval_on_three_devices_matches_sklearn_and_agrees(cli: Cli, sshd_factory,
                                                          tmp_path: Path) -> None:
    hosts = sshd_factory(3)
    setup_fleet(cli, tmp_path, hosts)
    data = clips(0)
    wavs = tmp_path / "wavs"
    for label, arrays in data.items():
        (wavs / label).mkdir(parents=True)
        for i, clip in enumerate(arrays):
            wavfile.write(wavs / label / f"clip{i}.wav", 8000, clip)
    energy_classifier(tmp_path / "model", -median_score(data))
    cli("bundle", "build", tmp_path / "model", "--name", "crack")
    cli("push", "crack", "pis")
    built = cli("dataset", "build", wavs, "--name", "roast", "--for", "crack", "--json").json
    assert built["sampling_rate"] == 16000 and built["samples"] == 10

    out = cli("eval", "crack", "roast", "pis", "--threads", "1,2", "--json").json
    assert out["kind"] == "eval" and out["state"] == "succeeded"
    assert [o["dataset_bytes_sent"] for o in out["outcomes"]] == [built["size_bytes"]] * 3
    results = out["results"]
    assert [(r["device"], r["threads"]) for r in results] == [
        (h.name, t) for h in hosts for t in (1, 2)]
    for r in results:
        assert r["ok"] and r["valid"] is True, r
        metrics, expected = r["eval"]["metrics"], sklearn_metrics(r)
        for key in ("accuracy", "precision", "recall", "f1", "roc_auc"):
            assert metrics[key] == np.float64(expected[key]).item() or abs(
                metrics[key] - expected[key]) < 1e-12, (key, metrics[key], expected[key])
        assert metrics["confusion_matrix"] == expected["confusion_matrix"]
        assert [s["pred"] for s in r["eval"]["samples"]] == expected["pred"]
        assert set(expected["pred"]) == set(LABELS)  # a real decision, not one constant class
        assert len(r["eval"]["preprocessing_ms"]) == 10 and r["latency_ms"]["n"] == 10
        assert all(ms > 0 for ms in r["eval"]["preprocessing_ms"])
        sweep = metrics["sweep"]
        assert [row["threshold"] for row in sweep] == [round(0.5 + 0.05 * i, 2) for i in range(10)]
        assert metrics["recommended"]["threshold"] in [row["threshold"] for row in sweep]
    probs = [[s["probs"] for s in r["eval"]["samples"]] for r in results]
    assert all(np.allclose(p, probs[0], atol=1e-6) for p in probs)
    agreement = out["agreement"]
    assert agreement["same_confusion"] is True and agreement["differing"] == []
    assert len(agreement["keys"]) == 6

    shown = cli("runs", "show", str(out["id"])).stdout
    assert "all 6 results produced the same confusion matrix" in shown
    assert "ROC AUC" in shown and "true \\ predicted" in shown and "recommended threshold" in shown
    assert cli("runs", "show", str(out["id"]), "--json").json["agreement"] == agreement
    markdown = cli("runs", "show", str(out["id"]), "--format", "md").stdout
    assert markdown.count("| pi") >= 6 and "same confusion matrix" in markdown
    csv_text = cli("runs", "show", str(out["id"]), "--format", "csv").stdout
    assert len(csv_text.strip().splitlines()) == 1 + 6

    again = cli("eval", "crack", "roast", "pis", "--threshold-sweep").stdout
    assert "threshold sweep" in again and "all 3 devices produced the same" in again
    second = cli("runs", "list", "--json").json[0]
    assert second["kind"] == "eval" and second["id"] == out["id"] + 1
    rerun = cli("runs", "show", str(second["id"]), "--json").json
    assert [r["eval"]["metrics"]["confusion_matrix"] for r in rerun["results"]] == [
        results[0]["eval"]["metrics"]["confusion_matrix"]] * 3


def test_eval_refuses_unpushed_bundles_per_device(cli: Cli, sshd_factory,
                                                  tmp_path: Path) -> None:
    hosts = sshd_factory(2)
    setup_fleet(cli, tmp_path, hosts)
    energy_classifier(tmp_path / "model", 0.0)
    cli("bundle", "build", tmp_path / "model", "--name", "crack")
    cli("push", "crack", hosts[0].name)
    wavs = tmp_path / "wavs"
    for label, arrays in clips(1).items():
        (wavs / label).mkdir(parents=True)
        wavfile.write(wavs / label / "a.wav", 8000, arrays[0])
    cli("dataset", "build", wavs, "--name", "roast", "--for", "crack")
    out = cli("eval", "crack", "roast", "pis", "--json", expect=1).json
    assert out["state"] == "partial"
    by_device = {r["device"]: r for r in out["results"]}
    assert by_device[hosts[0].name]["ok"]
    failed = by_device[hosts[1].name]
    assert not failed["ok"] and f"edgefleet push crack@1 {hosts[1].name}" in failed["error"]
    assert out["agreement"]["keys"] == [hosts[0].name]


def test_demo_model_on_the_demo_wav_set_over_three_hosts(cli: Cli, sshd_factory,
                                                         tmp_path: Path,
                                                         demo_model_cache: Path) -> None:
    """The demo's trained detector, its INT8 variant and its 64 unseen WAV windows: pushed with
    a passing smoke test, evaluated on every host; metrics equal scikit-learn's on the returned
    probabilities, the accuracy is a trained model's, and the hosts agree."""
    hosts = sshd_factory(3)
    setup_fleet(cli, tmp_path, hosts)
    folder = make_trained_classifier(tmp_path / "first-crack", cache_dir=demo_model_cache)
    write_eval_set(tmp_path / "eval")
    built = cli("bundle", "build", folder, "--name", "first-crack", "--quantize", "int8",
                "--json").json
    assert built["variants"][0]["version"] == "1-int8" and built["variants"][0]["golden"]
    pushed = cli("push", "first-crack@1-int8", "pis", "--json").json
    assert all(p["state"] == "active" and p["smoke"]["ok"] is True for p in pushed)
    cli("dataset", "build", tmp_path / "eval", "--name", "roast", "--for", "first-crack@1-int8")
    out = cli("eval", "first-crack@1-int8", "roast", "pis", "--json").json
    labels = built["bundle"]["labels"]
    assert labels == ["no_first_crack", "first_crack"]
    for r in out["results"]:
        assert r["ok"] and len(r["eval"]["samples"]) == 64, r
        metrics, expected = r["eval"]["metrics"], sklearn_metrics(r, labels)
        for key in ("accuracy", "precision", "recall", "f1", "roc_auc"):
            assert abs(metrics[key] - expected[key]) < 1e-12, (key, metrics[key], expected[key])
        assert metrics["confusion_matrix"] == expected["confusion_matrix"]
        assert 0.85 <= metrics["accuracy"] < 1.0 and metrics["roc_auc"] > 0.9
    assert out["agreement"]["same_confusion"] is True
