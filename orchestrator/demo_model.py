"""Real ONNX models for the demo, the tests and the push benchmark.

``make_demo_classifier`` builds a small audio classifier (a CNN over log-mel frames, the shape of
a keyword-spotting or bark detector); its weights are seeded random numbers, so it is a real
model to load, run and time, not a trained one. ``make_large_model`` builds a valid model of
roughly a given size for measuring pushes. Both are written with opset 17 / IR version 8, which
the older onnxruntime builds found on Raspberry Pis load, and both are byte-identical for the
same arguments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["N_FRAMES", "N_MELS", "make_demo_classifier", "make_large_model"]

OPSET = 17
IR_VERSION = 8
N_FRAMES = 98  # 1 s of audio at a 10 ms hop
N_MELS = 40
CLASSES = ("background", "event")
_MIB = 1024 * 1024


def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """He-normal weights, float32."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _finish(graph: onnx.GraphProto, path: Path, doc: str) -> Path:
    """Wrap ``graph`` in a checked opset-17 / IR-8 model and write it to ``path``."""
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edgefleet",
        producer_version="demo",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
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
