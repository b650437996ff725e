"""``edgefleet bundle build --quantize``: INT8 variants made by onnxruntime.quantization from real
tiny models, registered through the CLI in real SQLite, run with real onnxruntime sessions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from orchestrator.artifacts.blobstore import BlobStore
from orchestrator.core.config import Settings
from tests.conftest import Cli
from tests.unit.artifacts.pipeline_models import config_json, make_convnet, make_mlp, save_npz

WIDTH = 256


@pytest.fixture
def mlp_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "mlp"
    make_mlp(folder / "model.onnx")
    (folder / "config.json").write_bytes(config_json([f"c{i}" for i in range(WIDTH)]))
    rng = np.random.default_rng(1)
    save_npz({"x": rng.standard_normal((1, WIDTH)).astype(np.float32)},
             folder / "sample_inputs.npz")
    return folder


@pytest.fixture
def conv_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "conv"
    make_convnet(folder / "model.onnx")
    return folder


@pytest.fixture
def calibration(tmp_path: Path) -> Path:
    folder = tmp_path / "calib"
    rng = np.random.default_rng(2)
    save_npz({"image": rng.random((3, 3, 16, 16), np.float32)}, folder / "a.npz")
    save_npz({"image": rng.random((2, 3, 16, 16), np.float32)}, folder / "b.npz")
    return folder


def model_file(bundle: dict[str, Any]) -> Path:
    entry = next(f for f in bundle["files"] if f["path"] == bundle["model"]["path"])
    return BlobStore(Settings().blob_dir).path(entry["sha256"])


def blob(bundle: dict[str, Any], path: str) -> Path:
    entry = next(f for f in bundle["files"] if f["path"] == path)
    return BlobStore(Settings().blob_dir).path(entry["sha256"])


def run(model: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def quantized(cli: Cli, folder: Path, *args: str, name: str = "mlp") -> dict[str, Any]:
    return cli("bundle", "build", folder, "--name", name, "--quantize", *args, "--json").json


def test_dynamic_int8_variant_is_smaller_runs_close_and_links_its_parent(
        cli: Cli, mlp_folder: Path) -> None:
    built = quantized(cli, mlp_folder, "int8")
    fp32, variants = built["bundle"], built["variants"]
    assert fp32["version"] == "1" and fp32["precision"] == "fp32" and fp32["created"] is True
    assert len(variants) == 1
    int8 = variants[0]
    assert int8["name"] == "mlp" and int8["version"] == "1-int8" and int8["created"] is True
    assert int8["precision"] == "int8"
    assert int8["parent"] == {"name": "mlp", "version": "1", "digest": fp32["digest"],
                              "size_bytes": fp32["size_bytes"]}
    fp32_model, int8_model = model_file(fp32), model_file(int8)
    ratio = fp32_model.stat().st_size / int8_model.stat().st_size
    assert ratio > 3
    quant = int8["quantization"]
    assert quant["method"] == "dynamic" and quant["weight_type"] == "QInt8"
    assert quant["format"] == "QOperator" and quant["size_ratio"] == pytest.approx(ratio, 1e-3)
    ops = {node.op_type for node in onnx.load(str(int8_model)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}
    # Self-contained: the side files travel with it, unchanged; labels are read again.
    fp32_files = {f["path"]: f["sha256"] for f in fp32["files"]}
    int8_files = {f["path"]: f["sha256"] for f in int8["files"]}
    for side in ("config.json", "sample_inputs.npz"):
        assert int8_files[side] == fp32_files[side]
    assert int8_files["model.onnx"] != fp32_files["model.onnx"]
    assert int8["labels"] == fp32["labels"] and len(int8["labels"]) == WIDTH
    assert int8["source"] == fp32["source"]

    x = np.random.default_rng(3).standard_normal((4, WIDTH)).astype(np.float32)
    expected, actual = run(fp32_model, {"x": x}), run(int8_model, {"x": x})
    assert actual.shape == expected.shape == (4, WIDTH)
    error = np.abs(actual - expected).max()
    assert 0 < error < 0.05 * np.abs(expected).max()  # INT8 differs, but only a little


def test_rebuilding_with_quantize_reuses_the_variant(cli: Cli, mlp_folder: Path) -> None:
    first = quantized(cli, mlp_folder, "int8")
    again = quantized(cli, mlp_folder, "int8")
    assert again["bundle"]["created"] is False and again["variants"][0]["created"] is False
    assert again["bundle"]["digest"] == first["bundle"]["digest"]
    assert again["variants"][0]["digest"] == first["variants"][0]["digest"]
    plain = cli("bundle", "build", mlp_folder, "--name", "mlp", "--json").json
    assert plain["created"] is False and plain["version"] == "1"
    versions = [b["version"] for b in cli("bundle", "list", "--json").json]
    assert sorted(versions) == ["1", "1-int8"]
    assert cli("bundle", "show", "mlp", "--json").json["version"] == "1"  # N = the FP32 build
    human = cli("bundle", "build", mlp_folder, "--name", "mlp", "--quantize", "int8").stdout
    assert "unchanged: mlp@1-int8 was already made from mlp@1" in human


def test_an_existing_fp32_gets_its_variant_later(cli: Cli, mlp_folder: Path) -> None:
    plain = cli("bundle", "build", mlp_folder, "--name", "mlp", "--json").json
    later = quantized(cli, mlp_folder, "int8")
    assert later["bundle"]["created"] is False and later["bundle"]["digest"] == plain["digest"]
    assert later["variants"][0]["created"] is True
    assert later["variants"][0]["parent"]["digest"] == plain["digest"]


def test_human_output_and_show_give_parent_and_size_ratio(cli: Cli, mlp_folder: Path) -> None:
    out = cli("bundle", "build", mlp_folder, "--name", "mlp", "--quantize", "int8").stdout
    assert "built mlp@1 " in out and "built mlp@1-int8 " in out
    ratio = cli("bundle", "show", "mlp@1-int8", "--json").json["quantization"]["size_ratio"]
    assert f"model {ratio:.1f}x smaller" in " ".join(out.split())
    shown = " ".join(cli("bundle", "show", "mlp@1-int8").stdout.split())
    digest = cli("bundle", "show", "mlp@1", "--json").json["digest"]
    assert f"parent mlp@1 ({digest[:16]}" in shown
    assert f"quantization dynamic QInt8 QOperator; model {ratio:.1f}x smaller" in shown


def test_variant_has_its_own_golden_outputs(cli: Cli, mlp_folder: Path) -> None:
    built = quantized(cli, mlp_folder, "int8")
    fp32, int8 = built["bundle"], built["variants"][0]
    assert fp32["golden"] and int8["golden"]
    golden = fp32["golden"]["outputs"]
    assert blob(fp32, golden).read_bytes() != blob(int8, golden).read_bytes()
    with np.load(blob(int8, golden)) as outputs, np.load(blob(int8, fp32["golden"]["inputs"])) \
            as inputs:
        own = run(model_file(int8), {"x": inputs["x"]})
        np.testing.assert_array_equal(outputs["logits"], own)
    gave = quantized(cli, mlp_folder, "int8", "--golden-rtol", "0.2", "--golden-atol", "0.3",
                     name="tol")
    assert gave["variants"][0]["golden"]["rtol"] == 0.2
    assert gave["variants"][0]["golden"]["atol"] == 0.3


def test_static_qdq_variant_from_calibration(cli: Cli, conv_folder: Path,
                                             calibration: Path) -> None:
    built = quantized(cli, conv_folder, "int8-static", "--calibration", str(calibration),
                      name="cnn")
    fp32, static = built["bundle"], built["variants"][0]
    assert static["version"] == "1-int8-static" and static["precision"] == "int8"
    quant = static["quantization"]
    assert quant["method"] == "static" and quant["format"] == "QDQ"
    assert quant["calibration"]["samples"] == 5 and len(quant["calibration"]["sha256"]) == 64
    ops = [node.op_type for node in onnx.load(str(model_file(static))).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    image = np.random.default_rng(4).random((1, 3, 16, 16), np.float32)
    expected, actual = run(model_file(fp32), {"image": image}), run(model_file(static),
                                                                    {"image": image})
    assert np.abs(actual - expected).max() < 0.1 * np.abs(expected).max() + 1e-3
    again = quantized(cli, conv_folder, "int8-static", "--calibration", str(calibration),
                      name="cnn")
    assert again["variants"][0]["created"] is False
    assert again["variants"][0]["digest"] == static["digest"]


def _bad_calibration(folder: Path, case: str) -> str:
    rng = np.random.default_rng(5)
    if case == "name":
        save_npz({"img": rng.random((1, 3, 16, 16), np.float32)}, folder / "bad.npz")
        return f"{folder / 'bad.npz'}: array 'img' is not a model input (inputs: image)"
    if case == "shape":
        save_npz({"image": rng.random((2, 3, 8, 8), np.float32)}, folder / "bad.npz")
        return (f"{folder / 'bad.npz'}: input 'image' has shape [2, 3, 8, 8], the model expects "
                "1x3x16x16 (dim 2 must be 16)")
    if case == "dtype":
        save_npz({"image": np.zeros((1, 3, 16, 16), np.int64)}, folder / "bad.npz")
        return f"{folder / 'bad.npz'}: input 'image' is int64, the model wants float32"
    (folder / "bad.npz").parent.mkdir(parents=True, exist_ok=True)
    (folder / "bad.npz").write_text("not a zip")
    return f"{folder / 'bad.npz'}: not a readable .npz"


@pytest.mark.parametrize("case", ["name", "shape", "dtype", "corrupt"])
def test_bad_calibration_names_file_and_input_and_registers_nothing(
        cli: Cli, conv_folder: Path, tmp_path: Path, case: str) -> None:
    folder = tmp_path / "calib-bad"
    expected = _bad_calibration(folder, case)
    failed = cli("bundle", "build", conv_folder, "--name", "cnn", "--quantize", "int8-static",
                 "--calibration", folder, expect=2)
    assert expected in " ".join(failed.stderr.split())
    assert cli("bundle", "list", "--json").json == []


@pytest.mark.parametrize(("args", "message"), [
    (["--quantize", "int8-static"], "--quantize int8-static needs --calibration DIR"),
    (["--quantize", "int4"], "--quantize int4: use one of int8, int8-static"),
    (["--quantize", "int8", "--calibration", "."], "--calibration is only used with"),
    (["--quantize", "int8-static", "--calibration", "/nonexistent-calib"],
     "--calibration /nonexistent-calib: no such folder or file"),
])
def test_bad_quantize_requests_are_refused(cli: Cli, conv_folder: Path, args: list[str],
                                           message: str) -> None:
    failed = cli("bundle", "build", conv_folder, "--name", "cnn", *args, "--json", expect=2)
    assert message in failed.json["error"]
    assert cli("bundle", "list", "--json").json == []


def test_an_int8_model_is_not_quantized_again(cli: Cli, mlp_folder: Path) -> None:
    built = quantized(cli, mlp_folder, "int8")
    int8_dir = mlp_folder.parent / "int8"
    int8_dir.mkdir()
    (int8_dir / "model.onnx").write_bytes(model_file(built["variants"][0]).read_bytes())
    failed = cli("bundle", "build", int8_dir, "--name", "q", "--quantize", "int8", expect=2)
    assert "q@1 is already INT8 (model.onnx)" in " ".join(failed.stderr.split())
    assert json.dumps(cli("bundle", "list", "--json").json).count('"name": "q"') == 0
