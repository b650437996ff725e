#!/usr/bin/env python3
"""Generate the demo first-crack bundle folder and its labelled WAV eval set, and (``--check``)
measure how well the FP32 model and a dynamic-INT8 copy classify that eval set.

Why a script: the demo builds these itself (orchestrator/demo/model.py), but when changing the
synthetic audio or the network you want the numbers at once, without a fleet:

    python scripts/make_demo_model.py /tmp/fc --check
    python scripts/make_demo_model.py /tmp/fc --check --json

Writes OUT/model/ (model.onnx, config.json, preprocessor_config.json, sample_inputs.npz) and
OUT/eval/<label>/*.wav. Features for the check come from agent/features.py, the device's code.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.features import load_feature_extractor  # noqa: E402
from orchestrator.demo.audio import (  # noqa: E402
    DEMO_EVAL_SEED,
    DEMO_EVAL_WINDOWS,
    LABELS,
    WINDOW_S,
    write_eval_set,
)
from orchestrator.demo.model import make_trained_classifier  # noqa: E402


def _features(model_dir: Path, wavs: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    extractor = load_feature_extractor(
        json.loads((model_dir / "preprocessor_config.json").read_text()))
    assert extractor is not None
    features, labels = [], []
    for path in wavs:
        with wave.open(str(path)) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        features.append(extractor(pcm.astype(np.float32) / 32768.0))
        labels.append(LABELS.index(path.parent.name))
    return np.concatenate(features), np.array(labels)


def _score(model: Path, features: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = np.concatenate([session.run(["logits"], {"input_values": features[i:i + 1]})[0]
                             for i in range(len(features))])
    pred = logits.argmax(axis=1)
    confusion = [[int(np.sum((labels == t) & (pred == p))) for p in (0, 1)] for t in (0, 1)]
    return {"model_bytes": model.stat().st_size, "accuracy": float(np.mean(pred == labels)),
            "confusion_matrix": confusion}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write model/ and eval/ into")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--eval-windows", type=int, default=DEMO_EVAL_WINDOWS)
    parser.add_argument("--eval-seed", type=int, default=DEMO_EVAL_SEED)
    parser.add_argument("--check", action="store_true",
                        help="score FP32 and dynamic-INT8 on the eval set")
    parser.add_argument("--json", action="store_true", help="print machine-readable output")
    args = parser.parse_args(argv)
    if args.eval_seed == args.seed:
        parser.error("--eval-seed must differ from --seed: the eval set must be unseen audio")

    started = time.perf_counter()
    model_dir = make_trained_classifier(args.out / "model", seed=args.seed)
    report: dict[str, Any] = {"model_dir": str(model_dir), "window_s": WINDOW_S,
                              "generation_s": round(time.perf_counter() - started, 2)}
    wavs = write_eval_set(args.out / "eval", args.eval_windows, args.eval_seed)
    report["eval"] = {"dir": str(args.out / "eval"), "windows": len(wavs),
                      "first_crack": sum(p.parent.name == LABELS[1] for p in wavs)}
    if args.check:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        features, labels = _features(model_dir, wavs)
        report["fp32"] = _score(model_dir / "model.onnx", features, labels)
        with tempfile.TemporaryDirectory() as tmp:
            int8 = Path(tmp) / "model.int8.onnx"
            quantize_dynamic(str(model_dir / "model.onnx"), str(int8),
                             weight_type=QuantType.QInt8)
            report["int8"] = _score(int8, features, labels)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"model: {report['model_dir']} ({report['generation_s']} s to generate, "
          f"{WINDOW_S:g} s windows)")
    print(f"eval set: {report['eval']['dir']}, {report['eval']['windows']} windows, "
          f"{report['eval']['first_crack']} first crack")
    for variant in ("fp32", "int8"):
        if variant in report:
            r = report[variant]
            print(f"{variant}: {r['model_bytes']} bytes, accuracy {r['accuracy']:.3f}, "
                  f"confusion (rows true, cols predicted; {LABELS[0]}, {LABELS[1]}) "
                  f"{r['confusion_matrix']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
