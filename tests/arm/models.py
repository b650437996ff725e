"""The models the arm64 tests and bench/arm_numerics.py measure x86-vs-aarch64 differences on.

Why these two: the demo's trained first-crack detector (the model users meet first: MatMul/ReLU
on filterbank features, ~1 ms native, ~1 s under qemu) and a transformer-style encoder (the
shape of the audio transformers EdgeFleet exists for: LayerNorm, Q/K/V MatMuls, softmax
attention, a GELU feed-forward, residuals), small enough that qemu's ~1000x slowdown still leaves
seconds per inference. Both come with static-quantization calibration data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent.features import load_feature_extractor
from orchestrator.demo.audio import make_windows

TOKENS, WIDTH, HIDDEN, CLASSES, LAYERS = 16, 64, 128, 4, 2


def _save_npz(arrays: dict[str, np.ndarray], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    return path


def demo_calibration(folder: Path, dest: Path, n: int = 16, seed: int = 7) -> Path:
    """``dest/demo.npz``: features of ``n`` synthetic windows (a seed neither training nor the
    eval set uses), computed by the bundle's own extractor, as static quantization wants."""
    config = json.loads((folder / "preprocessor_config.json").read_text())
    extractor = load_feature_extractor(config)
    assert extractor is not None
    waves, _ = make_windows(n, seed)
    features = np.concatenate([extractor(w.astype(np.float32)) for w in waves]).astype(np.float32)
    _save_npz({"input_values": features}, dest / "demo.npz")
    return dest


def _layer(prefix: str, x: str, rng: np.random.Generator,
           inits: list[onnx.TensorProto]) -> tuple[list[onnx.NodeProto], str]:
    def weight(name: str, shape: tuple[int, ...]) -> str:
        value = rng.normal(0.0, 1.0 / math.sqrt(shape[0]), shape).astype(np.float32)
        inits.append(numpy_helper.from_array(value, f"{prefix}.{name}"))
        return f"{prefix}.{name}"

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"{prefix}.{name}"))
        return f"{prefix}.{name}"

    n = f"{prefix}."
    ones, zeros = np.ones(WIDTH), np.zeros(WIDTH)
    nodes = [
        helper.make_node("LayerNormalization", [x, const("ln1.g", ones), const("ln1.b", zeros)],
                         [n + "ln1"], axis=-1, epsilon=1e-5),
        helper.make_node("MatMul", [n + "ln1", weight("wq", (WIDTH, WIDTH))], [n + "q"]),
        helper.make_node("MatMul", [n + "ln1", weight("wk", (WIDTH, WIDTH))], [n + "k"]),
        helper.make_node("MatMul", [n + "ln1", weight("wv", (WIDTH, WIDTH))], [n + "v"]),
        helper.make_node("Transpose", [n + "k"], [n + "kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", [n + "q", n + "kt"], [n + "scores"]),
        helper.make_node("Mul", [n + "scores", const("scale", np.array(WIDTH ** -0.5))],
                         [n + "scaled"]),
        helper.make_node("Softmax", [n + "scaled"], [n + "attn"], axis=-1),
        helper.make_node("MatMul", [n + "attn", n + "v"], [n + "ctx"]),
        helper.make_node("MatMul", [n + "ctx", weight("wo", (WIDTH, WIDTH))], [n + "proj"]),
        helper.make_node("Add", [x, n + "proj"], [n + "res1"]),
        helper.make_node("LayerNormalization",
                         [n + "res1", const("ln2.g", ones), const("ln2.b", zeros)],
                         [n + "ln2"], axis=-1, epsilon=1e-5),
        helper.make_node("MatMul", [n + "ln2", weight("w1", (WIDTH, HIDDEN))], [n + "h"]),
        # GELU as BERT/AST export it: 0.5 * x * (1 + erf(x / sqrt 2))
        helper.make_node("Div", [n + "h", const("sqrt2", np.array(math.sqrt(2.0)))],
                         [n + "hs"]),
        helper.make_node("Erf", [n + "hs"], [n + "erf"]),
        helper.make_node("Add", [n + "erf", const("one", np.array(1.0))], [n + "erf1"]),
        helper.make_node("Mul", [n + "h", n + "erf1"], [n + "gx"]),
        helper.make_node("Mul", [n + "gx", const("half", np.array(0.5))], [n + "gelu"]),
        helper.make_node("MatMul", [n + "gelu", weight("w2", (HIDDEN, WIDTH))], [n + "ffn"]),
        helper.make_node("Add", [n + "res1", n + "ffn"], [n + "out"]),
    ]
    return nodes, n + "out"


def make_transformer(folder: Path, seed: int = 0) -> Path:
    """``folder/model.onnx``: ``tokens`` float32 [1, 16, 64] -> ``logits`` [1, 4] through two
    pre-norm encoder layers and a mean-pooled classifier; plus ``sample_inputs.npz`` (the golden
    inputs) and ``folder.parent/<name>-calibration/tokens.npz`` (32 samples)."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    x = "tokens"
    for i in range(LAYERS):
        layer_nodes, x = _layer(f"layer{i}", x, rng, inits)
        nodes += layer_nodes
    head = rng.normal(0.0, 1.0 / math.sqrt(WIDTH), (WIDTH, CLASSES)).astype(np.float32)
    inits.append(numpy_helper.from_array(head, "head"))
    nodes += [helper.make_node("ReduceMean", [x], ["pooled"], axes=[1], keepdims=0),
              helper.make_node("MatMul", ["pooled", "head"], ["logits"])]
    graph = helper.make_graph(
        nodes, "edgefleet_arm_transformer",
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, [1, TOKENS, WIDTH])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="edgefleet-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(model.SerializeToString(deterministic=True))
    data = np.random.default_rng(seed + 1)
    _save_npz({"tokens": data.normal(0, 1, (1, TOKENS, WIDTH)).astype(np.float32)},
              folder / "sample_inputs.npz")
    _save_npz({"tokens": data.normal(0, 1, (32, TOKENS, WIDTH)).astype(np.float32)},
              folder.parent / f"{folder.name}-calibration" / "tokens.npz")
    return folder
