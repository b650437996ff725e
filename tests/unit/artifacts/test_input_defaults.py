"""Exports build without flags (issue 13 item 5): a batch dim is 1, an AST's or Whisper's
feature dims come from its preprocessor_config.json, constants such as silero-vad's ``sr`` are
given with ``bundle build --input`` (golden inputs, the manifest, bench's default), and an
.npz of integer labels is class ids, named through the model's id2label at eval. Real ONNX
models run by the real onnxruntime, through the real CLI and DB."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.artifacts.blobstore import BlobStore
from orchestrator.artifacts.bundles import get_bundle
from orchestrator.artifacts.datasets import (
    DatasetError,
    build_dataset,
    get_dataset,
    manifest_of_dataset,
)
from orchestrator.artifacts.input_defaults import feature_sizes, resolve
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.measure.evals import plan_eval, score
from tests.conftest import Cli
from tests.fleet.models import make_feature_classifier, make_silero_like_vad

AST = {"feature_extractor_type": "ASTFeatureExtractor", "sampling_rate": 16000,
       "num_mel_bins": 8, "max_length": 24, "feature_size": 1}
WHISPER = {"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 8,
           "nb_max_frames": 30, "hop_length": 160, "n_samples": 4800, "sampling_rate": 16000}
BATCH_WHY = "named like a batch dimension: 1 unless --shape says otherwise"


def folder_with(base: Path, name: str, model: Any, pre: dict[str, Any] | None = None,
                labels: tuple[str, ...] = ("background", "crack")) -> Path:
    folder = base / name
    model(folder / "model.onnx")
    (folder / "config.json").write_text(json.dumps(
        {"id2label": {str(i): label for i, label in enumerate(labels)}}))
    if pre is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    return folder


def golden_inputs(home: Path, built: dict[str, Any]) -> dict[str, np.ndarray]:
    with session_scope(Settings(home=home)) as session:
        manifest = json.loads(get_bundle(session, f"{built['name']}@{built['version']}")
                              .manifest_json)
    rel = manifest["golden"]["inputs"]
    sha = next(f["sha256"] for f in manifest["files"] if f["path"] == rel)
    with np.load(BlobStore(home / "blobs").path(sha), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def test_an_ast_export_with_a_batch_dim_builds_without_flags(cli: Cli, home: Path,
                                                             tmp_path: Path) -> None:
    """The issue's AST: ``input_values [batch_size, 1024, 128]`` (here 24 x 8)."""
    folder = folder_with(tmp_path, "ast", lambda p: make_feature_classifier(
        p, "input_values", ["batch_size", 24, 8], 1, 8), AST)
    out = cli("bundle", "build", folder, "--name", "ast")
    assert ("note: assumed input_values: batch_size = 1 (named like a batch dimension"
            in out.stderr), out.stderr
    assert "no golden outputs" not in out.stderr
    built = cli("bundle", "show", "ast", "--json").json
    assert built["input_shapes"] == {"input_values": [1, 24, 8]}
    assert built["shape_defaults"] == {"input_values": [
        {"dimension": 0, "name": "batch_size", "size": 1, "from": BATCH_WHY}]}
    assert built["golden"] is not None
    assert golden_inputs(home, built)["input_values"].shape == (1, 24, 8)
    shown = cli("bundle", "show", "ast").stdout
    assert "input_values 1x24x8 — assumed batch_size = 1" in shown
    # The same files again: nothing new. --shape wins, and is not "assumed".
    again = cli("bundle", "build", folder, "--name", "ast").stdout
    assert "unchanged: ast@1" in again
    shaped = cli("bundle", "build", folder, "--name", "ast", "--shape",
                 "input_values=3x24x8", "--json").json
    assert shaped["input_shapes"] == {"input_values": [3, 24, 8]}
    assert shaped["shape_defaults"] is None


def test_ast_and_whisper_feature_dims_come_from_their_preprocessor_config(
        cli: Cli, tmp_path: Path) -> None:
    ast = folder_with(tmp_path, "ast", lambda p: make_feature_classifier(
        p, "input_values", ["batch_size", "time", "mel"], 1, 8), AST)
    built = cli("bundle", "build", ast, "--name", "ast", "--json").json
    assert built["input_shapes"] == {"input_values": [1, 24, 8]}
    assert [(d["name"], d["size"], d["from"]) for d in built["shape_defaults"]["input_values"]] \
        == [("batch_size", 1, BATCH_WHY),
            ("time", 24, "max_length in preprocessor_config.json (ASTFeatureExtractor)"),
            ("mel", 8, "num_mel_bins in preprocessor_config.json (ASTFeatureExtractor)")]
    assert built["golden"] is not None

    # optimum's Whisper encoder names: [batch_size, feature_size, encoder_sequence_length]
    whisper = folder_with(tmp_path, "whisper", lambda p: make_feature_classifier(
        p, "input_features", ["batch_size", "feature_size", "encoder_sequence_length"], 2, 8),
        WHISPER)
    built = cli("bundle", "build", whisper, "--name", "whisper", "--json").json
    assert built["input_shapes"] == {"input_features": [1, 8, 30]}
    assert built["golden"] is not None
    # nb_max_frames is derived from n_samples / hop_length when the config lacks it.
    derived = {k: v for k, v in WHISPER.items() if k != "nb_max_frames"}
    assert feature_sizes(derived) == ("WhisperFeatureExtractor", [
        (8, "feature_size in preprocessor_config.json (WhisperFeatureExtractor)"),
        (30, "nb_max_frames in preprocessor_config.json (WhisperFeatureExtractor)")])
    # A fixed dim that contradicts the config: the config is not this input's; only the batch
    # is assumed, the other dynamic dim stays unresolved and is named.
    shapes, _, unresolved = resolve(
        [{"name": "input_values", "dtype": "float", "shape": ["batch", 50, "mel"]}], {}, AST)
    assert shapes == {} and unresolved == ["input 'input_values' dimension 2 ('mel')"]


def test_a_dim_nothing_decides_stays_a_clear_error_naming_it(cli: Cli, tmp_path: Path) -> None:
    folder = folder_with(tmp_path, "seq", lambda p: make_feature_classifier(
        p, "tokens", ["batch", "sequence", 8], 1, 8))
    out = cli("bundle", "build", folder, "--name", "seq")
    assert "dimension 1 ('sequence') with no size" in out.stderr, out.stderr
    assert "--shape tokens=1x1x8" in out.stderr
    assert cli("bundle", "show", "seq", "--json").json["golden"] is None


def test_silero_vads_sample_rate_is_given_with_input_and_recorded(cli: Cli, home: Path,
                                                                  tmp_path: Path) -> None:
    folder = tmp_path / "vad"
    make_silero_like_vad(folder / "model.onnx")
    refused = cli("bundle", "build", folder, "--name", "vad", expect=2)
    assert "does not run in onnxruntime" in refused.stderr
    assert "generated scalar input(s) sr=" in refused.stderr
    assert "`bundle build --input NAME=VALUE`" in refused.stderr
    assert cli("bundle", "list", "--json").json == []  # nothing half-built was registered

    bad_value = cli("bundle", "build", folder, "--name", "vad", "--input", "sr=16000.5",
                    expect=2)
    assert "constant for input 'sr' (int64) must be a whole number" in bad_value.stderr
    unknown = cli("bundle", "build", folder, "--name", "vad", "--input", "rate=16000",
                  expect=2)
    assert "--input names 'rate', which is not an input of the model" in unknown.stderr

    built = cli("bundle", "build", folder, "--name", "vad", "--input", "sr=16000", "--json").json
    assert built["input_constants"] == {"sr": 16000}
    assert built["input_shapes"] == {"input": [1, 512], "state": [2, 1, 128]}
    assert [d["name"] for d in built["shape_defaults"]["state"]] == ["batch"]
    golden = golden_inputs(home, built)
    assert golden["sr"].dtype == np.int64 and golden["sr"].shape == () and golden["sr"] == 16000
    assert "sr = 16000 (bench's default)" in cli("bundle", "show", "vad").stdout


def test_integer_labels_are_class_ids_named_at_eval(cli: Cli, home: Path,
                                                    tmp_path: Path) -> None:
    folder = folder_with(tmp_path, "ast", lambda p: make_feature_classifier(
        p, "input_values", ["batch_size", 24, 8], 1, 8), AST)
    cli("bundle", "build", folder, "--name", "ast")
    x = np.random.default_rng(0).standard_normal((4, 24, 8)).astype(np.float32)
    np.savez(tmp_path / "ids.npz", input_values=x, labels=np.array([0, 1, 1, 0]))
    built = cli("dataset", "build", tmp_path / "ids.npz", "--name", "ids", "--json").json
    assert built["labels"] == ["0", "1"] and built["label_ids"] is True
    assert "named through the model's id2label" in cli("dataset", "show", "ids").stdout
    settings = Settings(home=home)
    with session_scope(settings) as session:
        bundle, dataset = get_bundle(session, "ast"), get_dataset(session, "ids")
        plan = plan_eval(bundle, dataset, None, 0.5)
    assert plan.label_names == {"0": "background", "1": "crack"}
    entry = {"samples": [{"id": f"#{i}", "label": str(label), "probs": [0.7, 0.3],
                          "pre_ms": 0.1} for i, label in enumerate([0, 1, 1, 0])]}
    scored = score(entry, plan)
    assert [s["label"] for s in scored["samples"]] == ["background", "crack", "crack",
                                                       "background"]
    assert scored["eval"]["confusion_matrix"] == [[2, 0], [2, 0]]

    # With --for, the ids are named at build already (as before); an id the model lacks is
    # refused at eval, naming it and the model's classes.
    named = cli("dataset", "build", tmp_path / "ids.npz", "--name", "named", "--for", "ast",
                "--json").json
    assert named["labels"] == ["background", "crack"] and named["label_ids"] is False
    np.savez(tmp_path / "three.npz", input_values=x, labels=np.array([0, 1, 2, 10]))
    cli("dataset", "build", tmp_path / "three.npz", "--name", "three")
    with session_scope(settings) as session:
        with pytest.raises(DatasetError, match=r"class id\(s\) 2, 10 are outside the model's "
                                               r"0\.\.1 \(background, crack\)"):
            plan_eval(get_bundle(session, "ast"), get_dataset(session, "three"), None, 0.5)
        manifest = manifest_of_dataset(get_dataset(session, "three"))
    assert manifest["labels"] == ["0", "1", "2", "10"]  # class ids in numeric order
    np.savez(tmp_path / "negative.npz", input_values=x, labels=np.array([0, -1, 1, 0]))
    with pytest.raises(DatasetError, match="class ids must be >= 0, got -1"), \
            session_scope(settings) as session:
        build_dataset(session, settings, tmp_path / "negative.npz", "neg")
