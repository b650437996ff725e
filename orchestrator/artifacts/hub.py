"""Hugging Face Hub as a bundle source: ``hf://OWNER/REPO[/SUBFOLDER][@REVISION]``.

huggingface_hub does the downloading and the caching (its cache is the one every HF tool shares,
so a model fetched by ``hf download`` or transformers is reused, and ``HF_HUB_OFFLINE=1`` builds
from it). What this module adds: a strict spec parser, a download limited to the files a bundle
needs, the resolved commit sha (a branch moves; a bundle must say exactly what it was built
from), the choice of the model file, and errors that name the repo, the revision and the cache.

A snapshot's files are symlinks into the cache's ``blobs/``, so the bundle's file list is passed
explicitly (paths relative to the chosen folder, model at the bundle root) instead of walking
the snapshot folder.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.errors import BundleError

SCHEME = "hf://"
DEFAULT_REVISION = "main"
# The model a Hub export names itself: optimum / transformers.js put an INT8 export next to the
# FP32 one as model_quantized.onnx; take that first (it is what those repos ship for devices).
MODEL_CANDIDATES = ("model_quantized.onnx", "model.onnx")
# Side files that come along from the model's folder (labels, preprocessing, sample inputs,
# tokenizer/vocab files). Other .onnx files of the folder (fp16, q4 exports) never do.
SIDE_SUFFIXES = (".json", ".txt", ".npz")
# Repos often keep these at the repo root and the ONNX exports under onnx/: when the model's
# folder lacks one, the nearest parent folder's copy is used (placed next to the model).
INHERITED_SIDE_FILES = ("config.json", "preprocessor_config.json")
# fullmatch only: ``$`` would also accept a trailing newline.
_REPO_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class HubSpec:
    repo: str
    subfolder: str | None
    revision: str  # as asked; DEFAULT_REVISION when not given

    def __str__(self) -> str:
        sub = f"/{self.subfolder}" if self.subfolder else ""
        return f"{SCHEME}{self.repo}{sub}@{self.revision}"


@dataclass
class HubSnapshot:
    """What build_bundle needs: the folder (for messages), the files, the model, the source."""

    folder: Path
    files: list[tuple[str, Path]]
    model: str
    source: dict[str, Any]


def is_hub_spec(text: str) -> bool:
    return text.startswith(SCHEME)


def _bad(spec: str, why: str) -> BundleError:
    return BundleError(f"{spec}: {why}; expected hf://OWNER/REPO[/SUBFOLDER][@REVISION], e.g. "
                       "hf://MIT/ast-finetuned-speech-commands-v2/onnx@main")


def parse_hub_spec(spec: str) -> HubSpec:
    """Parse strictly: a typo must fail here with the reason, not as a 404 from the Hub."""
    if not is_hub_spec(spec):
        raise _bad(spec, "not a Hub reference (it must start with hf://)")
    body, at, revision = spec[len(SCHEME):].partition("@")
    if at and not revision:
        raise _bad(spec, "empty revision after '@'")
    if revision and (revision.startswith("/") or ".." in revision or any(
            c.isspace() for c in revision)):
        raise _bad(spec, f"revision {revision!r} is not a branch, tag or commit")
    parts = body.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise _bad(spec, "the repo must be OWNER/REPO")
    for part in parts[:2]:
        if not _REPO_PART.fullmatch(part) or "--" in part or ".." in part:
            raise _bad(spec, f"{part!r} is not a valid Hub owner or repo name")
    sub_parts = parts[2:]
    if sub_parts and sub_parts[-1] == "":
        sub_parts = sub_parts[:-1]  # hf://o/r/onnx/ means the onnx folder
    for part in sub_parts:
        if part in ("", ".", "..") or part.startswith("."):
            raise _bad(spec, f"subfolder {'/'.join(sub_parts)!r} has an empty, hidden or "
                             "relative part")
    return HubSpec(repo=f"{parts[0]}/{parts[1]}", subfolder="/".join(sub_parts) or None,
                   revision=revision or DEFAULT_REVISION)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, but read now: huggingface_hub reads it once
    at import, and a long-lived process (the web server, tests) must see the current value."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(
        os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_cache_dir() -> Path:
    """The cache huggingface_hub uses (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache), read
    now for the same reason as hub_offline."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def _model_folder(spec: HubSpec, model: str | None) -> tuple[str, str | None]:
    """(repo folder holding the model, model file name or None to pick): ``--model
    onnx/model.onnx`` moves the folder, so the model still lands at the bundle root."""
    folder = spec.subfolder or ""
    if model is None:
        return folder, None
    norm = posixpath.normpath(model)
    if model.startswith("/") or norm.startswith("..") or norm in (".", ""):
        raise BundleError(f"--model {model}: give a path inside {spec} (relative, no '..')")
    return posixpath.join(folder, posixpath.dirname(norm)).strip("/"), posixpath.basename(norm)


def _ancestors(folder: str) -> list[str]:
    """Parent folders of ``folder``, nearest first, ending with the repo root ('')."""
    out = []
    while folder:
        folder = posixpath.dirname(folder)
        out.append(folder)
    return out


def allow_patterns(folder: str, model_name: str | None) -> list[str]:
    """Only what a bundle can use: the model candidates (and external data), side files of the
    model's folder, and inherited side files of its parents. A repo's other exports and its
    PyTorch weights are never downloaded."""
    prefix = f"{folder}/" if folder else ""
    names = [model_name] if model_name else list(MODEL_CANDIDATES)
    patterns = [f"{prefix}{n}{tail}" for n in names for tail in ("", "_data", ".data")]
    patterns += [f"{prefix}*{suffix}" for suffix in SIDE_SUFFIXES]
    for parent in _ancestors(folder):
        pre = f"{parent}/" if parent else ""
        patterns += [f"{pre}{name}" for name in INHERITED_SIDE_FILES]
    return patterns


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport errors of whichever HTTP client this huggingface_hub uses."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, attr in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests", "RequestException")):
        try:
            found.append(getattr(__import__(module), attr))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _hint(spec: HubSpec, cache: Path) -> str:
    sub = f" --include '{spec.subfolder}/*'" if spec.subfolder else ""
    return (f"run the build once with network access, or fetch it with `HF_HUB_CACHE={cache} "
            f"hf download {spec.repo} --revision {spec.revision}{sub}`, then retry")


def download(spec: HubSpec, patterns: list[str]) -> Path:
    """snapshot_download into the shared cache; every failure becomes a BundleError that names
    the repo, the revision and, when the cache was the only option, the cache folder."""
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import snapshot_download

    cache = hub_cache_dir()
    offline = hub_offline()
    where = f"{spec.repo} at revision {spec.revision!r}"
    try:
        return Path(snapshot_download(
            spec.repo, revision=spec.revision, cache_dir=cache, local_files_only=offline,
            allow_patterns=patterns))
    except hf_errors.GatedRepoError:
        raise BundleError(f"{spec}: {spec.repo} is gated; accept its terms on the Hub and log "
                          "in (`hf auth login` or HF_TOKEN)") from None
    except hf_errors.RepositoryNotFoundError:
        raise BundleError(f"{spec}: no repo {spec.repo} on the Hub (or it is private: log in "
                          "with `hf auth login` or set HF_TOKEN)") from None
    except hf_errors.RevisionNotFoundError:
        raise BundleError(f"{spec}: {spec.repo} has no revision {spec.revision!r} (give a "
                          "branch, tag or 40-hex commit)") from None
    except hf_errors.LocalEntryNotFoundError as exc:
        if offline:
            raise BundleError(
                f"{spec}: {where} is not in the local Hugging Face cache ({cache}) and "
                f"HF_HUB_OFFLINE=1 forbids downloading; {_hint(spec, cache)}") from None
        cause = exc.__cause__ or exc  # huggingface_hub chains the network error it hit
        reason = " ".join(f"{type(cause).__name__}: {cause}".split())
        raise BundleError(f"{spec}: could not reach the Hub ({reason}) and {where} is not in "
                          f"the local cache ({cache}); {_hint(spec, cache)}") from None
    except hf_errors.OfflineModeIsEnabled:
        raise BundleError(f"{spec}: HF_HUB_OFFLINE=1 and {where} is not cached in {cache}; "
                          f"{_hint(spec, cache)}") from None
    except hf_errors.HfHubHTTPError as exc:
        raise BundleError(f"{spec}: the Hub refused the download of {where}: {exc}") from None
    except _network_errors() as exc:
        raise BundleError(f"{spec}: network error while downloading {where}: {exc}; check the "
                          f"connection, or set HF_HUB_OFFLINE=1 to use the cache ({cache})"
                          ) from None


def _file(snapshot: Path, rel: str) -> Path | None:
    """The snapshot file at repo path ``rel`` if it is there and its blob is too (a broken
    symlink means an interrupted download)."""
    path = snapshot / rel
    return path if path.is_file() else None


def select_files(snapshot: Path, folder: str, model_name: str | None,
                 spec: HubSpec) -> tuple[list[tuple[str, Path]], str]:
    """The bundle's files (relative to ``folder``) and the model's bundle path."""
    base = snapshot / folder if folder else snapshot
    if not base.is_dir():
        raise BundleError(f"{spec}: no folder {folder!r} in {spec.repo} at commit "
                          f"{snapshot.name}" + (" (in the local cache)" if hub_offline() else ""))
    names = sorted(p.name for p in base.iterdir() if not p.name.startswith("."))
    candidates = [model_name] if model_name else list(MODEL_CANDIDATES)
    model = next((n for n in candidates if _file(base, n)), None)
    if model is None:
        onnx = [n for n in names if n.endswith(".onnx")]
        where = f"{spec.repo}/{folder}" if folder else spec.repo
        if model_name:
            raise BundleError(f"{spec}: no {model_name} in {where} at commit {snapshot.name}"
                              + (f" (there: {', '.join(onnx)})" if onnx else ""))
        seen = f"; .onnx files there: {', '.join(onnx)}" if onnx else ""
        raise BundleError(f"{spec}: neither {' nor '.join(MODEL_CANDIDATES)} in {where} at "
                          f"commit {snapshot.name}{seen}; say which with --model FILE")
    files: list[tuple[str, Path]] = [(model, base / model)]
    for tail in ("_data", ".data"):  # external weights stay next to the model they belong to
        if (data := _file(base, model + tail)) is not None:
            files.append((model + tail, data))
    for name in names:
        path = _file(base, name)
        if path is not None and name.endswith(SIDE_SUFFIXES):
            files.append((name, path))
    present = {rel for rel, _ in files}
    for side in INHERITED_SIDE_FILES:
        if side in present:
            continue
        for parent in _ancestors(folder):
            path = _file(snapshot, posixpath.join(parent, side))
            if path is not None:
                files.append((side, path))
                break
    return files, model


def fetch(spec_text: str, model: str | None = None) -> HubSnapshot:
    """Download (or find in the cache) what the bundle needs and record where it came from."""
    spec = parse_hub_spec(spec_text)
    folder, model_name = _model_folder(spec, model)
    snapshot = download(spec, allow_patterns(folder, model_name))
    commit = snapshot.name
    if not _COMMIT.fullmatch(commit):
        raise BundleError(f"{spec}: huggingface_hub returned {snapshot}, which is not a "
                          "snapshots/<commit> folder; cannot record the commit")
    files, model_rel = select_files(snapshot, folder, model_name, spec)
    source = {"type": "hf", "repo": spec.repo, "subfolder": spec.subfolder,
              "revision": spec.revision, "commit": commit}
    return HubSnapshot(folder=snapshot / folder if folder else snapshot, files=files,
                       model=model_rel, source=source)
