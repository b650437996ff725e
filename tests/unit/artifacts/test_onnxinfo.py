"""What a bundle records about its model: the oldest onnxruntime that loads it, and versions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from orchestrator.artifacts.onnxinfo import inspect_model, min_onnxruntime, version_tuple
from orchestrator.core.errors import BundleError
from orchestrator.demo.model import make_demo_classifier

INSTALLED = ".".join(ort.__version__.split(".")[:2])  # e.g. "1.31"


@pytest.mark.parametrize(
    ("opset", "ir_version", "expected"),
    [
        (13, 7, "1.6"),    # the IR that ships with opset 13 is older: the opset decides
        (17, 8, "1.12"),   # the demo model
        (11, 6, "1.0"),
        (14, 7, "1.8"),
        (21, 10, "1.18"),
        (22, 10, "1.20"),
        (7, 3, "1.0"),     # older than the table: its oldest entry
        (13, 9, "1.15"),   # IR 9 needs onnxruntime 1.15 whatever the opset
        (13, 10, "1.17"),
        (17, 9, "1.15"),
        (18, 8, "1.14"),   # opset wins again
        (19, 10, "1.17"),
    ],
)
def test_min_onnxruntime_table(opset: int, ir_version: int, expected: str) -> None:
    assert min_onnxruntime(opset, ir_version) == expected


@pytest.mark.parametrize(("opset", "ir_version"), [(23, 10), (99, 8), (17, 11), (40, 40)])
def test_newer_than_the_table_means_the_installed_runtime(opset: int, ir_version: int) -> None:
    assert min_onnxruntime(opset, ir_version) == INSTALLED


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("1.17.3", (1, 17, 3)),
        ("1.6", (1, 6)),
        ("2", (2,)),
        ("v1.2", (1, 2)),
        ("1.18.0rc1", (1, 18, 0)),
        ("1.17.0+cu118", (1, 17, 0)),
        ("1.20.0.dev20240801", (1, 20, 0)),
        ("1.x.3", (1,)),
        ("abc", ()),
        ("", ()),
    ],
)
def test_version_tuple(version: str, expected: tuple[int, ...]) -> None:
    assert version_tuple(version) == expected


def test_version_tuple_orders_numerically() -> None:
    versions = ["1.10", "1.9", "1.17.0+cu118", "1.17.1", "1.2", "1.18.0rc1"]
    assert sorted(versions, key=version_tuple) == [
        "1.2", "1.9", "1.10", "1.17.0+cu118", "1.17.1", "1.18.0rc1"]
    assert version_tuple("1.17.0+cu118") < version_tuple("1.17.9")
    assert version_tuple(ort.__version__) >= version_tuple("1.17")


def _model(path: Path, opset: int, ir_version: int, *, fp16: bool = False) -> Path:
    dtype = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    bias = numpy_helper.from_array(np.ones(4, dtype=np.float16 if fp16 else np.float32), "bias")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "bias"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", dtype, ["n", 4])],
        [helper.make_tensor_value_info("y", dtype, ["n", 4])],
        [bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="tests", producer_version="0")
    model.ir_version = ir_version
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize(
    ("opset", "ir_version", "expected"),
    [(13, 7, "1.6"), (17, 8, "1.12"), (13, 9, "1.15"), (23, 10, INSTALLED)],
)
def test_inspect_real_models(tmp_path: Path, opset: int, ir_version: int, expected: str) -> None:
    info = inspect_model(_model(tmp_path / "m.onnx", opset, ir_version), "m.onnx")
    assert (info.opset, info.ir_version) == (opset, ir_version)
    assert info.min_onnxruntime == expected
    assert info.precision == "fp32" and info.producer == "tests 0"
    assert info.inputs == [{"name": "x", "dtype": "float", "shape": ["n", 4]}]
    assert info.outputs == [{"name": "y", "dtype": "float", "shape": ["n", 4]}]


def test_inspect_fp16_model(tmp_path: Path) -> None:
    info = inspect_model(_model(tmp_path / "half.onnx", 17, 8, fp16=True), "half.onnx")
    assert info.precision == "fp16"
    assert info.inputs == [{"name": "x", "dtype": "float16", "shape": ["n", 4]}]


def test_inspect_demo_model(tmp_path: Path) -> None:
    info = inspect_model(make_demo_classifier(tmp_path / "demo.onnx"), "demo.onnx")
    assert info.as_dict()["inputs"][0]["shape"] == ["batch", 1, 98, 40]
    assert info.min_onnxruntime == "1.12"


def test_a_model_onnxruntime_cannot_load_is_refused(tmp_path: Path) -> None:
    """Parses as ONNX, but names an operator no runtime has: refused, naming the file."""
    graph = helper.make_graph(
        [helper.make_node("NoSuchOperator", ["x"], ["y"])],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(BundleError, match=r"^shown-name does not load in onnxruntime "):
        inspect_model(path, "shown-name")
