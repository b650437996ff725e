"""Cost of the agent's AST filterbank per audio window, and the reference beside it if present.

    python bench/features.py [--seconds 10] [--runs 30] [--warmup 3] [--json]

Why: for a streaming verdict the device must compute features AND run the model within one hop,
so preprocessing time per window is part of every "keeps up" answer. This times
``agent.features`` (default AST config: 128 mel bins, max_length 1024, 16 kHz) on a seeded
``--seconds`` window. When transformers is importable (it is not a project dependency; see
scripts/make_fbank_fixtures.py for the venv) it also times ASTFeatureExtractor's numpy path on
the same window and prints the ratio and the max abs difference of the outputs.

numpy's BLAS (used for the mel projection) may start threads; on a busy machine that costs more
than it saves. Compare with ``OPENBLAS_NUM_THREADS=1 python bench/features.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from agent.features import load_feature_extractor  # noqa: E402

CONFIG = {"feature_extractor_type": "ASTFeatureExtractor", "sampling_rate": 16000,
          "num_mel_bins": 128, "max_length": 1024, "do_normalize": True,
          "mean": -4.2677393, "std": 4.5689974}


def timed(fn: Callable[[], Any], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000.0)
    return out


def summary(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms)}


def reference() -> tuple[Callable[[np.ndarray], np.ndarray], str] | None:
    """(transformers' ASTFeatureExtractor on its numpy path, transformers version), or None when
    it cannot run here."""
    try:
        import transformers
        from transformers import ASTFeatureExtractor
        from transformers.utils import is_speech_available
    except ImportError:
        return None
    if is_speech_available():  # torchaudio present: that would time Kaldi's C++ path instead
        return None
    kwargs = {k: v for k, v in CONFIG.items() if k != "feature_extractor_type"}
    try:
        fe = ASTFeatureExtractor(**kwargs)
    except ImportError:  # transformers 5 needs torch even for the numpy path
        return None

    def run(waveform: np.ndarray) -> np.ndarray:
        return np.asarray(fe(waveform, sampling_rate=16000, return_tensors="np")["input_values"])

    return run, transformers.__version__


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    n = int(args.seconds * 16000)
    t = np.arange(n) / 16000
    waveform = (0.1 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * 440 * t)).astype(
        np.float32)
    ours = load_feature_extractor(CONFIG)
    assert ours is not None
    result: dict[str, Any] = {
        "window_s": args.seconds, "runs": args.runs, "numpy": np.__version__,
        "python": sys.version.split()[0],
        "agent": summary(timed(lambda: ours(waveform), args.runs, args.warmup)),
        "reference": None,
    }
    found = reference()
    if found is not None:
        ref, version = found
        ref_ms = timed(lambda: ref(waveform), max(3, args.runs // 5), 1)
        diff = float(np.abs(ref(waveform) - ours(waveform)).max())
        result["reference"] = {"transformers": version, **summary(ref_ms), "max_abs_diff": diff}
        result["speedup_p50"] = result["reference"]["p50_ms"] / result["agent"]["p50_ms"]

    if args.json:
        print(json.dumps(result))
        return 0
    a = result["agent"]
    print(f"AST fbank, {args.seconds:g} s window at 16 kHz, 128 mel bins, max_length 1024 "
          f"(python {result['python']}, numpy {result['numpy']}, {args.runs} runs)")
    print(f"  agent.features      p50 {a['p50_ms']:8.2f} ms  (min {a['min_ms']:.2f}, "
          f"max {a['max_ms']:.2f})")
    r = result["reference"]
    if r is None:
        print("  reference           not run (transformers with torch and without torchaudio "
              "not importable here)")
    else:
        print(f"  transformers {r['transformers']:<7}p50 {r['p50_ms']:8.2f} ms  (min "
              f"{r['min_ms']:.2f}, max {r['max_ms']:.2f})")
        print(f"  reference / agent   {result['speedup_p50']:.1f}x   max abs diff "
              f"{r['max_abs_diff']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
