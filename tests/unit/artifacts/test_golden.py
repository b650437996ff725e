"""Golden outputs at build time (orchestrator/artifacts/golden.py via build_bundle): real models,
real
onnxruntime, real SQLite and blob store."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.inputs import find_sample_npz
from orchestrator.artifacts.blobstore import BlobStore
from orchestrator.artifacts.bundles import BuildResult, build_bundle, manifest_of
from orchestrator.artifacts.golden import (
    DEFAULT_TOLERANCES,
    GOLDEN_INPUTS,
    GOLDEN_OUTPUTS,
    ZIP_EPOCH,
    default_tolerances,
    npz_bytes,
)
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import BundleError


def save(path: Path, nodes: list[Any], inputs: list[Any], outputs: list[Any],
         weights: list[Any] = ()) -> Path:  # type: ignore[assignment]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(weights)),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path


def matmul(path: Path, batch: int | str = 1) -> Path:
    """y = x @ W, x float [batch, 4] -> y [batch, 3]."""
    weight = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    return save(path, [helper.make_node("MatMul", ["x", "w"], ["y"])],
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
                [numpy_helper.from_array(weight, "w")])


def build(path: Path, name: str = "m", **kw: Any) -> tuple[BuildResult, dict[str, Any]]:
    settings = Settings()
    with session_scope(settings) as session:
        result = build_bundle(session, settings, path, name, **kw)
        return result, manifest_of(result.bundle)


def golden_arrays(home: Path, manifest: dict[str, Any], key: str) -> dict[str, np.ndarray]:
    rel = manifest["golden"][key]
    sha = next(f["sha256"] for f in manifest["files"] if f["path"] == rel)
    with np.load(BlobStore(home / "blobs").path(sha), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def test_golden_files_are_manifest_entries_with_the_models_outputs(home: Path,
                                                                   tmp_path: Path) -> None:
    model = matmul(tmp_path / "m.onnx")
    result, manifest = build(model)
    assert result.note is None
    assert manifest["golden"] == {"inputs": GOLDEN_INPUTS, "outputs": GOLDEN_OUTPUTS,
                                  "rtol": 1e-3, "atol": 1e-4}
    assert [f["path"] for f in manifest["files"]] == ["m.onnx", GOLDEN_INPUTS, GOLDEN_OUTPUTS]
    inputs = golden_arrays(home, manifest, "inputs")
    outputs = golden_arrays(home, manifest, "outputs")
    assert list(inputs) == ["x"] and inputs["x"].shape == (1, 4)
    assert inputs["x"].dtype == np.float32 and np.any(inputs["x"] != 0)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, inputs)
    assert list(outputs) == ["y"]
    np.testing.assert_allclose(outputs["y"], expected, rtol=1e-6)


def test_golden_bytes_are_deterministic_and_a_rebuild_is_unchanged(home: Path,
                                                                   tmp_path: Path) -> None:
    arrays = {"b": np.arange(6, dtype=np.int64).reshape(2, 3), "a": np.ones(3, np.float32)}
    first = npz_bytes(arrays)
    assert npz_bytes(dict(reversed(arrays.items()))) == first
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        infos = archive.infolist()
        assert [i.filename for i in infos] == ["a.npy", "b.npy"]
        assert {i.date_time for i in infos} == {ZIP_EPOCH}  # not "now", as np.savez does
        assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
    with np.load(io.BytesIO(first)) as data:
        np.testing.assert_array_equal(data["b"], arrays["b"])

    model = matmul(tmp_path / "m.onnx")
    result, manifest = build(model)
    again, same = build(model)
    assert again.created is False and again.bundle.digest == result.bundle.digest
    # Different tolerances are a different bundle (the device compares with them).
    looser, loose = build(model, golden_rtol=0.5, golden_atol=0.25)
    assert looser.created is True
    assert (loose["golden"]["rtol"], loose["golden"]["atol"]) == (0.5, 0.25)
    assert loose["files"] == manifest["files"]  # same golden files, only tolerances changed


def test_tolerance_defaults_by_precision(home: Path, tmp_path: Path) -> None:
    assert default_tolerances("fp32") == DEFAULT_TOLERANCES["fp32"] == (1e-3, 1e-4)
    assert default_tolerances(None) == default_tolerances("fp32")
    int8_rtol, int8_atol = default_tolerances("int8")
    fp16_rtol, _ = default_tolerances("fp16")
    # From the x86-vs-aarch64 measurements in docs/arm.md (bench/arm_numerics.py).
    assert (int8_rtol, int8_atol) == (1e-2, 1e-2)
    assert int8_rtol >= fp16_rtol > default_tolerances("fp32")[0]
    assert int8_atol > default_tolerances("fp32")[1]

    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = matmul(tmp_path / "fp32" / "m.onnx")
    int8 = tmp_path / "int8" / "m.onnx"
    int8.parent.mkdir()
    quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
    _, manifest = build(int8, "q")
    assert manifest["precision"] == "int8"
    assert (manifest["golden"]["rtol"], manifest["golden"]["atol"]) == (int8_rtol, int8_atol)
    with pytest.raises(BundleError, match="--golden-atol must be a finite number >= 0"):
        build(fp32, "bad", golden_atol=-1.0)


def test_a_dynamic_batch_alone_gets_golden_outputs_for_a_batch_of_one(home: Path,
                                                                      tmp_path: Path) -> None:
    model = matmul(tmp_path / "batch.onnx", batch="batch")
    result, manifest = build(model)
    assert result.created and result.note is None and "golden" in manifest
    assert golden_arrays(home, manifest, "inputs")["x"].shape == (1, 4)
    assert golden_arrays(home, manifest, "outputs")["y"].shape == (1, 3)


def test_unresolved_dynamic_dim_builds_without_golden_and_says_how(home: Path,
                                                                   tmp_path: Path) -> None:
    weight = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    model = save(tmp_path / "dyn.onnx", [helper.make_node("MatMul", ["x", "w"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 3])],
                 [numpy_helper.from_array(weight, "w")])
    result, manifest = build(model)
    assert result.created and "golden" not in manifest
    assert [f["path"] for f in manifest["files"]] == ["dyn.onnx"]
    assert result.note is not None and "no golden outputs" in result.note
    assert "will only check that its model loads" in result.note
    # The batch is 1 by default; the sequence length has no default, and the note names it.
    assert "dimension 1 ('seq')" in result.note and "--shape x=1x1x4" in result.note
    assert "input_shapes" not in manifest and "shape_defaults" not in manifest

    shaped, with_shape = build(model, input_shapes={"x": [2, 5, 4]})
    assert shaped.created and shaped.note is None
    assert golden_arrays(home, with_shape, "inputs")["x"].shape == (2, 5, 4)
    assert golden_arrays(home, with_shape, "outputs")["y"].shape == (2, 5, 3)


def test_sample_inputs_npz_are_the_golden_inputs(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    matmul(folder / "model.onnx", batch="batch")
    sample = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.savez(folder / "sample_inputs.npz", x=sample)
    result, manifest = build(folder)
    assert result.note is None
    np.testing.assert_array_equal(golden_arrays(home, manifest, "inputs")["x"], sample)
    assert golden_arrays(home, manifest, "outputs")["y"].shape == (3, 3)
    # On the device the golden npz files never pass for the user's sample inputs.
    assert find_sample_npz(manifest["files"]) == "sample_inputs.npz"
    assert find_sample_npz([{"path": GOLDEN_INPUTS}, {"path": GOLDEN_OUTPUTS}]) is None
    assert find_sample_npz([{"path": GOLDEN_INPUTS}, {"path": "x.npz"}]) == "x.npz"


def test_model_that_fails_to_run_is_refused_naming_it(home: Path, tmp_path: Path) -> None:
    # Loads fine (the Reshape target is only checked against the data at run time).
    model = save(tmp_path / "broken.onnx",
                 [helper.make_node("Reshape", ["x", "shape"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
                 [numpy_helper.from_array(np.array([3], dtype=np.int64), "shape")])
    with pytest.raises(BundleError) as caught:
        build(model)
    message = str(caught.value)
    assert "broken.onnx" in message and f"onnxruntime {ort.__version__}" in message
    assert "x float32[1x4]" in message and "Reshape" in message
    assert not [p for p in (home / "blobs").rglob("*") if p.is_file()]  # nothing stored


def test_user_files_under_dot_edgefleet_are_refused(home: Path, tmp_path: Path) -> None:
    model = matmul(tmp_path / "m.onnx")
    with pytest.raises(BundleError, match=r"\.edgefleet/golden_outputs\.npz: paths under "):
        build(tmp_path, files=[("m.onnx", model), (GOLDEN_OUTPUTS, model)], model="m.onnx")
