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
