"""Evaluation datasets: build from a labelled WAV folder or an .npz of input tensors, store,
look up.

A dataset is handled like a bundle (docs/pipeline.md "Datasets"): a manifest lists every file
with its sha256 and size, the canonical manifest's sha256 is the dataset's identity, files live
once in the control plane's content-addressed blob store, and devices receive only the blobs
they lack.

Why audio is converted here, not on the device: resampling (scipy's polyphase filter) needs
scipy, which the agent may not import, and doing it once on the control plane means every
device evaluates exactly the same float32 samples — a precondition for comparing their
confusion matrices. Why each clip is stored as a ``.npy`` of float32 mono at the model's rate:
the agent reads it with numpy alone, and identical audio gives an identical blob (the .npy
header depends only on dtype and length), so a rebuild stores and sends nothing new.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlmodel import Session, col, select

from agent.protocol import canonical_json, manifest_digest
from orchestrator.access import audit
from orchestrator.artifacts import refs
from orchestrator.artifacts.blobfetch import blob_store
from orchestrator.artifacts.blobstore import BlobStore
from orchestrator.artifacts.bundles import manifest_of
from orchestrator.core.config import Settings
from orchestrator.core.errors import EdgeFleetError
from orchestrator.core.listings import dataset_public as dataset_public
from orchestrator.core.models import Bundle, Dataset

SCHEMA = "edgefleet.dataset/v1"
TENSORS_PATH = "tensors.npz"
LABELS_KEY = "labels"


class DatasetError(EdgeFleetError):
    pass


@dataclass
class DatasetBuild:
    dataset: Dataset
    created: bool  # False when the latest version already had exactly these samples


def check_name(name: str) -> str:
    return refs.check_name(name, "dataset", DatasetError)


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``name`` or ``name@version``."""
    return refs.parse_ref(ref, "dataset", DatasetError)


# --- audio --------------------------------------------------------------------------------


def read_wav(path: Path) -> tuple[int, np.ndarray]:
    """(rate, float32 mono samples in [-1, 1]); DatasetError naming the file if unreadable.

    Integer PCM is scaled by its full range (uint8 is offset binary around 128); float files
    are taken as they are. Several channels are averaged: a mono model hears the mix.
    """
    from scipy.io import wavfile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown chunks (LIST, cue) are skipped, fine
            rate, data = wavfile.read(path)
    except Exception as exc:  # scipy's reader fails in many ways on a damaged file
        raise DatasetError(f"{path}: not a readable WAV file ({type(exc).__name__}: {exc}); "
                           "re-export it as PCM "
                           "or float WAV, or remove it") from None
    if data.dtype == np.uint8:
        audio = (data.astype(np.float32) - 128.0) / 128.0
    elif data.dtype == np.int16:
        audio = data.astype(np.float32) / 32768.0
    elif data.dtype == np.int32:
        audio = (data.astype(np.float64) / 2147483648.0).astype(np.float32)
    elif data.dtype.kind == "f":
        audio = data.astype(np.float32)
    else:
        raise DatasetError(f"{path}: unsupported WAV sample type {data.dtype}; use 8/16/24/32-"
                           "bit PCM or float")
    if audio.ndim == 2:
        audio = audio.mean(axis=1, dtype=np.float32)
    if audio.size == 0:
        raise DatasetError(f"{path}: the WAV file has no samples")
    if not np.all(np.isfinite(audio)):
        raise DatasetError(f"{path}: the WAV file holds NaN or infinite samples")
    return int(rate), audio


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``audio`` at ``target`` Hz (scipy resample_poly, the ratio reduced by the gcd)."""
    if rate == target:
        return audio.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    return resample_poly(audio, target // g, rate // g).astype(np.float32)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _store_bytes(store: BlobStore, data: bytes) -> tuple[str, int]:
    store.root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=store.root, prefix=".dataset-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return store.add_file(Path(tmp))
    finally:
        os.unlink(tmp)


def _wav_files(folder: Path) -> list[tuple[str, Path]]:
    """(label, file) for every ``<label>/*.wav`` (hidden entries skipped), sorted."""
    found = []
    for label_dir in sorted(p for p in folder.iterdir() if p.is_dir()
                            and not p.name.startswith(".")):
        for wav in sorted(label_dir.iterdir()):
            if wav.is_file() and not wav.name.startswith(".") and wav.suffix.lower() == ".wav":
                found.append((label_dir.name, wav))
    if not found:
        raise DatasetError(f"{folder}: no <label>/*.wav files found; lay the folder out as "
                           "yes/clip1.wav, no/clip2.wav, ... (folder name = label)")
    return found


# --- the model's view ---------------------------------------------------------------------


def model_labels(bundle: Bundle) -> list[str]:
    labels = manifest_of(bundle).get("labels")
    if not labels:
        raise DatasetError(f"{bundle.name}@{bundle.version} has no labels: put a config.json "
                           "with id2label next to the model and rebuild the bundle")
    return [str(label) for label in labels]


def class_id_names(names: list[str], labels: list[str], what: str) -> dict[str, str]:
    """Class ids ("0", "1": integer labels of an .npz built without ``--for``) -> the model's
    label names (its id2label), or DatasetError naming the ids it does not have."""
    bad = sorted((n for n in names if not n.isdigit() or int(n) >= len(labels)),
                 key=lambda n: (len(n), n))
    if bad:
        raise DatasetError(f"{what}: class id(s) {', '.join(bad)} are outside the model's "
                           f"0..{len(labels) - 1} ({', '.join(labels)})")
    return {n: labels[int(n)] for n in names}


def check_labels(names: list[str], labels: list[str], what: str) -> None:
    unknown = sorted(set(names) - set(labels))
    if unknown:
        raise DatasetError(f"{what}: label(s) {', '.join(map(repr, unknown))} are not among "
                           f"the model's labels ({', '.join(labels)}); rename the folders or "
                           "check the model's config.json id2label")


def model_rate(bundle: Bundle) -> int | None:
    pre = manifest_of(bundle).get("preprocessing") or {}
    rate = pre.get("sampling_rate")
    return int(rate) if rate else None


# --- building -----------------------------------------------------------------------------


def _audio_entries(source: Path, store: BlobStore, rate: int | None,
                   on_file: Callable[[str, int], None] | None,
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    files, samples = [], []
    decoded = [(label, wav, *read_wav(wav)) for label, wav in _wav_files(source)]
    if rate is None:
        rates = sorted({r for _, _, r, _ in decoded})
        if len(rates) > 1:
            raise DatasetError(f"{source}: the files have different sampling rates "
                               f"({', '.join(map(str, rates))} Hz); say which rate the model "
                               "expects with --for NAME[@VERSION] or --sampling-rate")
        rate = rates[0]
    for index, (label, wav, wav_rate, audio) in enumerate(decoded):
        sha, size = _store_bytes(store, npy_bytes(resample(audio, wav_rate, rate)))
        path = f"samples/{index:06d}.npy"
        files.append({"path": path, "sha256": sha, "size": size})
        samples.append({"id": f"{label}/{wav.name}", "path": path, "label": label})
        if on_file:
            on_file(f"{label}/{wav.name}", size)
    return files, samples, rate


def _tensor_entries(source: Path, store: BlobStore, bundle: Bundle | None,
                    labels: list[str] | None,
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    """Files, samples, and whether the labels are class ids left for eval to name (integer
    labels built without ``--for``: numpy's and scikit-learn's convention)."""
    try:
        with np.load(source, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{source}: not a readable .npz ({exc})") from None
    if LABELS_KEY not in arrays:
        raise DatasetError(f"{source}: no 'labels' array; save one label (class id or name) "
                           "per sample next to the input arrays")
    raw = arrays.pop(LABELS_KEY)
    if raw.ndim != 1 or not arrays:
        raise DatasetError(f"{source}: 'labels' must be 1-D and at least one input array "
                           "must be present")
    for key, array in arrays.items():
        if array.ndim < 1 or array.shape[0] != raw.shape[0]:
            raise DatasetError(f"{source}: array {key!r} has {array.shape[0] if array.ndim else 0}"
                               f" samples on its first axis, 'labels' has {raw.shape[0]}")
    if bundle is not None:
        inputs = [i["name"] for i in manifest_of(bundle).get("model", {}).get("inputs", [])]
        missing = [name for name in inputs if name not in arrays]
        extra = [name for name in arrays if name not in inputs]
        if missing or extra:
            raise DatasetError(f"{source}: arrays {sorted(arrays)} do not match "
                               f"{bundle.name}@{bundle.version}'s inputs {inputs}")
    if raw.dtype.kind in "iu":
        if raw.min() < 0:
            raise DatasetError(f"{source}: class ids must be >= 0, got {int(raw.min())}")
        if labels is not None and raw.max() >= len(labels):
            raise DatasetError(f"{source}: class ids {sorted(set(raw.tolist()))} are outside "
                               f"the model's 0..{len(labels) - 1} ({', '.join(labels)})")
        names = [labels[int(i)] if labels is not None else str(int(i)) for i in raw]
    else:
        names = [str(x) for x in raw.tolist()]
    sha, size = store.add_file(source)
    files = [{"path": TENSORS_PATH, "sha256": sha, "size": size}]
    samples = [{"id": f"#{i}", "path": TENSORS_PATH, "label": name}
               for i, name in enumerate(names)]
    return files, samples, raw.dtype.kind in "iu" and labels is None


def next_version(session: Session, name: str) -> str:
    return refs.next_version(session, Dataset, name)


def latest(session: Session, name: str) -> Dataset | None:
    return session.exec(select(Dataset).where(Dataset.name == name)
                        .order_by(col(Dataset.id).desc())).first()


def build_dataset(session: Session, settings: Settings, source: Path, name: str,
                  version: str | None = None, bundle: Bundle | None = None,
                  sampling_rate: int | None = None,
                  on_file: Callable[[str, int], None] | None = None,
                  actor: str = "") -> DatasetBuild:
    """Convert, hash into the blob store, write the manifest, register the version.

    ``bundle`` (``--for``) gives the sampling rate (its preprocessing) and the labels every
    folder name must map to; its label order becomes the dataset's class order.
    """
    check_name(name)
    if version is not None:
        refs.check_version(version, "dataset", DatasetError)
        if session.exec(select(Dataset).where(Dataset.name == name,
                                              Dataset.version == version)).first():
            raise DatasetError(f"dataset {name}@{version} already exists; pick another --version")
    if not source.exists():
        raise DatasetError(f"{source}: no such folder or file")
    if sampling_rate is not None and sampling_rate < 1:
        raise DatasetError(f"--sampling-rate {sampling_rate}: must be a positive number of Hz")
    labels = model_labels(bundle) if bundle is not None else None
    store = blob_store(settings)
    rate: int | None = None
    label_ids = False
    if source.is_dir():
        fmt = "audio"
        wanted = sampling_rate or (model_rate(bundle) if bundle is not None else None)
        files, samples, rate = _audio_entries(source, store, wanted, on_file)
    elif source.suffix.lower() == ".npz":
        fmt = "tensors"
        files, samples, label_ids = _tensor_entries(source, store, bundle, labels)
    else:
        raise DatasetError(f"{source}: give a folder of <label>/*.wav files or an .npz of "
                           "input tensors with a 'labels' array")
    names = sorted({s["label"] for s in samples}, key=lambda n: (len(n), n) if label_ids
                   else (0, n))  # class ids in numeric order: "2" before "10"
    if labels is not None:
        check_labels(names, labels, str(source))
    class_names = labels if labels is not None else names
    body: dict[str, Any] = {"format": fmt, "sampling_rate": rate, "labels": class_names,
                            "files": files, "samples": samples}
    if label_ids:  # named at eval time through the model's id2label (evals.plan_eval)
        body["label_ids"] = True
    previous = latest(session, name)
    if version is None and previous is not None:
        old = manifest_of_dataset(previous)
        if all(old.get(key) == value for key, value in body.items()) and \
                old.get("label_ids") == body.get("label_ids"):
            return DatasetBuild(previous, created=False)
    version = version or next_version(session, name)
    manifest: dict[str, Any] = {
        "schema": SCHEMA, "kind": "dataset", "name": name, "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": {"type": "folder" if source.is_dir() else "file",
                   "path": str(source.resolve())},
        **body,
    }
    if bundle is not None:
        manifest["for"] = {"name": bundle.name, "version": bundle.version,
                           "digest": bundle.digest}
    dataset = Dataset(name=name, version=version, digest=manifest_digest(manifest), format=fmt,
                      sampling_rate=rate, samples=len(samples), labels=class_names,
                      size_bytes=sum(f["size"] for f in files),
                      manifest_json=canonical_json(manifest).decode("utf-8"))
    session.add(dataset)
    session.flush()
    audit.add_event(session, actor, "dataset.build", f"dataset:{name}@{version}",
                    {"digest": dataset.digest, "samples": dataset.samples,
                     "labels": class_names, "for": manifest.get("for")})
    return DatasetBuild(dataset, created=True)


# --- reading ------------------------------------------------------------------------------


def get_dataset(session: Session, ref: str) -> Dataset:
    return refs.get_by_ref(session, Dataset, ref, "dataset", DatasetError, latest,
                           "edgefleet dataset build DIR --name NAME")


def list_datasets(session: Session) -> list[Dataset]:
    return list(session.exec(select(Dataset).order_by(col(Dataset.name), col(Dataset.id))).all())


def manifest_of_dataset(dataset: Dataset) -> dict[str, Any]:
    return json.loads(dataset.manifest_json)


