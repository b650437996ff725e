"""AST filterbank on the device: our numpy features against fixtures that transformers'
ASTFeatureExtractor (numpy path) produced (scripts/make_fbank_fixtures.py), plus config
handling and the edge cases the reference has (too-short clips, float64 input)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.features import (
    FeatureExtractor,
    load_feature_extractor,
    load_from_bundle_dir,
)
from agent.fsutil import AgentError

FIXTURES = Path(__file__).parent / "fixtures" / "fbank"
TOLERANCE = 1e-4  # issue 5: within 1e-4 of the reference
EXPECTED = {
    "default_noise_3s", "default_chirp_clicks_10_5s", "default_near_silence_1s",
    "default_int16_range_2s", "default_one_frame", "default_too_short_300",
    "default_too_short_100", "small_clicks_2s", "small_chirp_4s", "8khz_noise_2_5s",
}
AST = {"feature_extractor_type": "ASTFeatureExtractor"}


def fixture(name: str) -> dict[str, Any]:
    with np.load(FIXTURES / f"{name}.npz") as data:
        out: dict[str, Any] = {key: data[key] for key in data.files}
    out["config"] = json.loads(str(out["config"]))
    return out


def extractor(config: dict[str, Any]) -> FeatureExtractor:
    fe = load_feature_extractor(config)
    assert fe is not None
    return fe


def test_fixture_set_is_complete_and_from_transformers() -> None:
    assert {p.stem for p in FIXTURES.glob("*.npz")} == EXPECTED
    total = sum(p.stat().st_size for p in FIXTURES.glob("*.npz"))
    assert total < 3 * 1024 * 1024, total
    for name in EXPECTED:
        version = str(fixture(name)["transformers_version"])
        assert version[0].isdigit() and "." in version, (name, version)


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if n != "default_too_short_100"))
def test_matches_reference(name: str) -> None:
    fx = fixture(name)
    config, ref = fx["config"], fx["features"]
    fe = extractor(config)
    out = fe(fx["waveform"])
    assert out.dtype == np.float32
    assert out.shape == (1, config["max_length"], config["num_mel_bins"]) == (1, *ref.shape)
    diff = float(np.abs(out[0].astype(np.float64) - ref).max())
    assert diff <= TOLERANCE, f"{name} ({fx['description']}): max abs diff {diff:.3g}"


def test_reference_paths_are_exercised() -> None:
    """The fixtures really cover padding, truncation, the mel floor and no normalisation."""
    pad_value = np.float32(0.0 - np.float32(-4.2677393)) / np.float32(4.5689974 * 2)
    padded = fixture("default_noise_3s")["features"]
    assert np.all(padded[298:] == pad_value)  # 48000 samples -> 298 frames
    assert not np.any(np.all(padded[:298] == pad_value, axis=1))
    truncated = fixture("default_chirp_clicks_10_5s")
    assert len(truncated["waveform"]) > (1024 - 1) * 160 + 400
    assert not np.any(np.all(truncated["features"] == pad_value, axis=1))
    short = fixture("default_too_short_300")["features"]  # zero frames: padding only
    assert np.all(short == pad_value)
    floor = np.log(np.float32(1.192092955078125e-07))
    silent = fixture("small_clicks_2s")["features"]  # do_normalize false: raw log-mel
    assert np.isclose(silent.min(), floor) and np.all(silent[198:] == 0.0)


def test_too_short_clip_fails_like_the_reference_but_clearly() -> None:
    fx = fixture("default_too_short_100")
    assert "negative dimensions" in str(fx["error"])  # what transformers raised on 100 samples
    fe = extractor(fx["config"])
    for waveform in (fx["waveform"], np.zeros(239, np.float32), np.zeros(0, np.float32)):
        with pytest.raises(AgentError, match=r"waveform has \d+ samples .*at least 240") as info:
            fe(waveform)
        assert info.value.code == "bad_input"
        assert info.value.extra["samples"] == len(waveform)
    assert np.all(fe(np.ones(240, np.float32)) == fe(np.zeros(399, np.float32)))  # zero frames


def test_float64_and_batch_of_one_inputs_match_float32() -> None:
    """The reference casts float64 to float32 first; a [1, n] array is one clip."""
    fx = fixture("default_noise_3s")
    fe = extractor(fx["config"])
    wave32 = fx["waveform"]
    wave64 = wave32.astype(np.float64) + 1e-12  # the extra bits vanish in the float32 cast
    expected = fe(wave32)
    assert np.array_equal(fe(wave64), expected)
    assert np.array_equal(fe(wave32[np.newaxis, :]), expected)
    with pytest.raises(AgentError, match=r"mono.*\[2, 48000\]"):
        fe(np.stack([wave32, wave32]))
    with pytest.raises(AgentError, match="complex"):
        fe(wave32.astype(np.complex64))


def test_missing_keys_take_the_reference_defaults() -> None:
    fx = fixture("default_noise_3s")
    fe = extractor(dict(AST))
    assert (fe.sampling_rate, fe.num_mel_bins, fe.max_length) == (16000, 128, 1024)
    assert np.array_equal(fe(fx["waveform"])[0], fx["features"])


@pytest.mark.parametrize("config", [
    {}, {"feature_extractor_type": "WhisperFeatureExtractor", "num_mel_bins": 80},
    {"feature_extractor_type": "Wav2Vec2FeatureExtractor"}, {"num_mel_bins": "oops"},
])
def test_non_ast_config_is_none(config: dict[str, Any]) -> None:
    assert load_feature_extractor(config) is None


@pytest.mark.parametrize("change, match", [
    ({"num_mel_bins": "128"}, r"num_mel_bins must be an integer >= 1, got '128'"),
    ({"num_mel_bins": 0}, r"num_mel_bins must be an integer >= 1, got 0"),
    ({"max_length": 10.5}, r"max_length must be an integer >= 1"),
    ({"sampling_rate": True}, r"sampling_rate must be an integer"),
    ({"sampling_rate": 41}, r"sampling_rate must be an integer >= 42, got 41"),
    ({"do_normalize": "yes"}, r"do_normalize must be true or false"),
    ({"mean": None}, r"mean must be a finite number, got None"),
    ({"std": float("nan")}, r"std must be a finite number"),
    ({"std": 0}, r"std must not be 0"),
    ({"feature_size": 2}, r"feature_size must be 1 \(mono audio\)"),
    ({"padding_value": "0"}, r"padding_value must be a finite number"),
    ({"return_attention_mask": 1}, r"return_attention_mask must be true or false"),
])
def test_malformed_ast_config_is_a_clear_bad_input(change: dict[str, Any], match: str) -> None:
    with pytest.raises(AgentError, match=match) as info:
        load_feature_extractor({**AST, **change})
    assert info.value.code == "bad_input"
    assert info.value.extra["key"] == next(iter(change))


def test_config_that_is_not_an_object_is_bad_input() -> None:
    with pytest.raises(AgentError, match="preprocessor config must be a JSON object, got list"):
        load_feature_extractor([AST])  # type: ignore[arg-type]


def test_load_from_bundle_dir(tmp_path: Path) -> None:
    fx = fixture("small_chirp_4s")
    version_dir = tmp_path / "v 1"
    (version_dir / "model").mkdir(parents=True)
    (version_dir / "model" / "preprocessor_config.json").write_text(json.dumps(fx["config"]))
    fe = load_from_bundle_dir(str(version_dir), "model/preprocessor_config.json")
    assert (fe.num_mel_bins, fe.max_length, fe.do_normalize) == (64, 300, False)
    assert np.abs(fe(fx["waveform"])[0] - fx["features"]).max() <= TOLERANCE

    with pytest.raises(AgentError, match=r"cannot read the preprocessor config .*missing\.json"):
        load_from_bundle_dir(str(version_dir), "missing.json")
    (version_dir / "bad.json").write_text("{not json")
    with pytest.raises(AgentError, match=r"bad\.json is not valid JSON"):
        load_from_bundle_dir(str(version_dir), "bad.json")
    (version_dir / "whisper.json").write_text(json.dumps({"feature_extractor_type": "Whisper"}))
    with pytest.raises(AgentError, match=r"whisper\.json has feature_extractor_type 'Whisper'"):
        load_from_bundle_dir(str(version_dir), "whisper.json")
    (version_dir / "broken.json").write_text(json.dumps({**AST, "max_length": -1}))
    with pytest.raises(AgentError, match=r"broken\.json: max_length must be an integer"):
        load_from_bundle_dir(str(version_dir), "broken.json")
