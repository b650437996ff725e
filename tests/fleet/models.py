"""Small real ONNX models for benchmark tests, generated with the ``onnx`` package."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper


def make_multi_input_model(path: Path) -> Path:
    """``audio`` float32 [1, "samples"] (a named dynamic dim), ``sr`` int64 scalar (rank 0),
    ``gain`` float32 [1] -> ``score`` = mean(audio) * sr / 16000 * gain, shape [1, 1]."""
    nodes = [
        helper.make_node("ReduceMean", ["audio"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Cast", ["sr"], ["sr_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["sr_f", "base_rate"], ["rate"]),
        helper.make_node("Mul", ["mean", "rate"], ["scaled"]),
        helper.make_node("Mul", ["scaled", "gain"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes, "edgefleet_multi_input",
        inputs=[helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, "samples"]),
                helper.make_tensor_value_info("sr", TensorProto.INT64, []),
                helper.make_tensor_value_info("gain", TensorProto.FLOAT, [1])],
        outputs=[helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 1])],
        initializer=[helper.make_tensor("base_rate", TensorProto.FLOAT, [], [16000.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="edgefleet-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path


def make_feature_classifier(path: Path, input_name: str, dims: list[int | str | None],
                            pool_axis: int, features: int) -> Path:
    """A transformers-style audio classifier head on a rank-3 feature input ``input_name``
    ``dims`` ([batch, a, b], any of them dynamic): mean over ``pool_axis``, a linear layer
    from the ``features`` remaining values per example to 2 logits, softmax. Like an AST
    (``input_values [batch_size, frames, mel]``) or a Whisper encoder
    (``input_features [batch_size, mel, frames]``), but a few hundred bytes."""
    import numpy as np
    from onnx import numpy_helper

    weights = np.linspace(-1.0, 1.0, features * 2, dtype=np.float32).reshape(features, 2)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", [input_name], ["pooled"], axes=[pool_axis],
                          keepdims=0),
         helper.make_node("MatMul", ["pooled", "W"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "feature_classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [dims[0], 2])],
        [numpy_helper.from_array(weights, "W")])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                   producer_name="edgefleet-tests"), path)


def make_silero_like_vad(path: Path) -> Path:
    """Silero VAD's interface: ``input`` float32 [batch, 512] (32 ms at 16 kHz), ``state``
    float32 [2, batch, 128], ``sr`` int64 scalar -> ``output`` [batch, 1], ``stateN``. Like the
    real model it accepts only the rates it knows: here 16000 alone, checked by a Gather whose
    index is ``sr - 16000`` (out of bounds, so onnxruntime fails, for any other rate)."""
    nodes = [
        helper.make_node("Sub", ["sr", "known_rate"], ["offset"]),
        helper.make_node("Gather", ["rate_ok", "offset"], ["gain"], axis=0),
        helper.make_node("ReduceMean", ["input"], ["energy"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["energy", "gain"], ["scaled"]),
        helper.make_node("Sigmoid", ["scaled"], ["output"]),
        helper.make_node("Identity", ["state"], ["stateN"]),
    ]
    graph = helper.make_graph(
        nodes, "silero_like_vad",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 512]),
                helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 128]),
                helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        outputs=[helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1]),
                 helper.make_tensor_value_info("stateN", TensorProto.FLOAT,
                                               [2, "batch", 128])],
        initializer=[helper.make_tensor("known_rate", TensorProto.INT64, [], [16000]),
                     helper.make_tensor("rate_ok", TensorProto.FLOAT, [1], [1.0])],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                   producer_name="edgefleet-tests"), path)
