"""Build, store and look up bundles.

A bundle is a manifest (every file's path, sha256 and size, the model's signature, where it came
from) whose canonical sha256 is the bundle's identity. Files live once in the blob store.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from agent.protocol import MANIFEST_SCHEMA, canonical_json, check_relative_path, manifest_digest
from orchestrator.access import audit
from orchestrator.artifacts import input_defaults, refs
from orchestrator.artifacts.blobfetch import blob_store
from orchestrator.artifacts.onnxinfo import inspect_model, version_tuple
from orchestrator.core.config import Settings
from orchestrator.core.errors import BundleError
from orchestrator.core.listings import bundle_public as bundle_public
from orchestrator.core.listings import manifest_of as manifest_of
from orchestrator.core.models import Bundle


@dataclass
class BuildResult:
    bundle: Bundle
    created: bool  # False when the latest version already had exactly these files
    note: str | None = None  # e.g. why the bundle has no golden outputs and how to get them
    # Input sizes nobody gave, decided by orchestrator.artifacts.input_defaults, one line per input
    # ("input_values: batch_size = 1 (named like a batch dimension ...)").
    assumed: list[str] = field(default_factory=list)


def check_name(name: str) -> str:
    return refs.check_name(name, "bundle", BundleError)


def check_version(version: str) -> str:
    return refs.check_version(version, "bundle", BundleError)


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``name`` or ``name@version``."""
    return refs.parse_ref(ref, "bundle", BundleError)


def collect_files(path: Path) -> list[tuple[str, Path]]:
    """(bundle-relative path, file on disk) for an .onnx file or a folder; refuses escapes.

    Hidden files and folders (``.git``, ``.DS_Store``) are left out: they are never model files.
    """
    if not path.exists():
        raise BundleError(f"{path}: no such file or folder")
    if path.is_file():
        return [(path.name, path)]
    root = path.resolve()
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for dirname in dirnames:
            if os.path.islink(os.path.join(dirpath, dirname)):
                raise BundleError(
                    f"{os.path.join(dirpath, dirname)}: symlinked folders are not followed; "
                    "copy the folder in instead"
                )
        for filename in sorted(filenames):
            if filename.startswith("."):
                continue
            full = Path(dirpath) / filename
            rel = full.relative_to(path).as_posix()
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise BundleError(f"{str(full)!a}: the file name is not valid UTF-8 (bundle "
                                  "paths travel as UTF-8); rename it") from None
            if full.is_symlink():
                target = full.resolve()
                if not target.is_relative_to(root):
                    raise BundleError(f"{full}: symlink escapes the bundle folder (-> {target})")
                if not target.is_file():
                    raise BundleError(f"{full}: symlink does not point at a file")
            try:
                check_relative_path(rel)
            except ValueError as exc:
                raise BundleError(f"{full}: {exc}") from None
            found.append((rel, full))
    if not found:
        raise BundleError(f"{path}: the folder has no files")
    return found


def _pick_model(files: list[tuple[str, Path]], model: str | None, source: Path) -> str:
    rels = [rel for rel, _ in files]
    if model is not None:
        try:
            model = check_relative_path(model)
        except ValueError as exc:
            raise BundleError(f"--model {model}: {exc}") from None
        if model not in rels:
            raise BundleError(f"--model {model}: no such file in {source}")
        return model
    onnx_files = [rel for rel in rels if rel.endswith(".onnx")]
    if not onnx_files:
        raise BundleError(f"{source}: no .onnx file found; a bundle needs a model")
    if len(onnx_files) > 1:
        raise BundleError(
            f"{source}: several .onnx files ({', '.join(onnx_files)}); say which with --model"
        )
    return onnx_files[0]


def check_input_shapes(inputs: list[dict[str, Any]],
                       shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """Shapes recorded for benchmarks: each names a model input, has its rank, keeps its fixed
    dims, and gives every dynamic one a positive size."""
    by_name = {i["name"]: i for i in inputs}
    for name, dims in shapes.items():
        if name not in by_name:
            raise BundleError(f"--shape {name}: the model has no input {name!r} "
                              f"(inputs: {', '.join(by_name)})")
        declared = by_name[name]["shape"]
        if len(dims) != len(declared):
            raise BundleError(f"--shape {name}: {len(dims)} dims given, the input has "
                              f"{len(declared)} ({declared})")
        for index, (want, have) in enumerate(zip(dims, declared, strict=True)):
            if want < 1 or (isinstance(have, int) and have != want):
                raise BundleError(f"--shape {name}: dim {index} is {want}, the model says "
                                  f"{have}")
    return dict(shapes)


def check_input_constants(inputs: list[dict[str, Any]],
                          constants: dict[str, Any]) -> dict[str, Any]:
    """``--input NAME=VALUE`` constants: each names a model input and fits its dtype (values
    converted: 16000.0 for an int64 input is 16000)."""
    if not constants:
        return {}
    from agent.fsutil import AgentError
    from agent.inputs import check_constants

    try:
        return check_constants(inputs, constants)
    except AgentError as exc:
        raise BundleError(exc.message) from None


def _side_json(files: dict[str, Path], rel: str) -> dict[str, Any] | None:
    if rel not in files:
        return None
    try:
        doc = json.loads(files[rel].read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{files[rel]}: not readable JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BundleError(f"{files[rel]}: expected a JSON object")
    return doc


def read_side_files(files: dict[str, Path], model_rel: str) -> dict[str, Any]:
    """Manifest keys read from Hugging Face side files next to the model.

    ``labels``: class names in class-id order from config.json's ``id2label`` (evaluation maps
    dataset folder names through them). ``preprocessing``: set when preprocessor_config.json is
    an AST-style log-mel filterbank, which the agent computes in numpy on the device.
    """
    folder = posixpath.dirname(model_rel)
    out: dict[str, Any] = {}
    config_rel = posixpath.join(folder, "config.json")
    config = _side_json(files, config_rel)
    id2label = config.get("id2label") if config else None
    if isinstance(id2label, dict) and id2label:
        try:
            ids = sorted(int(k) for k in id2label)
        except ValueError:
            raise BundleError(f"{files[config_rel]}: id2label keys must be class ids") from None
        if ids != list(range(len(ids))):
            raise BundleError(f"{files[config_rel]}: id2label must number classes 0..N-1, "
                              f"got {ids}")
        out["labels"] = [str(id2label[str(i)] if str(i) in id2label else id2label[i])
                         for i in ids]
    pre_rel = posixpath.join(folder, "preprocessor_config.json")
    pre = _side_json(files, pre_rel)
    if pre and pre.get("feature_extractor_type") == "ASTFeatureExtractor":
        out["preprocessing"] = {"type": "ast-fbank", "config": pre_rel,
                                "sampling_rate": int(pre.get("sampling_rate", 16000))}
    return out


def next_version(session: Session, name: str) -> str:
    return refs.next_version(session, Bundle, name)


def is_variant(bundle: Bundle) -> bool:
    """An INT8 (or other derived) variant: its manifest names the bundle it was made from."""
    return '"parent":' in bundle.manifest_json and "parent" in json.loads(bundle.manifest_json)


def latest(session: Session, name: str) -> Bundle | None:
    """The newest build of ``name`` that is not a derived variant: ``N`` alone means the FP32
    line; variants are addressed as ``N@V-int8`` (and an identical FP32 rebuild is compared
    with the last FP32, not with its variant)."""
    bundles = session.exec(select(Bundle).where(Bundle.name == name)).all()
    bundles = [b for b in bundles if not is_variant(b)] or bundles
    if not bundles:
        return None
    return max(bundles, key=lambda b: (b.created_at, version_tuple(b.version), b.id or 0))


def build_bundle(
    session: Session,
    settings: Settings,
    path: Path,
    name: str,
    version: str | None = None,
    model: str | None = None,
    on_file: Callable[[str, int], None] | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    source: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    files: list[tuple[str, Path]] | None = None,
    golden_rtol: float | None = None,
    golden_atol: float | None = None,
    input_constants: dict[str, Any] | None = None,
    actor: str = "",
) -> BuildResult:
    """Inspect, hash into the blob store, write the manifest, register the version.

    ``source`` replaces the default ``{"type": "file"|"folder", "path"}`` record (a Hub build
    records repo, subfolder and resolved commit); ``extra`` adds manifest keys owned by other
    services (``parent``/``quantization`` for INT8 variants, ``streaming`` profiles), and is part
    of the identity: the same files with a different profile are a different bundle.
    ``files`` replaces walking ``path`` (a Hub snapshot is symlinks into the cache's blobs/, and
    only the chosen model goes in). ``golden_rtol``/``golden_atol`` override the tolerances of the
    golden-output smoke test (docs/pipeline.md): the model is run once here
    (orchestrator/artifacts/golden.py) and its inputs/outputs ship as ``.edgefleet/golden_*.npz``;
    when that is impossible (an unresolved dynamic dim) ``note`` on the result says how to fix it.
    Dynamic dims nobody gave get sizes from ``orchestrator.artifacts.input_defaults`` (a batch of
    1, an AST/Whisper preprocessor_config's feature dims), recorded as ``input_shapes`` with why in
    ``shape_defaults``; ``input_constants`` (``--input NAME=VALUE``: silero-vad's ``sr``) are
    checked against the inputs' dtypes, feed the golden inputs, are recorded as
    ``input_constants`` and are bench's default for those inputs.
    """
    # Here, not at the top: golden imports numpy and onnxruntime (~1 s of start-up), and the
    # commands that only read bundles from the DB (bundle list, push) never run a model.
    from orchestrator.artifacts.golden import compute_golden, store_golden
    from orchestrator.artifacts.golden import manifest_key as golden_key

    check_name(name)
    if version is not None:
        check_version(version)
        if session.exec(
            select(Bundle).where(Bundle.name == name, Bundle.version == version)
        ).first():
            raise BundleError(f"{name}@{version} already exists; pick another --version")
    if files is None:
        files = collect_files(path)
    model_rel = _pick_model(files, model, path)
    model_path = dict(files)[model_rel]
    info = inspect_model(model_path, f"{path}:{model_rel}" if path.is_dir() else str(path))
    given = check_input_shapes(info.inputs, input_shapes or {})
    constants = check_input_constants(info.inputs, input_constants or {})
    side = read_side_files(dict(files), model_rel)
    preprocessor = _side_json(dict(files), posixpath.join(posixpath.dirname(model_rel),
                                                          input_defaults.PREPROCESSOR_CONFIG))
    defaulted, assumed, _ = input_defaults.resolve(info.inputs, given, preprocessor)
    shapes = {**defaulted, **given}

    own = [rel for rel, _ in files if rel.split("/", 1)[0] == ".edgefleet"]
    if own:
        raise BundleError(f"{own[0]}: paths under .edgefleet/ are EdgeFleet's own (golden "
                          "outputs); rename the file or folder")
    # Before anything is stored: a model that does not run is refused, not shipped.
    checked = compute_golden(model_path, f"{path}:{model_rel}" if path.is_dir() else str(path),
                             info.inputs, files, shapes, info.precision, golden_rtol,
                             golden_atol, constants)
    said = input_defaults.describe(assumed)

    store = blob_store(settings)
    entries = []
    for rel, full in files:
        sha, size = store.add_file(full)
        entries.append({"path": rel, "sha256": sha, "size": size})
        if on_file:
            on_file(rel, size)
    golden = golden_key(checked.golden) if checked.golden else None
    if checked.golden:
        entries += store_golden(store, checked.golden)

    previous = latest(session, name)
    if version is None and previous is not None:
        old = json.loads(previous.manifest_json)
        same_extra = all(old.get(key) == value for key, value in (extra or {}).items())
        if (old["files"] == entries and old["model"]["path"] == model_rel
                and old.get("input_shapes", {}) == shapes and same_extra
                and old.get("shape_defaults", {}) == assumed
                and old.get("input_constants", {}) == constants
                and old.get("golden") == golden):
            return BuildResult(bundle=previous, created=False, note=checked.note, assumed=said)

    version = version or next_version(session, name)
    manifest: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA,
        "name": name,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source or {"type": "folder" if path.is_dir() else "file",
                             "path": str(path.resolve())},
        "files": entries,
        "model": dict(info.as_dict(), path=model_rel),
        "precision": info.precision,
        "min_onnxruntime": info.min_onnxruntime,
    }
    if shapes:
        manifest["input_shapes"] = shapes
    if assumed:
        manifest["shape_defaults"] = assumed
    if constants:
        manifest["input_constants"] = constants
    if golden:
        manifest["golden"] = golden
    manifest.update(side)
    for key, value in (extra or {}).items():
        if key in manifest:
            raise BundleError(f"manifest key {key!r} is reserved")
        manifest[key] = value
    bundle = Bundle(
        name=name,
        version=version,
        digest=manifest_digest(manifest),
        size_bytes=sum(e["size"] for e in entries),
        precision=info.precision,
        manifest_json=canonical_json(manifest).decode("utf-8"),
    )
    session.add(bundle)
    session.flush()
    # Who registered this version, in the registration's transaction (``actor``: default the
    # OS user). An unchanged rebuild registers nothing and is not audited.
    audit.add_event(session, actor, "bundle.build", f"bundle:{bundle.name}@{bundle.version}",
                    {"digest": bundle.digest, "precision": bundle.precision,
                     "source": manifest.get("source")})
    return BuildResult(bundle=bundle, created=True, note=checked.note, assumed=said)


def get_bundle(session: Session, ref: str) -> Bundle:
    return refs.get_by_ref(session, Bundle, ref, "bundle", BundleError, latest,
                           "edgefleet bundle build")


def list_bundles(session: Session) -> list[Bundle]:
    return list(session.exec(select(Bundle).order_by(col(Bundle.name), col(Bundle.id))).all())
