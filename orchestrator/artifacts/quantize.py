"""INT8 variants of an FP32 bundle, made with onnxruntime.quantization.

A variant is another version of the same bundle name (``N@3-int8``, ``N@3-int8-static``) whose
manifest links it to its FP32 parent by digest and records how it was made (docs/pipeline.md,
``parent`` / ``quantization``). It holds the parent's files with the model replaced, so it is
self-contained on a device (labels, preprocessing, sample inputs all come along), and
build_bundle gives it its own golden outputs: the device checks the INT8 model against what the
INT8 model computed, not against FP32 numbers it was never meant to reproduce exactly.

Two methods, because they suit different models:
- ``int8``: dynamic quantization (QInt8 weights, activations quantized at run time). No data
  needed; the right choice for MatMul/Gemm-heavy models (transformers, MLPs).
- ``int8-static``: static QDQ with activation ranges calibrated on the user's inputs. Dynamic
  quantization turns Conv into ConvInteger, which is slow on ARM; static QDQ runs as QLinearConv.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from sqlmodel import Session, select

from agent.inputs import NUMPY_DTYPES
from orchestrator.artifacts.blobfetch import blob_store, ensure_local, needed_files
from orchestrator.artifacts.bundles import build_bundle, manifest_of
from orchestrator.core.config import Settings
from orchestrator.core.errors import BundleError
from orchestrator.core.models import Bundle

log = logging.getLogger(__name__)

DYNAMIC = "int8"
STATIC = "int8-static"
MODES = (DYNAMIC, STATIC)
# Parent manifest keys a variant inherits as they are (not computed by build_bundle itself).
INHERITED_KEYS = ("streaming",)
OWN_PREFIX = ".edgefleet/"  # golden files: build_bundle makes the variant's own


@dataclass
class VariantResult:
    bundle: Bundle
    created: bool  # False when this parent already had this variant
    note: str | None = None


@dataclass
class Calibration:
    batches: list[dict[str, np.ndarray]]
    samples: int
    sha256: str


def check_request(mode: str | None, calibration: Path | None) -> None:
    """Refuse a bad combination before anything is built."""
    if mode is None:
        if calibration is not None:
            raise BundleError("--calibration is only used with --quantize int8-static")
        return
    if mode not in MODES:
        raise BundleError(f"--quantize {mode}: use one of {', '.join(MODES)}")
    if mode == STATIC and calibration is None:
        raise BundleError("--quantize int8-static needs --calibration DIR: a folder of .npz "
                          "files, arrays keyed by model input name, first axis = samples")
    if mode == DYNAMIC and calibration is not None:
        raise BundleError("--calibration is only used with --quantize int8-static (dynamic "
                          "quantization needs no data)")


def variant_version(parent_version: str, mode: str) -> str:
    return f"{parent_version}-{mode}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fit(file: Path, name: str, array: np.ndarray, spec: dict[str, Any]) -> tuple[np.ndarray, int]:
    """Check one calibration array against the model input; return it (cast when only the
    float width differs) and the batch step (the model's fixed first dim, else 1)."""
    shape = spec["shape"]
    want = NUMPY_DTYPES.get(spec["dtype"])
    dims = "x".join(str(d) if d is not None else "?" for d in shape)
    if array.ndim != len(shape):
        raise BundleError(f"{file}: input {name!r} has shape {list(array.shape)}, the model "
                          f"expects {len(shape)} dims ({dims}; first axis = samples)")
    for axis in range(1, len(shape)):
        if isinstance(shape[axis], int) and shape[axis] != array.shape[axis]:
            raise BundleError(f"{file}: input {name!r} has shape {list(array.shape)}, the model "
                              f"expects {dims} (dim {axis} must be {shape[axis]})")
    step = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else 1
    if array.shape[0] == 0 or array.shape[0] % step:
        raise BundleError(f"{file}: input {name!r} has {array.shape[0]} rows on the first axis; "
                          f"the model takes batches of {step}")
    if want is None:
        raise BundleError(f"{file}: input {name!r} has type {spec['dtype']}, which calibration "
                          "does not support")
    if array.dtype != np.dtype(want):
        if array.dtype.kind == "f" and np.dtype(want).kind == "f":
            array = array.astype(want)
        else:
            raise BundleError(f"{file}: input {name!r} is {array.dtype}, the model wants {want}")
    return array, step


def load_calibration(path: Path, inputs: list[dict[str, Any]]) -> Calibration:
    """Calibration batches from a folder of .npz files (or one .npz), checked against the
    model's inputs so a mistake names the file and the input instead of failing deep inside
    onnxruntime."""
    if not path.exists():
        raise BundleError(f"--calibration {path}: no such folder or file")
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.suffix == ".npz" and not p.name.startswith("."))
    if not files:
        raise BundleError(f"--calibration {path}: no .npz files (each holds arrays keyed by "
                          "model input name, first axis = samples)")
    by_name = {i["name"]: i for i in inputs}
    batches: list[dict[str, np.ndarray]] = []
    listing = hashlib.sha256()
    for file in files:
        try:
            with np.load(file, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise BundleError(f"{file}: not a readable .npz ({exc})") from None
        unknown = sorted(set(arrays) - set(by_name))
        if unknown:
            raise BundleError(f"{file}: array {unknown[0]!r} is not a model input (inputs: "
                              f"{', '.join(by_name)})")
        missing = [name for name in by_name if name not in arrays]
        if missing:
            raise BundleError(f"{file}: no array for model input {missing[0]!r} (the file has: "
                              f"{', '.join(arrays) or 'nothing'})")
        fitted = {name: _fit(file, name, arrays[name], by_name[name]) for name in by_name}
        counts = {name: a.shape[0] // step for name, (a, step) in fitted.items()}
        if len(set(counts.values())) != 1:
            raise BundleError(f"{file}: inputs hold different numbers of samples "
                              f"({', '.join(f'{k}: {v}' for k, v in counts.items())})")
        for index in range(next(iter(counts.values()))):
            batches.append({name: a[index * step:(index + 1) * step]
                            for name, (a, step) in fitted.items()})
        listing.update(f"{file.name}\0{_sha256(file)}\n".encode())
    return Calibration(batches=batches, samples=len(batches), sha256=listing.hexdigest())


class _Reader(CalibrationDataReader):
    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _preprocess(src: Path, dest: Path) -> bool:
    """onnxruntime's recommended pre-processing before quantization (shape inference, graph
    optimisation such as Conv+BatchNorm fusion, so the quantizer and calibration see the graph
    that runs). Optional: a model it cannot handle is quantized as it is."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dest))
    except Exception:  # symbolic shape inference gives up on some graphs; fall back
        return False
    return dest.is_file()


class _Kept(logging.Handler):
    """Keeps what onnxruntime's quantizer logs, for our own logger at debug level."""

    def emit(self, record: logging.LogRecord) -> None:
        log.debug("onnxruntime quantization: %s", record.getMessage())


@contextlib.contextmanager
def _quantizer_logging() -> Iterator[None]:
    """onnxruntime's quantization tools call ``logging.warning`` on the root logger; with no
    handler there, that runs ``logging.basicConfig`` and its advice ("Please consider to run
    pre-processing before quantization...", about steps we take or choices we made) leaks onto
    the user's stderr, for the rest of the process. A handler of our own on an unconfigured
    root keeps it in our debug log instead; a root an application configured is left alone."""
    root = logging.getLogger()
    kept = _Kept() if not root.handlers else None
    if kept is not None:
        root.addHandler(kept)
    try:
        yield
    finally:
        if kept is not None:
            root.removeHandler(kept)


def quantize_model(src: Path, dest: Path, mode: str,
                   calibration: Calibration | None) -> dict[str, Any]:
    """Write the quantized model to ``dest``; return the manifest's ``quantization`` record
    (without ``size_ratio``, which the caller knows)."""
    with _quantizer_logging():
        return _quantize_model(src, dest, mode, calibration)


def _quantize_model(src: Path, dest: Path, mode: str,
                    calibration: Calibration | None) -> dict[str, Any]:
    pre = dest.with_name("preprocessed.onnx")
    preprocessed = _preprocess(src, pre)
    model = pre if preprocessed else src
    if mode == DYNAMIC:
        quantize_dynamic(model, dest, weight_type=QuantType.QInt8)
        return {"method": "dynamic", "weight_type": "QInt8", "format": "QOperator",
                "preprocessed": preprocessed}
    assert calibration is not None
    quantize_static(model, dest, _Reader(calibration.batches),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    return {"method": "static", "weight_type": "QInt8", "activation_type": "QInt8",
            "format": "QDQ", "per_channel": True, "preprocessed": preprocessed,
            "calibration": {"samples": calibration.samples, "sha256": calibration.sha256}}


def _existing(session: Session, parent: Bundle, version: str,
              calibration: Calibration | None) -> Bundle | None:
    bundle = session.exec(
        select(Bundle).where(Bundle.name == parent.name, Bundle.version == version)).first()
    if bundle is None:
        return None
    manifest = manifest_of(bundle)
    ref = f"{bundle.name}@{bundle.version}"
    if (manifest.get("parent") or {}).get("digest") != parent.digest:
        raise BundleError(f"{ref} already exists and was not made from {parent.name}@"
                          f"{parent.version} ({parent.digest[:12]}); build under a new --version")
    made = (manifest.get("quantization") or {}).get("calibration") or {}
    if calibration is not None and made.get("sha256") != calibration.sha256:
        raise BundleError(f"{ref} already exists, calibrated on other data (sha256 "
                          f"{str(made.get('sha256'))[:12]}); to re-calibrate, build the model "
                          "under a new --version")
    return bundle


def make_variant(session: Session, settings: Settings, parent: Bundle, mode: str,
                 calibration_dir: Path | None = None, golden_rtol: float | None = None,
                 golden_atol: float | None = None) -> VariantResult:
    """Quantize ``parent``'s model and register it as ``<parent version>-<mode>``; reuse the
    variant when this parent already has one (rebuilding must not pile up duplicates)."""
    check_request(mode, calibration_dir)
    manifest = manifest_of(parent)
    ref = f"{parent.name}@{parent.version}"
    if "parent" in manifest or parent.precision == "int8":
        raise BundleError(f"{ref} is already INT8 ({manifest['model']['path']}); --quantize "
                          "needs an FP32 model (from a Hub repo: pick the FP32 export, e.g. "
                          "--model model.onnx)")
    calibration = (load_calibration(calibration_dir, manifest["model"]["inputs"])
                   if mode == STATIC and calibration_dir is not None else None)
    version = variant_version(parent.version, mode)
    existing = _existing(session, parent, version, calibration)
    if existing is not None:
        return VariantResult(bundle=existing, created=False)

    store = blob_store(settings)
    # the parent's files, on a host that did not build it (a worker): from the shared source
    ensure_local(settings, store, needed_files(manifest, ref))
    model_rel = manifest["model"]["path"]
    entry = next(f for f in manifest["files"] if f["path"] == model_rel)
    with tempfile.TemporaryDirectory(prefix="edgefleet-quantize-") as tmp:
        work = Path(tmp)
        src = work / "fp32.onnx"
        shutil.copyfile(store.path(entry["sha256"]), src)
        out = work / Path(model_rel).name
        try:
            record = quantize_model(src, out, mode, calibration)
        except Exception as exc:  # onnxruntime raises anything from ValueError to its own Fail
            raise BundleError(f"{ref}: onnxruntime could not quantize {model_rel} ({mode}): "
                              f"{type(exc).__name__}: {exc}") from None
        size = out.stat().st_size
        record["size_ratio"] = round(entry["size"] / size, 3)
        files = [(model_rel, out)] + [
            (f["path"], store.path(f["sha256"])) for f in manifest["files"]
            if f["path"] != model_rel and not f["path"].startswith(OWN_PREFIX)]
        extra: dict[str, Any] = {
            "parent": {"name": parent.name, "version": parent.version,
                       "digest": parent.digest, "size_bytes": parent.size_bytes},
            "quantization": record,
        }
        extra.update({k: manifest[k] for k in INHERITED_KEYS if k in manifest})
        # The parent's assumed sizes are assumed again (same files, same reasons), not passed
        # as if given; its constants feed the variant's golden inputs too.
        given = {name: shape for name, shape in (manifest.get("input_shapes") or {}).items()
                 if name not in (manifest.get("shape_defaults") or {})}
        result = build_bundle(
            session, settings, work, parent.name, version, model_rel,
            input_shapes=given or None, source=manifest.get("source"),
            extra=extra, files=files, golden_rtol=golden_rtol, golden_atol=golden_atol,
            input_constants=manifest.get("input_constants") or None)
    return VariantResult(bundle=result.bundle, created=True, note=result.note)
