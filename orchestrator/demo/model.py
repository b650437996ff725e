"""Real ONNX models for the demo, the tests and the push benchmark.

``make_demo_classifier`` builds a small audio classifier (a CNN over log-mel frames, the shape of
a keyword-spotting or bark detector); its weights are seeded random numbers, so it is a real
model to load, run and time, not a trained one. ``make_large_model`` builds a valid model of
roughly a given size for measuring pushes. Both are written with opset 17 / IR version 8, which
the older onnxruntime builds found on Raspberry Pis load, and both are byte-identical for the
same arguments.

``make_trained_classifier`` is the demo's first-crack detector: a small network genuinely trained
here, in numpy, on synthetic roaster audio (orchestrator/demo/audio.py) turned into features by
the very code the device runs (agent/features.py), so the demo's on-device evaluation, threshold
sweep and verdict show real numbers (the network and its training: orchestrator/demo/train.py).
The demo calls ``make_trained_classifier(home / "models" / "first-crack", cache_dir=...)`` and
``demo.audio.write_eval_set(home / "eval")`` (64 windows the model never saw, 16 first crack);
``TRAINED_STREAMING_PROFILE`` is a streaming profile that fits the model's 2 s windows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent import features as agent_features
from agent.features import load_feature_extractor
from orchestrator.artifacts.golden import npz_bytes
from orchestrator.demo import audio, train
from orchestrator.demo.audio import NEGATIVE, POSITIVE, SAMPLING_RATE, WINDOW_S, make_windows

__all__ = [
    "N_FRAMES",
    "N_MELS",
    "TRAINED_FRAMES",
    "TRAINED_MELS",
    "make_demo_classifier",
    "make_large_model",
    "make_trained_classifier",
]

OPSET = 17
IR_VERSION = 8
N_FRAMES = 98  # 1 s of audio at a 10 ms hop
N_MELS = 40
CLASSES = ("background", "event")
_MIB = 1024 * 1024


def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """He-normal weights, float32."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _finish(graph: onnx.GraphProto, path: Path, doc: str,
            metadata: dict[str, str] | None = None) -> Path:
    """Wrap ``graph`` in a checked opset-17 / IR-8 model and write it to ``path``."""
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edgefleet",
        producer_version="demo",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path


def make_demo_classifier(path: Path, *, seed: int = 0) -> Path:
    """Write a small two-class audio CNN to ``path`` and return ``path``.

    Input ``log_mel``: float32 ``[batch, 1, 98, 40]`` (``batch`` is a named dynamic dimension).
    Outputs ``logits`` float32 ``[batch, 2]`` and ``probabilities`` (their softmax).
    Graph: Conv(8, 3x3) + Relu + MaxPool(2x2) -> Conv(16, 3x3) + Relu -> GlobalAveragePool ->
    Flatten -> Gemm. The same ``seed`` gives a byte-identical file.
    """
    rng = np.random.default_rng(seed)
    weights = {
        "conv1.weight": _he(rng, (8, 1, 3, 3), 1 * 9),
        "conv1.bias": (rng.standard_normal(8) * 0.01).astype(np.float32),
        "conv2.weight": _he(rng, (16, 8, 3, 3), 8 * 9),
        "conv2.bias": (rng.standard_normal(16) * 0.01).astype(np.float32),
        "fc.weight": _he(rng, (len(CLASSES), 16), 16),
        "fc.bias": np.zeros(len(CLASSES), dtype=np.float32),
    }
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["log_mel", "conv1.weight", "conv1.bias"], ["c1"], **conv),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], **conv),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "edgefleet_demo_audio_cnn",
        inputs=[
            helper.make_tensor_value_info(
                "log_mel", TensorProto.FLOAT, ["batch", 1, N_FRAMES, N_MELS]
            )
        ],
        outputs=[
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(CLASSES)]),
            helper.make_tensor_value_info(
                "probabilities", TensorProto.FLOAT, ["batch", len(CLASSES)]
            ),
        ],
        initializer=[numpy_helper.from_array(w, name) for name, w in weights.items()],
    )
    return _finish(
        graph,
        path,
        f"EdgeFleet demo audio classifier (untrained, seed {seed}); classes: {', '.join(CLASSES)}",
    )


def make_large_model(path: Path, megabytes: float, *, seed: int = 0) -> Path:
    """Write a valid ONNX model of roughly ``megabytes`` MiB to ``path`` and return ``path``.

    One MatMul, ``x`` float32 ``[batch, rows]`` times a random ``[rows, 64]`` weight -> ``y``.
    The weights are random so the file does not compress (an honest push benchmark). Protobuf
    caps a single-file model at 2 GiB, so ``megabytes`` must be below 2000.
    """
    if not 0 < megabytes < 2000:
        raise ValueError(f"megabytes must be in (0, 2000), got {megabytes}")
    cols = 64
    rows = max(1, round(megabytes * _MIB / (cols * 4)))
    weight = np.random.default_rng(seed).standard_normal((rows, cols), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "weight"], ["y"])],
        "edgefleet_large_matmul",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", rows])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", cols])],
        initializer=[numpy_helper.from_array(weight, "weight")],
    )
    del weight
    return _finish(graph, path, f"EdgeFleet push-benchmark model, ~{megabytes} MiB (seed {seed})")


# --- The trained first-crack classifier ----------------------------------------------------------

TRAINED_MELS = 64
TRAINED_FRAMES = 1 + (int(round(WINDOW_S * SAMPLING_RATE)) - 400) // 160  # Kaldi framing: 198
TRAINED_LABELS = {"0": NEGATIVE, "1": POSITIVE}
GENERATOR_VERSION = "1"
TRAIN_WINDOWS = 800
# Set to 1 in the generating child process (see _generate_single_threaded).
_BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
BUNDLE_FILES = ("config.json", "model.onnx", "preprocessor_config.json", "sample_inputs.npz")
# A streaming profile that fits the model (docs/pipeline.md): 2 s windows every second.
TRAINED_STREAMING_PROFILE = {"window_s": WINDOW_S, "hop_s": WINDOW_S / 2, "threshold": 0.5,
                             "min_positive": 2, "confirm_windows": 3}


def _preprocessor_config(mean: float, std: float) -> dict[str, Any]:
    """An AST-style preprocessor_config.json: what bundles.read_side_files and the agent read."""
    return {
        "feature_extractor_type": "ASTFeatureExtractor",
        "feature_size": 1,
        "sampling_rate": SAMPLING_RATE,
        "num_mel_bins": TRAINED_MELS,
        "max_length": TRAINED_FRAMES,
        "padding_value": 0.0,
        "do_normalize": True,
        "mean": mean,
        "std": std,
        "return_attention_mask": False,
    }


def _features(waves: list[np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
    """Normalised features [n, frames, mels] exactly as the device computes them, and the config.

    The log-mels come from agent.features (the device's code), so the model learns the features
    it will see in an eval; mean and std are the training set's, written into the config.
    """
    raw = _preprocessor_config(0.0, 0.5)
    raw["do_normalize"] = False
    plain = load_feature_extractor(raw)
    assert plain is not None
    mels = np.concatenate([plain(w) for w in waves])
    config = _preprocessor_config(round(float(mels.mean(dtype=np.float64)), 6),
                                  round(float(mels.std(dtype=np.float64)), 6))
    extractor = load_feature_extractor(config)
    assert extractor is not None
    # Normalised in float32 with float32 constants, as the extractor (and the reference) does.
    return (mels - np.float32(extractor.mean)) / np.float32(extractor.std * 2), config


def _export(p: dict[str, np.ndarray], path: Path, doc: str,
            metadata: dict[str, str]) -> Path:
    """The trained network (orchestrator/demo/train.py) as ONNX, computing what ``forward`` does.

    MatMul/Gemm only, no Conv: onnxruntime's dynamic INT8 turns them into MatMulInteger, which
    is fast on ARM (dynamic ConvInteger is not), so ``bundle build --quantize int8`` suits it.
    """
    nodes = [
        helper.make_node("ReduceMean", ["input_values"], ["window_mean"], axes=[1], keepdims=1),
        helper.make_node("MatMul", ["input_values", "w1"], ["m1"]),
        helper.make_node("MatMul", ["window_mean", "w1c"], ["m1c"]),
        helper.make_node("Sub", ["m1", "m1c"], ["s1"]),
        helper.make_node("Add", ["s1", "b1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["h1"]),
        helper.make_node("MatMul", ["h1", "w2"], ["m2"]),
        helper.make_node("Add", ["m2", "b2"], ["a2"]),
        helper.make_node("Relu", ["a2"], ["h2"]),
        helper.make_node("ReduceMax", ["h2"], ["pool_max"], axes=[1], keepdims=0),
        helper.make_node("TopK", ["h2", "top_k"], ["top_values", "top_indices"], axis=1),
        helper.make_node("ReduceMean", ["top_values"], ["pool_top"], axes=[1], keepdims=0),
        helper.make_node("ReduceMean", ["h2"], ["pool_mean"], axes=[1], keepdims=0),
        helper.make_node("Concat", ["pool_max", "pool_top", "pool_mean"], ["pooled"], axis=1),
        helper.make_node("Gemm", ["pooled", "w3", "b3"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "edgefleet_first_crack_mlp",
        inputs=[helper.make_tensor_value_info(
            "input_values", TensorProto.FLOAT, ["batch", TRAINED_FRAMES, TRAINED_MELS])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(w, name) for name, w in sorted(p.items())]
        + [numpy_helper.from_array(np.array([train.TOP_K], dtype=np.int64), "top_k")],
    )
    return _finish(graph, path, doc, metadata)


def _generate(folder: Path, seed: int, train_windows: int = TRAIN_WINDOWS) -> None:
    """Synthesise, featurise, train and write the four bundle files into ``folder``."""
    waves, labels = make_windows(train_windows, seed)
    x, config = _features(waves)
    params = train.train(x, labels, seed)
    train_accuracy = float(np.mean(
        train.forward(params, x)["logits"].argmax(axis=1) == labels))
    folder.mkdir(parents=True, exist_ok=True)
    _export(params, folder / "model.onnx",
            f"EdgeFleet demo first-crack detector, trained on {train_windows} synthetic "
            f"{WINDOW_S:g} s windows (seed {seed}); classes: {NEGATIVE}, {POSITIVE}",
            {"edgefleet.generator_version": GENERATOR_VERSION, "edgefleet.seed": str(seed),
             "edgefleet.train_windows": str(train_windows),
             "edgefleet.train_accuracy": f"{train_accuracy:.4f}"})
    label2id = {name: int(i) for i, name in TRAINED_LABELS.items()}
    (folder / "config.json").write_text(json.dumps(
        {"id2label": TRAINED_LABELS, "label2id": label2id, "num_labels": 2}, indent=2) + "\n")
    (folder / "preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n")
    # One real first-crack window: the golden outputs at build time and the smoke test on the
    # device run on it, and `bench` times it. Batch 1 on purpose: bench takes the .npz as the
    # timed input, and a device classifies one window at a time.
    first_crack = int(np.argmax(labels == 1))
    (folder / "sample_inputs.npz").write_bytes(
        npz_bytes({"input_values": x[first_crack:first_crack + 1]}))


def _generate_single_threaded(folder: Path, seed: int, train_windows: int) -> None:
    """Run ``_generate`` in a child process whose BLAS uses one thread.

    Why: the BLAS thread count changes how matrix products are summed, so the trained weights
    (and the file bytes) would depend on the machine's core count and the caller's settings;
    and on a busy machine multi-threaded OpenBLAS spins, making training several times slower.
    Thread counts can only be set before numpy loads, hence a fresh interpreter.
    """
    env = dict(os.environ)
    env.update({name: "1" for name in _BLAS_THREAD_VARS})
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "orchestrator.demo.model", str(folder), str(seed),
            str(train_windows)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)  # noqa: S603 - fixed argv
    if proc.returncode != 0:
        raise RuntimeError(f"generating the demo model into {folder} failed (exit "
                           f"{proc.returncode}); the generator said:\n{proc.stderr[-3000:]}")


def _cache_key(seed: int, train_windows: int) -> str:
    """Changes whenever anything that shapes the output could: the generator's, the audio's and
    the device feature code's source, the seed, and the numpy/onnx versions."""
    digest = hashlib.sha256()
    for module in (audio, train, agent_features):
        digest.update(Path(module.__file__ or "").read_bytes())
    digest.update(Path(__file__).read_bytes())
    digest.update(f"{GENERATOR_VERSION}|{seed}|{train_windows}|{np.__version__}|"
                  f"{onnx.__version__}".encode())
    return digest.hexdigest()[:16]


def make_trained_classifier(folder: Path, *, seed: int = 0, cache_dir: Path | None = None,
                            train_windows: int = TRAIN_WINDOWS) -> Path:
    """Write the trained first-crack bundle folder and return it.

    Files: model.onnx (input ``input_values`` float32 [batch, 198, 64], output ``logits``
    [batch, 2]), config.json (id2label), preprocessor_config.json (AST filterbank, 64 bins,
    198 frames = one 2 s window, mean/std of the training features) and sample_inputs.npz (one
real window's features, batch 1).
    Synthesis, features and training take seconds and are seeded: the same ``seed`` gives
    byte-identical files on the same machine (float rounding in BLAS may differ on another CPU).
    Evaluate on windows from ``demo.audio.write_eval_set`` with a different seed.

    ``cache_dir``: keep the generated files there, keyed by a hash of the generator's sources
    (see ``_cache_key``), and copy them from it next time; tests that build the demo often pass
    one directory for the whole session. ``train_windows``: fewer make a cheaper, worse model
    (tests of the generator itself use that).
    """
    folder = Path(folder)
    if train_windows < 8:
        raise ValueError(f"train_windows must be at least 8, got {train_windows}")
    if cache_dir is None:
        _generate_single_threaded(folder, seed, train_windows)
        return folder
    cached = Path(cache_dir) / f"first-crack-{_cache_key(seed, train_windows)}"
    if not all((cached / name).is_file() for name in BUNDLE_FILES):
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".first-crack-", dir=cache_dir))
        try:
            _generate_single_threaded(staging, seed, train_windows)
            try:
                os.rename(staging, cached)
            except OSError:  # another process finished first: its files are the same
                if not all((cached / name).is_file() for name in BUNDLE_FILES):
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    for name in BUNDLE_FILES:
        shutil.copyfile(cached / name, folder / name)
    return folder


if __name__ == "__main__":  # the child process of _generate_single_threaded
    _generate(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
