"""The trained demo model: a real classifier, reproducible, accurate on unseen audio in FP32 and
after dynamic INT8 quantisation, with features computed by the device's own code from WAV files
read back independently (scipy), as an on-device eval would."""

from __future__ import annotations

import hashlib
import json
import wave
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from scipy.io import wavfile

from agent.features import load_feature_extractor
from orchestrator.demo import train
from orchestrator.demo.audio import (
    DEMO_EVAL_SEED,
    DEMO_EVAL_WINDOWS,
    LABELS,
    SAMPLING_RATE,
    WINDOW_S,
    write_eval_set,
)
from orchestrator.demo.model import (
    BUNDLE_FILES,
    TRAINED_FRAMES,
    TRAINED_MELS,
    make_trained_classifier,
)

TRAIN_SEED = 0
assert DEMO_EVAL_SEED != TRAIN_SEED  # the eval set must be audio the model never saw


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full demo model, generated once for the module (a few seconds)."""
    return make_trained_classifier(tmp_path_factory.mktemp("model") / "first-crack",
                                   seed=TRAIN_SEED)


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_eval_set(tmp_path_factory.mktemp("eval"), DEMO_EVAL_WINDOWS, DEMO_EVAL_SEED)


def _read_features(bundle: Path, wavs: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Features [n, frames, mels] and labels (1 = first crack) of WAV files, the device's way."""
    extractor = load_feature_extractor(
        json.loads((bundle / "preprocessor_config.json").read_text()))
    assert extractor is not None
    features, labels = [], []
    for path in wavs:
        rate, pcm = wavfile.read(path)
        assert rate == SAMPLING_RATE and pcm.dtype == np.int16
        features.append(extractor(pcm.astype(np.float32) / 32768.0))
        labels.append(LABELS.index(path.parent.name))
    return np.concatenate(features), np.array(labels)


def _logits(model: Path, features: np.ndarray) -> np.ndarray:
    """One window per run, as the device evaluates."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["logits"], {"input_values": features[i:i + 1]})[0]
                           for i in range(len(features))])


def _hashes(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
            for name in BUNDLE_FILES}


def test_eval_set_layout_labels_and_format(tmp_path: Path, eval_set: list[Path]) -> None:
    root = eval_set[0].parent.parent
    assert len(eval_set) == DEMO_EVAL_WINDOWS == len({p.name for p in eval_set})
    assert sorted(p.name for p in root.iterdir()) == ["first_crack", "no_first_crack"]
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*.wav")) == \
        sorted(str(p.relative_to(root)) for p in eval_set)
    positives = sum(p.parent.name == "first_crack" for p in eval_set)
    assert positives == round(DEMO_EVAL_WINDOWS * 0.25)
    with wave.open(str(eval_set[0])) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == \
            (1, 2, SAMPLING_RATE, int(WINDOW_S * SAMPLING_RATE))
    rate, pcm = wavfile.read(eval_set[0])
    assert 0 < np.abs(pcm).max() < 32767  # real audio, not silence, not clipped
    again = write_eval_set(tmp_path / "again", DEMO_EVAL_WINDOWS, DEMO_EVAL_SEED)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in eval_set]
    other = write_eval_set(tmp_path / "other", 4, DEMO_EVAL_SEED + 1)
    assert other[0].read_bytes() != eval_set[0].read_bytes()
    with pytest.raises(ValueError, match="at least one window"):
        write_eval_set(tmp_path / "empty", 0, 1)


def test_bundle_files_and_model_signature(bundle: Path) -> None:
    assert sorted(p.name for p in bundle.iterdir()) == sorted(BUNDLE_FILES)
    config = json.loads((bundle / "config.json").read_text())
    assert config["id2label"] == {"0": "no_first_crack", "1": "first_crack"}
    assert config["label2id"] == {"no_first_crack": 0, "first_crack": 1}
    pre = json.loads((bundle / "preprocessor_config.json").read_text())
    assert pre["feature_extractor_type"] == "ASTFeatureExtractor"
    assert (pre["sampling_rate"], pre["num_mel_bins"], pre["max_length"]) == \
        (16000, TRAINED_MELS, TRAINED_FRAMES) == (16000, 64, 198)
    assert pre["do_normalize"] is True and pre["std"] > 0 and pre["padding_value"] == 0.0

    model = onnx.load(str(bundle / "model.onnx"))
    onnx.checker.check_model(model)
    assert (model.ir_version, model.opset_import[0].version) == (8, 17)
    ops = {node.op_type for node in model.graph.node}
    assert "MatMul" in ops and "Conv" not in ops
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    [inp] = session.get_inputs()
    assert (inp.name, inp.type, inp.shape) == ("input_values", "tensor(float)",
                                                ["batch", 198, 64])
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("logits", ["batch", 2])]

    samples = np.load(bundle / "sample_inputs.npz")
    assert list(samples) == ["input_values"]
    x = samples["input_values"]
    assert x.dtype == np.float32 and x.shape == (1, 198, 64) and np.isfinite(x).all()
    assert x.std() > 0.1  # normalised real features, not padding
    # A batch gives what single runs give (the batch dimension really is dynamic).
    batch = np.concatenate([x, x[:, ::-1]])
    np.testing.assert_allclose(session.run(None, {"input_values": batch})[0],
                               _logits(bundle / "model.onnx", batch), rtol=1e-5, atol=1e-5)


def test_onnx_graph_computes_the_trained_network(bundle: Path, eval_set: list[Path]) -> None:
    """The exported graph (TopK pooling and all) equals the numpy network it was trained as."""
    model = onnx.load(str(bundle / "model.onnx"))
    params = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
              if t.name != "top_k"}
    features, _ = _read_features(bundle, eval_set[:8])
    np.testing.assert_allclose(_logits(bundle / "model.onnx", features),
                               train.forward(params, features)["logits"],
                               rtol=1e-4, atol=1e-4)


def test_fp32_and_int8_accuracy_on_unseen_wavs(bundle: Path, eval_set: list[Path],
                                               tmp_path: Path) -> None:
    features, labels = _read_features(bundle, eval_set)
    fp32 = _logits(bundle / "model.onnx", features).argmax(axis=1)
    accuracy = float(np.mean(fp32 == labels))
    assert accuracy >= 0.85, f"FP32 accuracy {accuracy:.3f} on {len(labels)} unseen windows"
    assert set(fp32) == {0, 1}  # a real classifier, not a constant

    int8_path = tmp_path / "model.int8.onnx"
    quantize_dynamic(str(bundle / "model.onnx"), str(int8_path), weight_type=QuantType.QInt8)
    assert int8_path.stat().st_size * 2 < (bundle / "model.onnx").stat().st_size
    ops = {node.op_type for node in onnx.load(str(int8_path)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"}, ops
    int8 = _logits(int8_path, features).argmax(axis=1)
    int8_accuracy = float(np.mean(int8 == labels))
    assert int8_accuracy >= 0.8, f"INT8 accuracy {int8_accuracy:.3f}"
    assert np.mean(int8 == fp32) >= 0.9  # quantisation moves few decisions


def test_generation_is_byte_identical_and_cached(tmp_path: Path) -> None:
    """Same seed, same bytes (a small training set keeps this cheap; same code path); the cache
    hands back the same files without regenerating."""
    first = make_trained_classifier(tmp_path / "a", seed=3, train_windows=32)
    second = make_trained_classifier(tmp_path / "b", seed=3, train_windows=32)
    assert _hashes(first) == _hashes(second)
    other = make_trained_classifier(tmp_path / "c", seed=4, train_windows=32)
    assert _hashes(other)["model.onnx"] != _hashes(first)["model.onnx"]

    cache = tmp_path / "cache"
    cached = make_trained_classifier(tmp_path / "d", seed=3, train_windows=32, cache_dir=cache)
    assert _hashes(cached) == _hashes(first)
    [entry] = list(cache.iterdir())
    stamps = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}
    again = make_trained_classifier(tmp_path / "e", seed=3, train_windows=32, cache_dir=cache)
    assert _hashes(again) == _hashes(first)
    assert [p.name for p in cache.iterdir()] == [entry.name]
    assert {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == stamps
    with pytest.raises(ValueError, match="train_windows"):
        make_trained_classifier(tmp_path / "f", train_windows=2)


def test_training_features_are_the_device_features() -> None:
    """The model learns exactly what the device computes: agent.features, normalised with the
    training set's mean/std that go into preprocessor_config.json."""
    from orchestrator.demo.audio import make_windows
    from orchestrator.demo.model import _features

    waves, _ = make_windows(4, seed=5)
    features, config = _features(waves)
    extractor = load_feature_extractor(config)
    assert extractor is not None
    for wave_, row in zip(waves, features, strict=True):
        np.testing.assert_array_equal(extractor(wave_)[0], row)
