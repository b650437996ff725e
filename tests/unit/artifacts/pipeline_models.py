"""Test helpers for the model pipeline (Hub sources, INT8 variants): tiny real ONNX models made
with the ``onnx`` package, and a Hugging Face cache laid out on disk exactly as huggingface_hub
lays it out, so ``HF_HUB_OFFLINE=1`` builds go through huggingface_hub's own cache lookup."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# -- models ----------------------------------------------------------------------------------


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path


def matmul_bytes(seed: int) -> bytes:
    """``x`` float32 [batch, 16] -> ``logits`` [batch, 2]; the seed changes the weights."""
    weight = np.random.default_rng(seed).standard_normal((16, 2)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString(deterministic=True)


def quantized_bytes(seed: int, tmp: Path) -> bytes:
    """matmul_bytes(seed) through onnxruntime's dynamic quantization: what a Hub repo's
    model_quantized.onnx is."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "fp32.onnx").write_bytes(matmul_bytes(seed))
    quantize_dynamic(tmp / "fp32.onnx", tmp / "int8.onnx", weight_type=QuantType.QInt8)
    return (tmp / "int8.onnx").read_bytes()


def make_mlp(path: Path, seed: int = 0, width: int = 256) -> Path:
    """A 2-layer MLP (MatMul+Add, Relu, Gemm) with width x width weights: big enough that INT8
    weights are clearly smaller, small enough to quantize in well under a second."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(width)
    w1 = (rng.standard_normal((width, width)) * scale).astype(np.float32)
    b1 = (rng.standard_normal(width) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((width, width)) * scale).astype(np.float32)
    b2 = (rng.standard_normal(width) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h0"]),
         helper.make_node("Add", ["h0", "b1"], ["h1"]),
         helper.make_node("Relu", ["h1"], ["h2"]),
         helper.make_node("Gemm", ["h2", "w2", "b2"], ["logits"])],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"),
                                                     (b2, "b2"))])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def make_convnet(path: Path, seed: int = 0) -> Path:
    """``image`` float32 [1, 3, 16, 16] -> Conv(8) Relu Conv(8) Relu GlobalAveragePool Flatten
    Gemm -> ``logits`` [1, 4]: a CNN small enough for a fast static calibration."""
    rng = np.random.default_rng(seed)
    c1 = (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    c2 = (rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32)
    fc = (rng.standard_normal((8, 4)) * 0.5).astype(np.float32)
    bias = np.zeros(8, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "c1", "bias"], ["a0"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["a0"], ["a1"]),
         helper.make_node("Conv", ["a1", "c2", "bias"], ["a2"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["a2"], ["a3"]),
         helper.make_node("GlobalAveragePool", ["a3"], ["a4"]),
         helper.make_node("Flatten", ["a4"], ["a5"]),
         helper.make_node("Gemm", ["a5", "fc"], ["logits"])],
        "convnet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(a, n) for a, n in ((c1, "c1"), (c2, "c2"), (fc, "fc"),
                                                     (bias, "bias"))])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def save_npz(arrays: dict[str, np.ndarray], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


# -- a Hugging Face cache on disk ------------------------------------------------------------


def _etag(content: bytes, lfs: bool) -> str:
    """The blob name huggingface_hub uses: the LFS sha256 for LFS files, else the git blob
    sha1 (what the Hub's ETag header carries)."""
    if lfs:
        return hashlib.sha256(content).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()  # noqa: S324


def commit_sha(label: str) -> str:
    return hashlib.sha1(label.encode()).hexdigest()  # noqa: S324


def add_snapshot(cache: Path, repo: str, commit: str, files: dict[str, bytes],
                 refs: tuple[str, ...] = ()) -> Path:
    """``models--owner--name/{blobs,snapshots/<commit>,refs/<ref>}`` as huggingface_hub writes
    them: contents in blobs/ named by etag, snapshot entries as relative symlinks to them, each
    ref a file holding the commit sha (no newline)."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = root / "snapshots" / commit
    for rel, content in files.items():
        blob = root / "blobs" / _etag(content, lfs=rel.endswith((".onnx", ".npz")))
        blob.write_bytes(content)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    for ref in refs:
        ref_file = root / "refs" / ref
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        ref_file.write_text(commit)
    return snapshot


def config_json(labels: list[str]) -> bytes:
    return json.dumps({"model_type": "test", "id2label": {str(i): n for i, n in
                                                           enumerate(labels)}}).encode()


def ast_preprocessor_json() -> bytes:
    doc: dict[str, Any] = {"feature_extractor_type": "ASTFeatureExtractor",
                           "sampling_rate": 16000, "num_mel_bins": 128, "max_length": 1024}
    return json.dumps(doc).encode()


def sample_npz(tmp: Path) -> bytes:
    path = save_npz({"x": np.ones((1, 16), np.float32)}, tmp / "sample_inputs.npz")
    return path.read_bytes()
