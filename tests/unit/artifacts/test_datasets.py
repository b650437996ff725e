"""Dataset build: WAV folders converted to mono float32 at the model's rate (checked against
scipy directly), label mapping through the bundle's id2label, clear errors naming the file or the
labels, content addressing (identical audio -> one blob, rebuild -> nothing new), .npz tensors,
and the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile
from scipy.signal import resample_poly

from orchestrator.artifacts.blobstore import BlobStore
from orchestrator.artifacts.bundles import build_bundle
from orchestrator.artifacts.datasets import (
    DatasetError,
    build_dataset,
    list_datasets,
    manifest_of_dataset,
    read_wav,
)
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Bundle
from orchestrator.demo.model import make_demo_classifier
from tests.conftest import Cli


@pytest.fixture
def settings(home: Path) -> Settings:
    return Settings(home=home)


def audio_model_folder(base: Path, labels: tuple[str, ...] = ("background", "crack")) -> Path:
    folder = base / "model"
    folder.mkdir()
    make_demo_classifier(folder / "model.onnx", seed=0)
    (folder / "config.json").write_text(json.dumps(
        {"id2label": {str(i): name for i, name in enumerate(labels)}}))
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"feature_extractor_type": "ASTFeatureExtractor", "sampling_rate": 16000,
         "num_mel_bins": 40, "max_length": 98}))
    return folder


def build_model(settings: Settings, folder: Path) -> Bundle:
    with session_scope(settings) as session:
        bundle = build_bundle(session, settings, folder, "crack").bundle
        session.expunge(bundle)
    return bundle


def stereo_int16(seed: int, n: int = 800) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-20000, 20000, size=(n, 2), dtype=np.int16)


def write_wav_folder(base: Path, clips: dict[str, list[np.ndarray]], rate: int = 8000) -> Path:
    folder = base / "wavs"
    for label, arrays in clips.items():
        (folder / label).mkdir(parents=True)
        for index, data in enumerate(arrays):
            wavfile.write(folder / label / f"clip{index}.wav", rate, data)
    (folder / "README.txt").write_text("not audio, not in a label folder")
    return folder


def load_npy(settings: Settings, sha: str) -> np.ndarray:
    return np.load(io.BytesIO(BlobStore(settings.blob_dir).path(sha).read_bytes()))


def test_stereo_8k_int16_becomes_mono_16k_float32_with_model_labels(
        settings: Settings, tmp_path: Path) -> None:
    bundle = build_model(settings, audio_model_folder(tmp_path))
    crack, quiet = stereo_int16(1), stereo_int16(2)
    folder = write_wav_folder(tmp_path, {"crack": [crack], "background": [quiet]})
    with session_scope(settings) as session:
        built = build_dataset(session, settings, folder, "roast", bundle=bundle)
        manifest = manifest_of_dataset(built.dataset)
    assert built.created and built.dataset.version == "1"
    assert manifest["kind"] == "dataset" and manifest["format"] == "audio"
    assert manifest["sampling_rate"] == 16000
    assert manifest["labels"] == ["background", "crack"]  # the model's class order
    assert [(s["id"], s["label"]) for s in manifest["samples"]] == [
        ("background/clip0.wav", "background"), ("crack/clip0.wav", "crack")]
    paths = {f["path"]: f["sha256"] for f in manifest["files"]}
    for sample, source in zip(manifest["samples"], (quiet, crack), strict=True):
        audio = load_npy(settings, paths[sample["path"]])
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert audio.shape == (2 * len(source),)  # 8 kHz -> 16 kHz
        mono = source.astype(np.float64).mean(axis=1) / 32768.0
        expected = resample_poly(mono.astype(np.float32), 2, 1)
        np.testing.assert_allclose(audio, expected, atol=1e-6)
    assert manifest["for"] == {"name": "crack", "version": bundle.version,
                               "digest": bundle.digest}


def test_unknown_labels_are_refused_naming_them_and_the_models(settings: Settings,
                                                                tmp_path: Path) -> None:
    bundle = build_model(settings, audio_model_folder(tmp_path))
    folder = write_wav_folder(tmp_path, {"crack": [stereo_int16(1)], "pop": [stereo_int16(2)],
                                         "hiss": [stereo_int16(3)]})
    with pytest.raises(DatasetError) as caught, session_scope(settings) as session:
        build_dataset(session, settings, folder, "roast", bundle=bundle)
    message = str(caught.value)
    assert "'hiss', 'pop'" in message and "background, crack" in message


def test_a_corrupt_wav_is_named(settings: Settings, tmp_path: Path) -> None:
    folder = write_wav_folder(tmp_path, {"crack": [stereo_int16(1)]})
    bad = folder / "crack" / "broken.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
    with pytest.raises(DatasetError, match="broken.wav: not a readable WAV file"), \
            session_scope(settings) as session:
        build_dataset(session, settings, folder, "roast", sampling_rate=16000)


@pytest.mark.parametrize(("name", "version", "message"), [
    ("roast\n", None, r"dataset name 'roast\\n' is not allowed"),
    ("roast", "1\n", r"dataset version '1\\n' is not allowed"),
])
def test_a_trailing_newline_in_a_name_or_version_is_refused(
        settings: Settings, tmp_path: Path, name: str, version: str | None,
        message: str) -> None:
    """The rules are checked with fullmatch: ``re.match`` with ``$`` let "roast\\n" through."""
    folder = write_wav_folder(tmp_path, {"crack": [stereo_int16(1)]})
    with pytest.raises(DatasetError, match=message), session_scope(settings) as session:
        build_dataset(session, settings, folder, name, version=version, sampling_rate=16000)
    with session_scope(settings) as session:
        assert list_datasets(session) == []


def test_rebuild_is_idempotent_and_identical_audio_is_one_blob(settings: Settings,
                                                                tmp_path: Path) -> None:
    same = stereo_int16(7)
    folder = write_wav_folder(tmp_path, {"a": [same, stereo_int16(8)], "b": [same]})
    with session_scope(settings) as session:
        first = build_dataset(session, settings, folder, "d", sampling_rate=16000)
        digest, files = first.dataset.digest, manifest_of_dataset(first.dataset)["files"]
    blobs = sorted(p.name for p in settings.blob_dir.rglob("*") if p.is_file())
    shas = [f["sha256"] for f in files]
    assert len(shas) == 3 and shas[0] == shas[2] != shas[1]
    with session_scope(settings) as session:
        again = build_dataset(session, settings, folder, "d", sampling_rate=16000)
        assert not again.created and again.dataset.digest == digest
    assert sorted(p.name for p in settings.blob_dir.rglob("*") if p.is_file()) == blobs
    (folder / "b" / "clip1.wav").write_bytes((folder / "a" / "clip1.wav").read_bytes())
    with session_scope(settings) as session:
        changed = build_dataset(session, settings, folder, "d", sampling_rate=16000)
        assert changed.created and changed.dataset.version == "2"
        assert changed.dataset.samples == 4


@pytest.mark.parametrize(("data", "scale"), [
    (np.array([0, 64, 128, 192, 255], dtype=np.uint8), None),
    (np.array([-2**31, 0, 2**30], dtype=np.int32), 2.0**31),
    (np.array([-0.5, 0.25, 1.0], dtype=np.float32), 1.0),
])
def test_sample_formats_scale_to_minus_one_one(tmp_path: Path, data: np.ndarray,
                                               scale: float | None) -> None:
    path = tmp_path / "x.wav"
    wavfile.write(path, 16000, data)
    rate, audio = read_wav(path)
    expected = ((data.astype(np.float64) - 128) / 128 if scale is None
                else data.astype(np.float64) / scale)
    assert rate == 16000 and audio.dtype == np.float32
    np.testing.assert_allclose(audio, expected, atol=1e-7)


def test_mixed_rates_need_a_target_rate(settings: Settings, tmp_path: Path) -> None:
    folder = write_wav_folder(tmp_path, {"a": [stereo_int16(1)]})
    wavfile.write(folder / "a" / "other.wav", 22050, stereo_int16(2))
    with pytest.raises(DatasetError, match="8000, 22050 Hz.*--sampling-rate"), \
            session_scope(settings) as session:
        build_dataset(session, settings, folder, "d")


def test_tensor_npz_labels_map_through_the_model(settings: Settings, tmp_path: Path) -> None:
    bundle = build_model(settings, audio_model_folder(tmp_path))
    x = np.random.default_rng(0).standard_normal((3, 1, 98, 40)).astype(np.float32)
    good = tmp_path / "good.npz"
    np.savez(good, log_mel=x, labels=np.array([1, 0, 1]))
    with session_scope(settings) as session:
        manifest = manifest_of_dataset(build_dataset(session, settings, good, "t",
                                                     bundle=bundle).dataset)
    assert manifest["format"] == "tensors" and manifest["sampling_rate"] is None
    assert [s["label"] for s in manifest["samples"]] == ["crack", "background", "crack"]
    assert [s["id"] for s in manifest["samples"]] == ["#0", "#1", "#2"]
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, mel=x, labels=np.array([0, 1, 2]))
    with pytest.raises(DatasetError, match=r"\['mel'\] do not match crack@1's inputs"), \
            session_scope(settings) as session:
        build_dataset(session, settings, wrong, "t", bundle=bundle)


def test_cli_build_list_show(cli: Cli, settings: Settings, tmp_path: Path) -> None:
    cli("bundle", "build", audio_model_folder(tmp_path), "--name", "crack")
    folder = write_wav_folder(tmp_path, {"crack": [stereo_int16(1)],
                                         "background": [stereo_int16(2), stereo_int16(3)]})
    built = cli("dataset", "build", folder, "--name", "roast", "--for", "crack", "--json").json
    assert built["created"] and built["per_label"] == {"background": 2, "crack": 1}
    again = cli("dataset", "build", folder, "--name", "roast", "--for", "crack", "--json").json
    assert not again["created"] and again["digest"] == built["digest"]
    listed = cli("dataset", "list", "--json").json
    assert [(d["name"], d["version"], d["samples"]) for d in listed] == [("roast", "1", 3)]
    shown = cli("dataset", "show", "roast@1", "--json").json
    assert [s["id"] for s in shown["sample_list"]] == [
        "background/clip0.wav", "background/clip1.wav", "crack/clip0.wav"]
    table = cli("dataset", "show", "roast").stdout
    assert "16000 Hz" in table and "crack" in table
    missing = cli("dataset", "show", "nope", "--json", expect=2).json
    assert "no dataset nope" in missing["error"]
