"""``edgefleet bundle build/list/show`` and orchestrator.artifacts.bundles: real models, real
onnxruntime,
real SQLite, real files in the blob store."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.protocol import MANIFEST_SCHEMA, canonical_json
from orchestrator.artifacts.bundles import build_bundle, get_bundle, manifest_of
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import BundleError, NotFoundError
from orchestrator.demo.model import make_demo_classifier
from tests.conftest import Cli

ORT_VERSION = ".".join(ort.__version__.split(".")[:2])


# -- models and folders ----------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_matmul(path: Path, *, opset: int = 13, ir_version: int = 7, seed: int = 0) -> Path:
    """``x`` float32 [batch, 16] @ a [16, 8] weight -> ``y`` [batch, 8]."""
    weight = np.random.default_rng(seed).standard_normal((16, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "weight"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path


def make_int8(path: Path, tmp_path: Path) -> Path:
    """The honest way to an int8 model: onnxruntime's own dynamic quantization."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = make_matmul(tmp_path / "to-quantize" / "fp32.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" advice
    try:
        quantize_dynamic(fp32, path, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return path


def model_folder(tmp_path: Path, seed: int = 0, name: str = "folder") -> Path:
    folder = tmp_path / f"{name}-{seed}"
    make_demo_classifier(folder / "model.onnx", seed=seed)
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"sampling_rate": 16000, "n_mels": 40}))
    (folder / "sub" / "dir").mkdir(parents=True)
    (folder / "sub" / "dir" / "file.txt").write_text("nested side file\n")
    return folder


def blob_files(home: Path) -> list[Path]:
    return sorted(p for p in (home / "blobs").rglob("*") if p.is_file())


GOLDEN_PATHS = [".edgefleet/golden_inputs.npz", ".edgefleet/golden_outputs.npz"]


def user_files(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The files that came from the user's folder (not EdgeFleet's golden inputs/outputs)."""
    return [f for f in manifest["files"] if not f["path"].startswith(".edgefleet/")]


def build(cli: Cli, path: Path, name: str, *args: str, expect: int | None = 0) -> Any:
    return cli("bundle", "build", path, "--name", name, *args, "--json", expect=expect).json


def check_demo_signature(model: dict[str, Any]) -> None:
    assert model["opset"] == 17 and model["ir_version"] == 8
    assert model["producer"] == "edgefleet demo"
    assert model["inputs"] == [{"name": "log_mel", "dtype": "float",
                                "shape": ["batch", 1, 98, 40]}]
    assert model["outputs"] == [
        {"name": "logits", "dtype": "float", "shape": ["batch", 2]},
        {"name": "probabilities", "dtype": "float", "shape": ["batch", 2]},
    ]
    assert isinstance(model["inputs"][0]["shape"][0], str)  # the dynamic dim keeps its name


# -- building ---------------------------------------------------------------------------------


def test_build_single_onnx_file(cli: Cli, home: Path, tmp_path: Path) -> None:
    model = make_demo_classifier(tmp_path / "detector.onnx")
    out = build(cli, model, "first-crack")
    assert (out["name"], out["version"], out["created"]) == ("first-crack", "1", True)
    assert user_files(out) == [{"path": "detector.onnx", "sha256": sha256(model),
                                "size": model.stat().st_size}]
    assert [f["path"] for f in out["files"]][1:] == GOLDEN_PATHS
    assert out["size_bytes"] == sum(f["size"] for f in out["files"])
    assert out["precision"] == "fp32"
    assert out["min_onnxruntime"] == "1.12"  # opset 17, IR 8
    assert out["source"] == {"type": "file", "path": str(model.resolve())}
    assert out["model"]["path"] == "detector.onnx"
    check_demo_signature(out["model"])
    assert {p.name for p in blob_files(home)} == {f["sha256"] for f in out["files"]}


def test_build_folder_with_side_files(cli: Cli, home: Path, tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    (folder / ".DS_Store").write_bytes(b"\0junk")  # hidden: never part of a bundle
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    out = build(cli, folder, "first-crack")
    expected = ["model.onnx", "preprocessor_config.json", "sub/dir/file.txt"]
    assert [f["path"] for f in out["files"]] == expected + GOLDEN_PATHS
    for entry in user_files(out):
        on_disk = folder / entry["path"]
        assert entry["sha256"] == sha256(on_disk)
        assert entry["size"] == on_disk.stat().st_size
    assert out["size_bytes"] == sum(f["size"] for f in out["files"])
    assert out["source"] == {"type": "folder", "path": str(folder.resolve())}
    assert out["model"]["path"] == "model.onnx"
    check_demo_signature(out["model"])
    # Every file is in the blob store under its own hash, and the bytes are the file's.
    blobs = {p.name: p for p in blob_files(home)}
    assert set(blobs) == {f["sha256"] for f in out["files"]}
    for entry in user_files(out):
        blob = blobs[entry["sha256"]]
        assert blob.parent.name == entry["sha256"][:2]
        assert blob.read_bytes() == (folder / entry["path"]).read_bytes()


def test_folder_with_symlink_inside_it_is_followed(cli: Cli, tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    (folder / "labels.txt").symlink_to("sub/dir/file.txt")
    out = build(cli, folder, "first-crack")
    entry = next(f for f in out["files"] if f["path"] == "labels.txt")
    assert entry["sha256"] == sha256(folder / "sub" / "dir" / "file.txt")


def test_explicit_model_picks_one_of_several(cli: Cli, tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    make_matmul(folder / "sub" / "encoder.onnx")
    out = build(cli, folder, "two-models", "--model", "sub/encoder.onnx")
    assert out["model"]["path"] == "sub/encoder.onnx"
    assert out["model"]["inputs"] == [{"name": "x", "dtype": "float", "shape": ["batch", 16]}]
    assert out["model"]["opset"] == 13 and out["min_onnxruntime"] == "1.6"
    assert {f["path"] for f in out["files"]} >= {"model.onnx", "sub/encoder.onnx"}


def test_int8_model_is_detected(cli: Cli, tmp_path: Path) -> None:
    model = make_int8(tmp_path / "int8.onnx", tmp_path)
    ops = {node.op_type for node in onnx.load(str(model)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    out = build(cli, model, "kws-int8")
    assert out["precision"] == "int8"
    assert out["model"]["inputs"] == [{"name": "x", "dtype": "float", "shape": ["batch", 16]}]
    listed = cli("bundle", "list", "--json").json
    assert [(b["name"], b["precision"]) for b in listed] == [("kws-int8", "int8")]


def test_opset_newer_than_the_table_needs_the_installed_runtime(cli: Cli,
                                                                 tmp_path: Path) -> None:
    model = make_matmul(tmp_path / "new.onnx", opset=23, ir_version=10)
    out = build(cli, model, "newest")
    assert out["model"]["opset"] == 23
    assert out["min_onnxruntime"] == ORT_VERSION


def test_digest_is_sha256_of_the_canonical_manifest(home: Path, tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    seen: list[tuple[str, int]] = []
    settings = Settings()
    with session_scope(settings) as session:
        result = build_bundle(session, settings, folder, "first-crack",
                              on_file=lambda rel, size: seen.append((rel, size)))
        bundle = result.bundle
    assert result.created and bundle.version == "1"
    manifest = manifest_of(bundle)
    assert bundle.manifest_json.encode("utf-8") == canonical_json(manifest)
    assert bundle.digest == hashlib.sha256(canonical_json(manifest)).hexdigest()
    assert manifest["schema"] == MANIFEST_SCHEMA
    assert (manifest["name"], manifest["version"]) == ("first-crack", "1")
    assert manifest["precision"] == "fp32" and manifest["min_onnxruntime"] == "1.12"
    assert seen == [(f["path"], f["size"]) for f in user_files(manifest)]
    # What was committed is what comes back.
    with session_scope(settings) as session:
        again = get_bundle(session, "first-crack@1")
        assert (again.digest, again.manifest_json) == (bundle.digest, bundle.manifest_json)


def test_versions_auto_increment_and_explicit_versions(cli: Cli, tmp_path: Path) -> None:
    assert build(cli, model_folder(tmp_path, 0), "fc")["version"] == "1"
    assert build(cli, model_folder(tmp_path, 1), "fc")["version"] == "2"
    explicit = build(cli, model_folder(tmp_path, 2), "fc", "--version", "2.1-rc+cpu")
    assert explicit["version"] == "2.1-rc+cpu" and explicit["created"]
    assert build(cli, model_folder(tmp_path, 3), "fc", "--version", "7")["version"] == "7"
    assert build(cli, model_folder(tmp_path, 4), "fc")["version"] == "8"  # after the highest
    # Another name counts on its own.
    assert build(cli, model_folder(tmp_path, 5), "other")["version"] == "1"

    dup = cli("bundle", "build", model_folder(tmp_path, 6), "--name", "fc", "--version", "2",
              expect=2)
    assert "fc@2 already exists; pick another --version" in dup.stderr
    listed = cli("bundle", "list", "--json").json
    assert [(b["name"], b["version"]) for b in listed] == [
        ("fc", "1"), ("fc", "2"), ("fc", "2.1-rc+cpu"), ("fc", "7"), ("fc", "8"), ("other", "1")]
    assert len({b["digest"] for b in listed}) == len(listed)


def test_identical_rebuild_returns_the_existing_version(cli: Cli, home: Path,
                                                         tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    first = build(cli, folder, "fc")
    blobs = blob_files(home)
    again = build(cli, folder, "fc")
    assert again["created"] is False
    assert (again["version"], again["digest"]) == (first["version"], first["digest"])
    assert blob_files(home) == blobs
    human = cli("bundle", "build", folder, "--name", "fc")
    assert "unchanged: fc@1 already has exactly these files" in human.stdout
    assert len(cli("bundle", "list", "--json").json) == 1

    # Direct call: same answer, and a changed side file does make a new version.
    settings = Settings()
    with session_scope(settings) as session:
        result = build_bundle(session, settings, folder, "fc")
        assert (result.created, result.bundle.version) == (False, "1")
    (folder / "preprocessor_config.json").write_text("{}")
    assert build(cli, folder, "fc")["version"] == "2"


def test_a_file_shared_by_two_versions_is_stored_once(cli: Cli, home: Path,
                                                      tmp_path: Path) -> None:
    v1 = build(cli, model_folder(tmp_path, 0), "fc")
    v2 = build(cli, model_folder(tmp_path, 1), "fc")
    shas = {f["sha256"] for f in user_files(v1)} | {f["sha256"] for f in user_files(v2)}
    assert len(shas) == 4  # two models, one config, one nested file
    golden = {f["sha256"] for f in [*v1["files"], *v2["files"]]} - shas
    assert len(golden) == 3  # the models differ: 2 outputs; same generated inputs: stored once
    assert sorted(p.name for p in blob_files(home)) == sorted(shas | golden)
    assert not list((home / "blobs").glob(".incoming-*"))


# -- refusals ---------------------------------------------------------------------------------

Case = Callable[[Path], tuple[list[str], list[str]]]  # tmp_path -> (argv tail, in message)


def _random_bytes(tmp: Path) -> tuple[list[str], list[str]]:
    path = tmp / "corrupt.onnx"
    path.write_bytes(random.Random(0).randbytes(4096))
    return [str(path), "--name", "x"], [f"{path} "]


def _truncated(tmp: Path) -> tuple[list[str], list[str]]:
    path = make_demo_classifier(tmp / "truncated.onnx")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return [str(path), "--name", "x"], [f"{path} "]


def _text_named_onnx(tmp: Path) -> tuple[list[str], list[str]]:
    path = tmp / "notes.onnx"
    path.write_text("this is not a model, just some notes\n")
    return [str(path), "--name", "x"], [f"{path} is not an ONNX model"]


def _empty_onnx(tmp: Path) -> tuple[list[str], list[str]]:
    path = tmp / "empty.onnx"
    path.write_bytes(b"")
    return [str(path), "--name", "x"], [f"{path} is not an ONNX model (no graph found)"]


def _corrupt_in_folder(tmp: Path) -> tuple[list[str], list[str]]:
    folder = tmp / "bad-folder"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(random.Random(1).randbytes(2048))
    return [str(folder), "--name", "x"], [f"{folder}:model.onnx "]


def _no_onnx(tmp: Path) -> tuple[list[str], list[str]]:
    folder = tmp / "only-config"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "readme.txt").write_text("hi")
    return [str(folder), "--name", "x"], [f"{folder}: no .onnx file found"]


def _empty_folder(tmp: Path) -> tuple[list[str], list[str]]:
    folder = tmp / "empty"
    folder.mkdir()
    (folder / ".hidden").write_text("hidden files do not count")
    return [str(folder), "--name", "x"], [f"{folder}: the folder has no files"]


def _two_onnx(tmp: Path) -> tuple[list[str], list[str]]:
    folder = tmp / "two"
    make_demo_classifier(folder / "a.onnx")
    make_matmul(folder / "b.onnx")
    return [str(folder), "--name", "x"], [
        f"{folder}: several .onnx files (a.onnx, b.onnx); say which with --model"]


def _model_dotdot(tmp: Path) -> tuple[list[str], list[str]]:
    folder = model_folder(tmp)
    make_matmul(tmp / "x")  # a real model right there: "../x" must still be refused
    return [str(folder), "--name", "x", "--model", "../x"], [
        "--model ../x: path '../x' contains an empty, '.' or '..' component"]


def _model_absolute(tmp: Path) -> tuple[list[str], list[str]]:
    folder = model_folder(tmp)
    absolute = str(folder / "model.onnx")
    return [str(folder), "--name", "x", "--model", absolute], [
        f"--model {absolute}: path {absolute!r} is absolute"]


def _model_missing(tmp: Path) -> tuple[list[str], list[str]]:
    folder = model_folder(tmp)
    return [str(folder), "--name", "x", "--model", "nope.onnx"], [
        f"--model nope.onnx: no such file in {folder}"]


def _symlink_out(tmp: Path) -> tuple[list[str], list[str]]:
    folder = model_folder(tmp)
    secret = tmp / "secret.txt"
    secret.write_text("outside the bundle\n")
    link = folder / "sub" / "config.json"
    link.symlink_to(secret)
    return [str(folder), "--name", "x"], [
        f"{link}: symlink escapes the bundle folder (-> {secret})"]


def _symlinked_folder(tmp: Path) -> tuple[list[str], list[str]]:
    folder = model_folder(tmp)
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "data.bin").write_bytes(b"\1\2\3")
    (folder / "data").symlink_to(outside)
    return [str(folder), "--name", "x"], [f"{folder / 'data'}: symlinked folders are not followed"]


def _missing_path(tmp: Path) -> tuple[list[str], list[str]]:
    return [str(tmp / "nowhere"), "--name", "x"], [f"{tmp / 'nowhere'}: no such file or folder"]


def _hostile_name(name: str) -> Case:
    def case(tmp: Path) -> tuple[list[str], list[str]]:
        model = make_demo_classifier(tmp / "model.onnx")
        return [str(model), "--name", name], [f"bundle name {name!r} is not allowed"]

    return case


def _bad_version(version: str) -> Case:
    def case(tmp: Path) -> tuple[list[str], list[str]]:
        model = make_demo_classifier(tmp / "model.onnx")
        return [str(model), "--name", "x", "--version", version], [
            f"bundle version {version!r} is not allowed"]

    return case


REFUSALS: dict[str, Case] = {
    "random-bytes": _random_bytes,
    "truncated-model": _truncated,
    "text-named-onnx": _text_named_onnx,
    "empty-onnx": _empty_onnx,
    "corrupt-in-folder": _corrupt_in_folder,
    "no-onnx": _no_onnx,
    "empty-folder": _empty_folder,
    "two-onnx": _two_onnx,
    "model-dotdot": _model_dotdot,
    "model-absolute": _model_absolute,
    "model-missing": _model_missing,
    "symlink-escapes": _symlink_out,
    "symlinked-folder": _symlinked_folder,
    "missing-path": _missing_path,
    "name-semicolon": _hostile_name("a;rm -rf"),
    "name-at": _hostile_name("x@y"),
    "name-dotdot": _hostile_name("../n"),
    "name-markup": _hostile_name("[red]x[/red]"),
    "name-dash": _hostile_name("-rf"),
    # re.match with "$" let a trailing newline through; the rules are checked with fullmatch
    "name-newline": _hostile_name("x\n"),
    "bad-version": _bad_version("../1"),
    "version-newline": _bad_version("1\n"),
}


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_build_refusals_name_the_thing_and_change_nothing(
    cli: Cli, home: Path, tmp_path: Path, case: Case
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    args, wanted = case(src)
    result = cli("bundle", "build", *args, expect=2)
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    for text in wanted:
        assert text in result.stderr
    # Same refusal as JSON on stdout.
    as_json = cli("bundle", "build", *args, "--json", expect=2).json
    assert set(as_json) == {"error"} and all(text in as_json["error"] for text in wanted)
    # Nothing registered, nothing stored.
    assert blob_files(home) == []
    assert cli("bundle", "list", "--json").json == []


def test_refusals_from_the_service_are_bundle_errors(home: Path, tmp_path: Path) -> None:
    settings = Settings()
    folder = model_folder(tmp_path)
    with session_scope(settings) as session:
        with pytest.raises(BundleError, match=r"bundle name 'a;rm -rf' is not allowed"):
            build_bundle(session, settings, folder, "a;rm -rf")
        with pytest.raises(BundleError, match=r"bundle name 'fc\\n' is not allowed"):
            build_bundle(session, settings, folder, "fc\n")
        with pytest.raises(BundleError, match=r"bundle version '1\\n' is not allowed"):
            build_bundle(session, settings, folder, "fc", version="1\n")
        with pytest.raises(BundleError, match=r"bundle version '1\\n' is not allowed"):
            get_bundle(session, "fc@1\n")
        (folder / "escape").symlink_to(tmp_path)
        with pytest.raises(BundleError, match="symlinked folders are not followed"):
            build_bundle(session, settings, folder, "fc")
        with pytest.raises(NotFoundError, match=r"no bundle fc; build it with"):
            get_bundle(session, "fc")


def test_corrupt_model_is_not_accepted_by_a_lucky_parse(cli: Cli, tmp_path: Path) -> None:
    """Whatever protobuf makes of random bytes, onnxruntime must load it before we accept it."""
    for seed in range(5):
        path = tmp_path / f"r{seed}.onnx"
        path.write_bytes(random.Random(seed).randbytes(512 + 97 * seed))
        result = cli("bundle", "build", path, "--name", "x", expect=2)
        assert str(path) in result.stderr
        assert ("is not an ONNX model" in result.stderr
                or "does not load in onnxruntime" in result.stderr)


# -- list and show ----------------------------------------------------------------------------


@pytest.fixture
def two_versions(cli: Cli, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return build(cli, model_folder(tmp_path, 0), "fc"), build(cli, model_folder(tmp_path, 1), "fc")


def test_bundle_list_json(cli: Cli, two_versions: tuple[dict[str, Any], dict[str, Any]]) -> None:
    v1, v2 = two_versions
    listed = cli("bundle", "list", "--json").json
    assert [(b["name"], b["version"], b["digest"]) for b in listed] == [
        ("fc", "1", v1["digest"]), ("fc", "2", v2["digest"])]
    for entry, built in zip(listed, two_versions, strict=True):
        assert entry == {k: v for k, v in built.items() if k != "created"}
    human = cli("bundle", "list").stdout
    assert "fc@1" in human and "fc@2" in human and v2["digest"][:16] in human


def test_bundle_show(cli: Cli, two_versions: tuple[dict[str, Any], dict[str, Any]]) -> None:
    v1, v2 = two_versions
    latest = cli("bundle", "show", "fc", "--json").json
    assert (latest["version"], latest["digest"]) == ("2", v2["digest"])
    pinned = cli("bundle", "show", "fc@1", "--json").json
    assert pinned == {k: v for k, v in v1.items() if k != "created"}

    human = cli("bundle", "show", "fc@1").stdout
    for text in ("fc@1", v1["digest"], "fp32", "onnxruntime >= 1.12", "log_mel",
                 "batchx1x98x40", "probabilities", "preprocessor_config.json",
                 "sub/dir/file.txt"):
        assert text in human


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("fc@9", "no bundle fc@9 (versions: 1, 2)"),
        ("nope", "no bundle nope; build it with `edgefleet bundle build`"),
        ("nope@1", "no bundle nope@1; build it with"),
        ("a;b", "bundle name 'a;b' is not allowed"),
        ("[bold]x[/bold]", "bundle name '[bold]x[/bold]' is not allowed"),
        ("fc@../1", "bundle version '../1' is not allowed"),
    ],
)
def test_bundle_show_unknown(cli: Cli, two_versions: object, ref: str, message: str) -> None:
    result = cli("bundle", "show", ref, expect=2)
    assert message in result.stderr and result.stdout == ""
    assert cli("bundle", "show", ref, "--json", expect=2).json == {
        "error": result.stderr.removeprefix("error: ").rstrip("\n")}
