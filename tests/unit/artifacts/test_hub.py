"""``edgefleet bundle build hf://...`` offline: a Hugging Face cache laid out by the test exactly
as huggingface_hub lays it out (refs, snapshots of symlinks, blobs), read by huggingface_hub's own
snapshot_download with HF_HUB_OFFLINE=1; real ONNX models, real SQLite, real blob store."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from orchestrator.artifacts.hub import HubSpec, allow_patterns, parse_hub_spec
from orchestrator.core.errors import BundleError
from tests.conftest import Cli
from tests.unit.artifacts.pipeline_models import (
    add_snapshot,
    ast_preprocessor_json,
    commit_sha,
    config_json,
    matmul_bytes,
    quantized_bytes,
    sample_npz,
)

MAIN = commit_sha("main-1")
DEV = commit_sha("dev-1")
LABELS = ["background", "first_crack"]


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """acme/kws: main has onnx/{model,model_quantized,model_fp16}.onnx with side files; dev
    moves on to other weights. acme/split keeps config files at the repo root and the exports
    under onnx/ (the transformers.js layout)."""
    cache = tmp_path / "hf-cache"
    sample = sample_npz(tmp_path)
    quantized_2 = quantized_bytes(2, tmp_path / "quantize")
    common = {"onnx/config.json": config_json(LABELS),
              "onnx/preprocessor_config.json": ast_preprocessor_json(),
              "onnx/sample_inputs.npz": sample, "onnx/vocab.txt": b"a\nb\n",
              "README.md": b"# kws\n"}
    add_snapshot(cache, "acme/kws", MAIN, common | {
        "onnx/model.onnx": matmul_bytes(1), "onnx/model_quantized.onnx": quantized_2,
        "onnx/model_fp16.onnx": matmul_bytes(3)}, refs=("main",))
    add_snapshot(cache, "acme/kws", DEV, common | {
        "onnx/model.onnx": matmul_bytes(4), "onnx/model_quantized.onnx": matmul_bytes(5)},
        refs=("dev",))
    add_snapshot(cache, "acme/split", commit_sha("split"), {
        "config.json": config_json(["no", "yes"]), "onnx/model.onnx": matmul_bytes(6),
        "onnx/model_q4.onnx": matmul_bytes(7)}, refs=("main",))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def build(cli: Cli, spec: str, *args: str, name: str = "kws") -> dict[str, Any]:
    return cli("bundle", "build", spec, "--name", name, *args, "--json").json


def paths(manifest: dict[str, Any]) -> set[str]:
    return {f["path"] for f in manifest["files"] if not f["path"].startswith(".edgefleet/")}


# -- the spec --------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "expected"), [
    ("hf://acme/kws", HubSpec("acme/kws", None, "main")),
    ("hf://acme/kws/onnx", HubSpec("acme/kws", "onnx", "main")),
    ("hf://acme/kws/onnx/", HubSpec("acme/kws", "onnx", "main")),
    ("hf://acme/kws/a/b@v1.0", HubSpec("acme/kws", "a/b", "v1.0")),
    (f"hf://acme/kws@{MAIN}", HubSpec("acme/kws", None, MAIN)),
    ("hf://acme/kws@refs/pr/1", HubSpec("acme/kws", None, "refs/pr/1")),
])
def test_parse_hub_spec(spec: str, expected: HubSpec) -> None:
    assert parse_hub_spec(spec) == expected


@pytest.mark.parametrize(("spec", "why"), [
    ("hf://acme", "OWNER/REPO"),
    ("hf:///kws", "OWNER/REPO"),
    ("hf://acme/kws@", "empty revision"),
    ("hf://acme/k ws", "not a valid Hub owner or repo name"),
    ("hf://acme/kws--x", "not a valid Hub owner or repo name"),
    ("hf://acme/kws\n", "not a valid Hub owner or repo name"),  # "$" allowed it
    ("hf://acme/kws/../x", "relative"),
    ("hf://acme/kws//onnx", "empty"),
    ("hf://acme/kws@../main", "not a branch"),
    ("acme/kws", "must start with hf://"),
])
def test_malformed_specs_say_why(spec: str, why: str) -> None:
    with pytest.raises(BundleError, match="expected hf://OWNER/REPO") as caught:
        parse_hub_spec(spec)
    assert why in str(caught.value)


def test_download_is_limited_to_what_a_bundle_uses() -> None:
    patterns = allow_patterns("onnx", None)
    assert "onnx/model_quantized.onnx" in patterns and "onnx/model.onnx" in patterns
    assert "onnx/*.json" in patterns and "config.json" in patterns  # inherited from the root
    assert not any(p.endswith("*.onnx") or p == "*" or p.startswith("*") for p in patterns)
    assert allow_patterns("", "other.onnx")[:3] == ["other.onnx", "other.onnx_data",
                                                   "other.onnx.data"]


# -- offline builds through the CLI ----------------------------------------------------------


def test_offline_build_records_commit_and_brings_side_files(cli: Cli, hf_cache: Path,
                                                             tmp_path: Path) -> None:
    built = build(cli, "hf://acme/kws/onnx")
    assert built["created"] is True and built["version"] == "1"
    assert built["source"] == {"type": "hf", "repo": "acme/kws", "subfolder": "onnx",
                               "revision": "main", "commit": MAIN}
    # model_quantized.onnx wins over model.onnx; the other exports stay out.
    assert built["model"]["path"] == "model_quantized.onnx"
    assert paths(built) == {"model_quantized.onnx", "config.json", "preprocessor_config.json",
                            "sample_inputs.npz", "vocab.txt"}
    by_path = {f["path"]: f["sha256"] for f in built["files"]}
    assert by_path["model_quantized.onnx"] == sha(quantized_bytes(2, tmp_path / "q2"))
    assert built["precision"] == "int8"
    assert by_path["sample_inputs.npz"] == sha(sample_npz(tmp_path / "again"))
    assert built["labels"] == LABELS
    assert built["preprocessing"] == {"type": "ast-fbank", "config": "preprocessor_config.json",
                                      "sampling_rate": 16000}
    shown = cli("bundle", "show", "kws").stdout
    assert f"hf://acme/kws/onnx@main (commit {MAIN})" in shown
    again = build(cli, "hf://acme/kws/onnx")
    assert again["created"] is False and again["digest"] == built["digest"]


def test_revision_pinning_by_branch_and_by_commit(cli: Cli, hf_cache: Path) -> None:
    main = build(cli, "hf://acme/kws/onnx")
    dev = build(cli, "hf://acme/kws/onnx@dev")
    assert dev["source"]["commit"] == DEV and dev["source"]["revision"] == "dev"
    assert dev["digest"] != main["digest"]
    dev_model = next(f for f in dev["files"] if f["path"] == "model_quantized.onnx")
    assert dev_model["sha256"] == sha(matmul_bytes(5))
    pinned = build(cli, f"hf://acme/kws/onnx@{MAIN}")
    assert pinned["source"]["commit"] == MAIN and pinned["source"]["revision"] == MAIN
    assert {f["sha256"] for f in pinned["files"]} == {f["sha256"] for f in main["files"]}


def test_missing_revision_offline_is_a_clear_error(cli: Cli, hf_cache: Path) -> None:
    for spec, revision in (("hf://acme/kws/onnx@v9", "v9"),
                           (f"hf://acme/kws@{'0' * 40}", "0" * 40),
                           ("hf://acme/never-fetched", "main")):
        failed = cli("bundle", "build", spec, "--name", "kws", expect=2)
        message = " ".join(failed.stderr.split())
        assert spec in message and f"revision {revision!r}" in message
        assert str(hf_cache) in message and "HF_HUB_OFFLINE=1" in message
        assert "hf download" in message and "network access" in message
        as_json = cli("bundle", "build", spec, "--name", "kws", "--json", expect=2).json
        assert "not in the local Hugging Face cache" in as_json["error"]
    assert cli("bundle", "list", "--json").json == []


def test_model_override_and_missing_model(cli: Cli, hf_cache: Path) -> None:
    plain = build(cli, "hf://acme/kws/onnx", "--model", "model.onnx")
    assert plain["model"]["path"] == "model.onnx"
    assert "model_quantized.onnx" not in paths(plain) and "config.json" in paths(plain)
    failed = cli("bundle", "build", "hf://acme/kws/onnx", "--name", "kws", "--model",
                 "nope.onnx", expect=2)
    assert "no nope.onnx in acme/kws/onnx" in " ".join(failed.stderr.split())
    nothing = cli("bundle", "build", "hf://acme/split", "--name", "split", expect=2)
    message = " ".join(nothing.stderr.split())
    assert "neither model_quantized.onnx nor model.onnx in acme/split" in message
    assert "--model" in message
    missing_folder = cli("bundle", "build", "hf://acme/kws/tflite", "--name", "kws", expect=2)
    assert "no folder 'tflite' in acme/kws" in missing_folder.stderr
    assert [b["version"] for b in cli("bundle", "list", "--json").json] == ["1"]


def test_side_files_from_the_repo_root_follow_a_model_in_a_subfolder(cli: Cli,
                                                                     hf_cache: Path) -> None:
    via_model = build(cli, "hf://acme/split", "--model", "onnx/model.onnx", name="split")
    assert via_model["model"]["path"] == "model.onnx"
    assert paths(via_model) == {"model.onnx", "config.json"}
    assert via_model["labels"] == ["no", "yes"]
    assert via_model["source"]["subfolder"] is None
    via_folder = build(cli, "hf://acme/split/onnx", name="split2")
    assert paths(via_folder) == {"model.onnx", "config.json"}  # model_q4.onnx stays out


def test_a_malformed_spec_registers_nothing(cli: Cli, hf_cache: Path) -> None:
    failed = cli("bundle", "build", "hf://acme", "--name", "kws", expect=2)
    assert "the repo must be OWNER/REPO" in failed.stderr
    assert cli("bundle", "list", "--json").json == []


def test_a_hub_build_quantizes_and_its_variant_keeps_the_source(cli: Cli,
                                                                 hf_cache: Path) -> None:
    built = build(cli, "hf://acme/kws/onnx@dev", "--model", "model.onnx", "--quantize", "int8")
    fp32, int8 = built["bundle"], built["variants"][0]
    assert fp32["source"]["commit"] == DEV and int8["source"] == fp32["source"]
    assert int8["version"] == "1-int8" and int8["parent"]["digest"] == fp32["digest"]
    assert int8["labels"] == LABELS and "preprocessor_config.json" in paths(int8)
    refused = cli("bundle", "build", "hf://acme/kws/onnx", "--name", "q", "--quantize", "int8",
                  expect=2)  # model_quantized.onnx is picked, and it is INT8 already
    assert "--model model.onnx" in " ".join(refused.stderr.split())


def test_hf_home_locates_the_cache(cli: Cli, hf_cache: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    hf_home = tmp_path / "hf-home"
    hf_home.mkdir()
    hf_cache.rename(hf_home / "hub")
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    assert build(cli, "hf://acme/kws/onnx@dev")["source"]["commit"] == DEV
    failed = cli("bundle", "build", "hf://acme/kws/onnx@v9", "--name", "kws", expect=2)
    assert str(hf_home / "hub") in " ".join(failed.stderr.split())
