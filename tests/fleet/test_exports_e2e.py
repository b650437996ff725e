"""Real exports benchmark and evaluate without flags, over real OpenSSH (issue 13 item 5): an
AST-style classifier whose batch and feature dims are dynamic (its preprocessor_config.json
decides them), a silero-vad-style model whose int64 scalar ``sr`` must be 16000 (given once, at
``bundle build --input``), and an .npz of integer labels built without ``--for``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..conftest import Cli
from .models import make_feature_classifier, make_silero_like_vad
from .test_push_e2e import setup_fleet

AST = {"feature_extractor_type": "ASTFeatureExtractor", "sampling_rate": 16000,
       "num_mel_bins": 8, "max_length": 24, "feature_size": 1}
LABELS = ["background", "crack"]


def test_exports_push_bench_and_eval_without_shape_or_input_flags(cli: Cli, sshd_factory,
                                                                  tmp_path: Path) -> None:
    hosts = sshd_factory(2)
    setup_fleet(cli, tmp_path, hosts)
    ast = tmp_path / "ast"
    make_feature_classifier(ast / "model.onnx", "input_values", ["batch_size", "time", "mel"],
                            1, 8)
    (ast / "config.json").write_text(json.dumps({"id2label": dict(enumerate(LABELS))}))
    (ast / "preprocessor_config.json").write_text(json.dumps(AST))
    vad = tmp_path / "vad"
    make_silero_like_vad(vad / "model.onnx")
    cli("bundle", "build", ast, "--name", "ast")
    cli("bundle", "build", vad, "--name", "vad", "--input", "sr=16000")
    for name in ("ast", "vad"):  # each device's smoke test runs the recorded golden inputs
        pushed = cli("push", name, "pis", "--json").json
        assert [p["smoke"]["ok"] for p in pushed] == [True, True], pushed

    out = cli("bench", "ast", "pis", "--threads", "1", "--warmup", "1", "--runs", "5",
              "--json").json
    assert out["state"] == "succeeded", out
    for result in out["results"]:
        assert result["ok"], result
        (spec,) = result["inputs"]
        assert spec["shape"] == [1, 24, 8] and spec["source"] == "generated"
        assert [(a["name"], a["size"]) for a in spec["assumed"]] == [
            ("batch_size", 1), ("time", 24), ("mel", 8)]
        assert spec["assumed"][1]["from"] == ("max_length in preprocessor_config.json "
                                              "(ASTFeatureExtractor)")
    table = cli("runs", "show", str(out["id"])).stdout
    assert "input input_values 1x24x8, assumed: batch_size = 1 (named like a batch " in table
    assert "time = 24 (max_length in preprocessor_config.json" in table
    markdown = cli("runs", "show", str(out["id"]), "--format", "md").stdout
    assert markdown.startswith("|") and "- input input_values 1x24x8, assumed:" in markdown

    vad_run = cli("bench", "vad", "pis", "--threads", "1", "--warmup", "1", "--runs", "5",
                  "--json").json
    assert vad_run["state"] == "succeeded", vad_run
    for result in vad_run["results"]:
        sources = {i["name"]: (i["source"], i["shape"]) for i in result["inputs"]}
        assert sources == {"input": ("generated", [1, 512]), "state": ("generated", [2, 1, 128]),
                           "sr": ("constant", [])}
    # The recorded 16000 is what made it run: another rate given here fails on every device.
    wrong = cli("bench", "vad", "pis", "--threads", "1", "--runs", "2", "--input", "sr=8000",
                "--json", expect=1).json
    assert all(not r["ok"] and "Gather" in (r["error"] or "") for r in wrong["results"]), wrong

    # Integer labels, no --for: class ids, named through the model's id2label by the eval.
    x = np.random.default_rng(1).standard_normal((6, 24, 8)).astype(np.float32)
    np.savez(tmp_path / "windows.npz", input_values=x, labels=np.array([0, 1, 1, 0, 1, 0]))
    built = cli("dataset", "build", tmp_path / "windows.npz", "--name", "windows",
                "--json").json
    assert built["labels"] == ["0", "1"] and built["label_ids"] is True
    evaluated = cli("eval", "ast", "windows", "pis", "--json").json
    assert evaluated["state"] == "succeeded", evaluated
    for result in evaluated["results"]:
        samples = result["eval"]["samples"]
        assert [s["label"] for s in samples] == ["background", "crack", "crack", "background",
                                                 "crack", "background"]
        assert result["eval"]["metrics"]["classes"] == LABELS
        assert sum(map(sum, result["eval"]["metrics"]["confusion_matrix"])) == 6
