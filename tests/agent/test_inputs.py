"""Benchmark inputs: every ONNX tensor type generated and fed to a real onnxruntime session,
dynamic dimensions resolved (or refused naming the input and dimension), constants, .npz."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from agent.fsutil import AgentError
from agent.inputs import build_inputs, describe, find_sample_npz, plan_inputs

TYPES = {  # ONNX name as onnxruntime reports it -> (TensorProto type, numpy dtype)
    "float": (TensorProto.FLOAT, np.float32),
    "float16": (TensorProto.FLOAT16, np.float16),
    "double": (TensorProto.DOUBLE, np.float64),
    "int64": (TensorProto.INT64, np.int64),
    "int32": (TensorProto.INT32, np.int32),
    "int8": (TensorProto.INT8, np.int8),
    "uint8": (TensorProto.UINT8, np.uint8),
    "bool": (TensorProto.BOOL, np.bool_),
}
SHAPES: dict[str, list[Any]] = {  # a rank-0 scalar, named and unnamed dynamic dims
    "float": ["batch", 3, 4], "float16": [2, None], "double": [], "int64": ["batch", 50],
    "int32": [7], "int8": [], "uint8": [4, 4], "bool": [None, 64],
}


def identity_model(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """One input of every type, each passed through Identity; returns (path, ORT signature)."""
    inputs, outputs, nodes = [], [], []
    for name, (proto, _) in TYPES.items():
        inputs.append(helper.make_tensor_value_info(f"in_{name}", proto, SHAPES[name]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", proto, SHAPES[name]))
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
    model = helper.make_model(helper.make_graph(nodes, "identity", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / "identity.onnx"
    path.write_bytes(model.SerializeToString())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    signature = [{"name": i.name, "dtype": i.type[len("tensor("):-1], "shape": list(i.shape)}
                 for i in session.get_inputs()]
    return path, signature


def bad(match: str, *args: Any, **kw: Any) -> AgentError:
    with pytest.raises(AgentError, match=match) as info:
        plan_inputs(*args, **kw)
    assert info.value.code == "bad_input"
    return info.value


SIG = [{"name": "x", "dtype": "float", "shape": ["batch", 16]},
       {"name": "sr", "dtype": "int64", "shape": []},
       {"name": "y", "dtype": "float", "shape": [1]}]


def test_every_type_is_generated_and_runs_in_onnxruntime(tmp_path: Path) -> None:
    path, signature = identity_model(tmp_path)
    assert [s["dtype"] for s in signature] == list(TYPES)
    assert signature[1]["shape"] == [2, None] and signature[0]["shape"] == ["batch", 3, 4]
    plan = plan_inputs(signature, shapes={"in_float": [2, 3, 4], "in_float16": [2, 5],
                                          "in_bool": [3, 64]})
    shapes = {e["name"]: e["shape"] for e in plan}
    assert shapes["in_int64"] == [2, 50]  # "batch" resolved through in_float's --shape
    assert shapes["in_double"] == [] and shapes["in_int8"] == []
    feeds = build_inputs(plan)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds),
                       strict=True))
    for name, (_, dtype) in TYPES.items():
        array = feeds[f"in_{name}"]
        assert array.dtype == dtype and list(array.shape) == shapes[f"in_{name}"], name
        assert array.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(outputs[f"out_{name}"], array)
    assert feeds["in_double"].ndim == 0
    ints = feeds["in_int64"]
    assert ints.min() >= 0 and ints.max() <= 9 and len(np.unique(ints)) > 5
    assert set(np.unique(feeds["in_bool"]).tolist()) == {False, True}
    assert abs(float(feeds["in_float"].mean())) < 1.0 and feeds["in_float"].std() > 0.5
    again = build_inputs(plan)  # deterministic: every thread count gets the same bytes
    for name, array in feeds.items():
        assert array.tobytes() == again[name].tobytes()
    assert describe(plan)[0] == {"name": "in_float", "dtype": "float", "shape": [2, 3, 4],
                                 "source": "generated"}


def test_constants_and_recorded_shapes() -> None:
    plan = plan_inputs(SIG, constants={"sr": 16000, "y": 0.5}, recorded={"x": [3, 16]})
    assert describe(plan) == [
        {"name": "x", "dtype": "float", "shape": [3, 16], "source": "generated"},
        {"name": "sr", "dtype": "int64", "shape": [], "source": "constant"},
        {"name": "y", "dtype": "float", "shape": [1], "source": "constant"},
    ]
    feeds = build_inputs(plan)
    assert feeds["sr"].shape == () and feeds["sr"].dtype == np.int64 and int(feeds["sr"]) == 16000
    np.testing.assert_array_equal(feeds["y"], np.array([0.5], dtype=np.float32))
    # an explicit --shape beats the shape recorded at build time
    assert plan_inputs(SIG, shapes={"x": [8, 16]}, recorded={"x": [3, 16]})[0]["shape"] == [8, 16]


def test_a_dimension_named_like_a_batch_is_1_and_says_so() -> None:
    for name in ("batch", "batch_size", "N", "Batch-Size", "bs"):
        (x,) = plan_inputs([{"name": "x", "dtype": "float", "shape": [name, 16]}])
        assert x["shape"] == [1, 16], name
        assert x["assumed"] == [{"dimension": 0, "name": name, "size": 1,
                                 "from": "named like a batch dimension: 1 unless --shape says "
                                         "otherwise"}]
        assert describe([x])[0]["assumed"] == x["assumed"]
    # A shared batch is assumed once and said on every input that has it.
    shared = plan_inputs([{"name": "a", "dtype": "float", "shape": ["batch", 2]},
                          {"name": "b", "dtype": "int64", "shape": ["batch"]}])
    assert [p["shape"] for p in shared] == [[1, 2], [1]]
    assert [p["assumed"][0]["name"] for p in shared] == ["batch", "batch"]
    # Given or recorded sizes are not assumed; recorded ones assumed at build say so.
    assert "assumed" not in plan_inputs(SIG, shapes={"x": [4, 16]})[0]
    said = [{"dimension": 0, "name": "batch", "size": 1, "from": "why"}]
    recorded = plan_inputs(SIG, recorded={"x": [1, 16]}, recorded_assumed={"x": said})[0]
    assert recorded["assumed"] == said and "assumed" not in plan_inputs(
        SIG, recorded={"x": [1, 16]})[0]


def test_unresolved_and_wrong_shapes_name_the_input_and_dimension() -> None:
    error = bad(r"input 'x' \[batch, seq\] has dimension 1 \('seq'\) with no size: pass it, "
                r"e\.g\. --shape x=1x1", [{"name": "x", "dtype": "float",
                                             "shape": ["batch", "seq"]}])
    assert error.extra == {"input": "x", "dimension": 1}
    bad(r"input 'x' \[time, 16\] has dimension 0 \('time'\) with no size",
        [{"name": "x", "dtype": "float", "shape": ["time", 16]}])
    bad(r"dimension 1 \(unnamed\) with no size.*--shape v=2x1",
        [{"name": "v", "dtype": "float", "shape": [2, None]}])
    wrong = bad(r"--shape x=4 has 1 dimension but input 'x' has 2 \[batch, 16\]", SIG,
                shapes={"x": [4]})
    assert str(wrong).count("--shape") == 1  # it said "--shape --shape x=4"
    bad(r"--shape x=4x8: dimension 1 of input 'x' is fixed at 16 by the model, got 8", SIG,
        shapes={"x": [4, 8]})
    bad(r"--shape for input 'x' must be a list of positive integers", SIG, shapes={"x": [0, 16]})
    bad(r"the bundle's recorded input_shapes \(x=1x2x3\) has 3 dimensions", SIG,
        recorded={"x": [1, 2, 3]})


def test_unknown_names_and_bad_constants() -> None:
    bad(r"--input names 'rate', which is not an input of the model \(inputs: x, sr, y\)",
        SIG, shapes={"x": [1, 16]}, constants={"rate": 1})
    bad(r"--shape names 'z', which is not an input of the model \(inputs: x, sr, y\)",
        SIG, shapes={"z": [1]})
    bad(r"constant for input 'sr' \(int64\) must be a whole number, got 1\.5", SIG,
        shapes={"x": [1, 16]}, constants={"sr": 1.5})
    bad(r"constant for input 'y' \(float\) must be a number, got 'loud'", SIG,
        shapes={"x": [1, 16]}, constants={"y": "loud"})
    bad(r"constant 300 for input 'u' does not fit uint8 \(0\.\.255\)",
        [{"name": "u", "dtype": "uint8", "shape": []}], constants={"u": 300})
    bad(r"input 's' has type 'string'", [{"name": "s", "dtype": "string", "shape": [1]}])
    bad(r"records no model inputs", [])


def test_npz_inputs(tmp_path: Path) -> None:
    npz = tmp_path / "sample_inputs.npz"
    x = np.arange(48, dtype=np.float64).reshape(3, 16)  # float64: converted to the model's float
    np.savez(npz, x=x, y=np.array([2.0], dtype=np.float32), sr=np.array(8000))
    plan = plan_inputs(SIG, constants={"sr": 16000}, npz=(str(npz), "sample_inputs.npz"))
    assert [(e["name"], e["shape"], e["source"]) for e in describe(plan)] == [
        ("x", [3, 16], "npz"), ("sr", [], "constant"), ("y", [1], "npz")]  # constants win
    feeds = build_inputs(plan)
    assert feeds["x"].dtype == np.float32
    np.testing.assert_array_equal(feeds["x"], x.astype(np.float32))
    assert int(feeds["sr"]) == 16000

    np.savez(npz, x=np.zeros((3, 16), dtype=np.int64))
    bad(r"sample_inputs\.npz: array 'x' is int64 but input 'x' takes float", SIG,
        npz=(str(npz), "sample_inputs.npz"))
    np.savez(npz, x=np.zeros((3, 4, 16), dtype=np.float32))
    bad(r"array 'x' has shape \[3, 4, 16\] but input 'x' takes \[batch, 16\]", SIG,
        npz=(str(npz), "sample_inputs.npz"))
    np.savez(npz, x=np.zeros((3, 16), dtype=np.float32), mel=np.zeros(2))
    bad(r"sample_inputs\.npz has array 'mel', which is not an input of the model", SIG,
        npz=(str(npz), "sample_inputs.npz"))
    # a lone .npz with another name: its input arrays are used, other arrays ignored
    plan = plan_inputs(SIG, npz=(str(npz), "data/calib.npz"))
    assert [e["source"] for e in plan] == ["npz", "generated", "generated"]
    bad(r"--shape x=2x16 conflicts with the \[3, 16\] array 'x' in data/calib\.npz", SIG,
        shapes={"x": [2, 16]}, npz=(str(npz), "data/calib.npz"))


def test_which_npz_is_the_sample() -> None:
    def files(*paths: str) -> list[dict[str, Any]]:
        return [{"path": p} for p in paths]

    assert find_sample_npz(files("model.onnx", "a.npz")) == "a.npz"
    assert find_sample_npz(files("a.npz", "data/sample_inputs.npz")) == "data/sample_inputs.npz"
    assert find_sample_npz(files("a.npz", "b.npz")) is None
    assert find_sample_npz(files("model.onnx")) is None
