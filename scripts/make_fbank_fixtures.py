"""Generate the reference fixtures for ``agent/features.py`` from transformers' ASTFeatureExtractor.

Why this exists: the agent computes AST log-mel filterbanks in numpy on the device (no torch, no
scipy there), and issue 5 requires it to match transformers' ASTFeatureExtractor within 1e-4. The
fixtures are what the reference produced for a fixed set of seeded signals and configs; the test
(tests/agent/test_features.py) replays them without transformers installed.

Regenerate (outside the project's environment; transformers is NOT a project dependency):

    python -m venv /tmp/fbank-ref
    /tmp/fbank-ref/bin/pip install transformers numpy torch   # CPU torch; NOT torchaudio
    /tmp/fbank-ref/bin/python scripts/make_fbank_fixtures.py

Why torch but not torchaudio: ASTFeatureExtractor takes its numpy path (transformers.audio_utils
``spectrogram`` + ``mel_filter_bank``) exactly when torchaudio is absent
(``is_speech_available()`` is False), but even that path pads/truncates with torch
(``torch.from_numpy`` + ``ZeroPad2d``), and transformers 5 refuses to build the class without
torch. The script asserts the numpy path is the one taken.

Every signal is seeded, so a rerun with the same transformers/numpy writes the same arrays.
Each .npz holds: ``waveform`` (float32, exactly what was fed to the reference), ``config`` (JSON
of the preprocessor_config.json keys), ``features`` (float32 [max_length, num_mel_bins], the
reference's ``input_values[0]``) or ``error`` (the reference's exception text, when it fails),
``transformers_version``, ``numpy_version`` and ``description``.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "agent" / "fixtures" / "fbank"
SR = 16000

DEFAULT_CONFIG: dict[str, Any] = {  # what MIT/ast-finetuned-audioset-10-10-0.4593 ships
    "feature_extractor_type": "ASTFeatureExtractor",
    "feature_size": 1,
    "sampling_rate": 16000,
    "num_mel_bins": 128,
    "max_length": 1024,
    "padding_value": 0.0,
    "do_normalize": True,
    "mean": -4.2677393,
    "std": 4.5689974,
    "return_attention_mask": False,
}
SMALL_CONFIG = {**DEFAULT_CONFIG, "num_mel_bins": 64, "max_length": 300, "do_normalize": False}
EIGHT_K_CONFIG = {**DEFAULT_CONFIG, "sampling_rate": 8000, "num_mel_bins": 40, "max_length": 200,
                  "mean": -6.5, "std": 3.25}


def rng(name: str) -> np.random.Generator:
    """One generator per fixture, seeded by its name, so fixtures don't shift when one is added."""
    return np.random.default_rng([ord(c) for c in name])


def noise_with_tones(n: int, r: np.random.Generator, sr: int = SR) -> np.ndarray:
    t = np.arange(n) / sr
    tones = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3100 * t + 0.5)
    return 0.2 * r.standard_normal(n) + tones


def chirp_with_clicks(n: int, r: np.random.Generator, sr: int = SR) -> np.ndarray:
    """A 30 Hz -> 7.5 kHz log chirp plus clustered broadband pops (first-crack-like)."""
    t = np.arange(n) / sr
    f0, f1, dur = 30.0, 7500.0, n / sr
    k = np.log(f1 / f0) / dur
    x = 0.25 * np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k)
    return x + pops(n, r)


def pops(n: int, r: np.random.Generator, count: int = 25) -> np.ndarray:
    x = np.zeros(n)
    for start in r.integers(0, max(n - 200, 1), count):
        length = int(r.integers(20, 200))
        decay = np.exp(-np.arange(length) / (length / 5))
        seg = x[start:start + length]
        seg += (0.9 * r.standard_normal(length) * decay)[:len(seg)]
    return x


def clicks_over_silence(n: int, r: np.random.Generator) -> np.ndarray:
    """Exact digital silence with isolated single-sample clicks: exercises the mel floor."""
    x = np.zeros(n)
    idx = r.integers(0, n, 12)
    x[idx] = r.choice([-1.0, 1.0], 12) * r.uniform(0.3, 1.0, 12)
    return x + pops(n, r, count=5)


def near_silence(n: int, r: np.random.Generator) -> np.ndarray:
    """Dither-level noise, a stretch of exact zeros and a DC offset (removed per frame)."""
    x = 1e-6 * r.standard_normal(n) + 3e-7
    x[n // 3: n // 2] = 0.0
    return x


def int16_range(n: int, r: np.random.Generator) -> np.ndarray:
    """Audio left in int16 units (+-32767), as from a WAV read without scaling: the reference does
    not rescale, so neither must we."""
    x = noise_with_tones(n, r) + pops(n, r)
    return np.clip(np.round(x * 20000), -32768, 32767)


# name -> (config, number of samples, signal, description)
Signal = Callable[[int, np.random.Generator], np.ndarray]
CASES: dict[str, tuple[dict[str, Any], int, Signal, str]] = {
    "default_noise_3s": (DEFAULT_CONFIG, 3 * SR, noise_with_tones,
                         "default AST config, 3 s noise + tones: padding path"),
    "default_chirp_clicks_10_5s": (DEFAULT_CONFIG, int(10.5 * SR), chirp_with_clicks,
                                   "default AST config, 10.5 s chirp + pops: truncation path"),
    "default_near_silence_1s": (DEFAULT_CONFIG, SR, near_silence,
                                "default AST config, near-silence with zeros: mel floor"),
    "default_int16_range_2s": (DEFAULT_CONFIG, 2 * SR, int16_range,
                               "default AST config, audio in int16 units"),
    "default_one_frame": (DEFAULT_CONFIG, 400, noise_with_tones,
                          "exactly one 25 ms frame"),
    "default_too_short_300": (DEFAULT_CONFIG, 300, noise_with_tones,
                              "shorter than one frame (300 samples): zero frames, all padding"),
    "default_too_short_100": (DEFAULT_CONFIG, 100, noise_with_tones,
                              "100 samples: the reference fails (negative frame count)"),
    "small_clicks_2s": (SMALL_CONFIG, 2 * SR, clicks_over_silence,
                        "64 bins, max_length 300, no normalisation, clicks over silence: padding"),
    "small_chirp_4s": (SMALL_CONFIG, 4 * SR, chirp_with_clicks,
                       "64 bins, max_length 300, no normalisation, chirp: truncation"),
    "8khz_noise_2_5s": (EIGHT_K_CONFIG, int(2.5 * 8000),
                        lambda n, r: noise_with_tones(n, r, sr=8000),
                        "8 kHz, 40 bins, max_length 200, own mean/std: truncation"),
}


def reference_extractor(config: dict[str, Any]) -> Any:
    from transformers import ASTFeatureExtractor
    from transformers.utils import is_speech_available

    # The numpy path is taken only without torchaudio; with it we would record Kaldi's C++ fbank.
    assert not is_speech_available(), "uninstall torchaudio: the numpy reference path is wanted"
    kwargs = {k: v for k, v in config.items() if k != "feature_extractor_type"}
    extractor = ASTFeatureExtractor(**kwargs)
    assert hasattr(extractor, "mel_filters"), "ASTFeatureExtractor did not build the numpy path"
    return extractor


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but with fixed zip timestamps, so an unchanged regeneration
    leaves the committed files byte-identical (no git churn)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def main() -> int:
    import transformers

    OUT.mkdir(parents=True, exist_ok=True)
    for name, (config, n, signal, description) in CASES.items():
        waveform = signal(n, rng(name)).astype(np.float32)
        extractor = reference_extractor(config)
        record: dict[str, Any] = {
            "waveform": waveform,
            "config": np.array(json.dumps(config, sort_keys=True)),
            "transformers_version": np.array(transformers.__version__),
            "numpy_version": np.array(np.__version__),
            "description": np.array(description),
        }
        try:
            out = extractor(waveform, sampling_rate=config["sampling_rate"], return_tensors="np")
        except Exception as exc:  # the reference's own failure is part of what we match
            record["error"] = np.array(f"{type(exc).__name__}: {exc}")
            print(f"{name:<28} reference raised {record['error']}")
        else:
            features = np.asarray(out["input_values"])[0]
            assert features.dtype == np.float32, features.dtype
            assert features.shape == (config["max_length"], config["num_mel_bins"]), features.shape
            record["features"] = features
            print(f"{name:<28} {features.shape} {description}")
        write_npz(OUT / f"{name}.npz", record)
    total = sum(p.stat().st_size for p in OUT.glob("*.npz"))
    print(f"wrote {len(CASES)} fixtures, {total / 1024:.0f} KB, "
          f"transformers {transformers.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
