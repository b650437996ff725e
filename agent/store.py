"""The device bundle store under ROOT: layout, state.json, blob checks, request validation, plan.

Layout (see the agent brief / DESIGN "Bundles")::

    blobs/<sha256>                 verified, read-only, content-addressed
    incoming/<sha256>.<owner>.part uploads in flight, one agent session each; kept when the
                                   link drops, for the next push to resume (agent.parts)
    incoming/<sha256>.part         an older control plane's SFTP upload (accept_uploads)
    versions/<digest[:16]>-<ns>/   one dir per activation + .edgefleet-manifest.json
    current -> versions/<dir>      relative symlink, swapped atomically, follows state.json
    current.moved-<time>/          what was at ``current`` when it was not our symlink (kept)
    state.json                     {"history": [...], "pending": ...}: last entry = active,
                                   pending = a change under way (agent.journal)
    cache/hashes.json              verification cache (agent.hashcache)

Why directory names carry only the digest and a timestamp: bundle names and versions come from
users and must never reach the filesystem.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from agent.fsutil import (
    AgentError,
    RootLock,
    atomic_write_json,
    read_json,
    remove_tree,
)
from agent.hashcache import HashCache, Verifier
from agent.protocol import (
    E_BAD_INPUT,
    E_DIGEST_MISMATCH,
    E_INTERNAL,
    E_UNSAFE_PATH,
    canonical_json,
    event,
    is_sha256,
    manifest_digest,
    manifest_files,
)

MANIFEST_NAME = ".edgefleet-manifest.json"
STAGING_PREFIX = ".staging-"
VERSION_DIR_RE = re.compile(r"[0-9a-f]{16}-[0-9]+")  # fullmatch: "$" allows a trailing newline

Emit = Callable[[Dict[str, Any]], None]


def resolve_root(raw: str) -> str:
    """ROOT as given, with only a leading ``~`` expanded; never passed through a shell."""
    return os.path.abspath(os.path.expanduser(raw))


class Request:
    """A validated plan/activate input: the manifest, its digest and its file entries."""

    def __init__(self, manifest: Dict[str, Any], digest: str, files: List[Dict[str, Any]]) -> None:
        self.manifest = manifest
        self.digest = digest
        self.files = files
        # {"key", "sshsig"} when the control plane sent a signature (agent.signatures)
        self.signature: Optional[Dict[str, str]] = None
        # sha -> manifest paths using it (insertion order = manifest order), and its size
        self.uses: Dict[str, List[str]] = {}
        self.sizes: Dict[str, int] = {}
        for entry in files:
            self.uses.setdefault(entry["sha256"], []).append(entry["path"])
            self.sizes[entry["sha256"]] = entry["size"]

    @property
    def name(self) -> Optional[str]:
        return _label(self.manifest.get("name"))

    @property
    def version(self) -> Optional[str]:
        return _label(self.manifest.get("version"))


def _label(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def parse_request(doc: Any) -> Request:
    """Validate ``{"manifest": {...}, "digest": "hex"}`` (and an optional ``signature``,
    agent.signatures) before anything touches the disk."""
    if not isinstance(doc, dict) or not isinstance(doc.get("manifest"), dict):
        raise AgentError(E_BAD_INPUT, 'expected {"manifest": {...}, "digest": "<sha256>"}')
    manifest = doc["manifest"]
    digest = doc.get("digest")
    if not is_sha256(digest):
        raise AgentError(E_BAD_INPUT, "digest must be 64 lowercase hex characters, got %r"
                         % (digest,))
    actual = manifest_digest(manifest)
    if actual != digest:
        raise AgentError(
            E_DIGEST_MISMATCH,
            "manifest digest is %s but the control plane sent %s" % (actual, digest),
            expected=digest,
            actual=actual,
        )
    entries = manifest.get("files")
    if isinstance(entries, list) and not all(isinstance(e, dict) for e in entries):
        raise AgentError(E_BAD_INPUT, "manifest files must be objects")
    try:
        files = manifest_files(manifest)
    except ValueError as exc:
        raise AgentError(E_UNSAFE_PATH, str(exc)) from None
    paths = set(entry["path"] for entry in files)
    for entry in files:
        path = entry["path"]
        if path == MANIFEST_NAME:
            raise AgentError(E_UNSAFE_PATH, "path %r is reserved for the agent" % (path,),
                             path=path)
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in paths:
                raise AgentError(E_UNSAFE_PATH, "path %r is both a file and a directory (%r)"
                                 % (parent, path), path=parent)
    request = Request(manifest, digest, files)
    from agent.signatures import parse_signature

    request.signature = parse_signature(doc.get("signature"))
    for entry in files:
        if request.sizes[entry["sha256"]] != entry["size"]:
            raise AgentError(E_BAD_INPUT, "manifest gives sha256 %s two sizes" % entry["sha256"],
                             path=entry["path"])
    return request


class Store:
    """ROOT on the device. Commands that write take ``lock()`` first."""

    def __init__(self, root: str, emit: Emit) -> None:
        self.root = root
        self.emit = emit
        self.blobs = os.path.join(root, "blobs")
        self.incoming = os.path.join(root, "incoming")
        self.versions = os.path.join(root, "versions")
        self.current = os.path.join(root, "current")
        self.state_path = os.path.join(root, "state.json")
        self._verifier: Optional[Verifier] = None
        # What agent.journal repaired in this process, not yet reported in a result.
        self.recovered: List[Dict[str, Any]] = []
        # The .part files this process owns (agent.parts.Parts); set by a session only.
        self.parts: Optional[Any] = None

    # -- layout ----------------------------------------------------------------------------
    def ensure_layout(self) -> None:
        for path in (self.root, self.blobs, self.incoming, self.versions,
                     os.path.join(self.root, "cache")):
            os.makedirs(path, exist_ok=True)

    @contextlib.contextmanager
    def root_lock(self) -> Iterator[None]:
        """The root lock alone. Commands take it through ``agent.journal.locked``, which also
        reverts whatever a dead process left pending: the journal sits above the store, so the
        store does not call it."""
        with RootLock(self.root, on_wait=lambda p: self.emit(event("waiting_for_lock", path=p))):
            yield

    def take_recovered(self) -> List[Dict[str, Any]]:
        reports, self.recovered = self.recovered, []
        return reports

    @property
    def verifier(self) -> Verifier:
        if self._verifier is None:
            cache = HashCache(os.path.join(self.root, "cache", "hashes.json"))
            self._verifier = Verifier(cache, self.emit)
        return self._verifier

    def blob_path(self, sha: str) -> str:
        return os.path.join(self.blobs, sha)

    def part_path(self, sha: str) -> str:
        """Where an older control plane uploads over SFTP (a session writes agent.parts')."""
        return os.path.join(self.incoming, sha + ".part")

    def version_path(self, entry: Dict[str, Any]) -> Optional[str]:
        """Absolute dir of a history entry, or None if its ``dir`` is not one of ours.

        Why: state.json is a file on the device; a tampered ``dir`` like ``../..`` must never
        be trusted as a path to verify, link to or delete.
        """
        rel = entry.get("dir")
        if not isinstance(rel, str) or not rel.startswith("versions/"):
            return None
        name = rel[len("versions/"):]
        if not VERSION_DIR_RE.fullmatch(name):
            return None
        return os.path.join(self.versions, name)

    # -- state -----------------------------------------------------------------------------
    def load_state(self) -> Dict[str, Any]:
        try:
            state = read_json(self.state_path)
        except (OSError, ValueError) as exc:
            raise AgentError(E_INTERNAL, "%s is unreadable (%s); move it away to start a fresh "
                             "history" % (self.state_path, exc)) from None
        if state is None:
            return {"history": []}
        if not isinstance(state, dict) or not isinstance(state.get("history"), list):
            raise AgentError(E_INTERNAL, "%s has no history list; move it away to start a fresh "
                             "history" % self.state_path)
        state["history"] = [e for e in state["history"] if isinstance(e, dict)]
        return state

    def save_state(self, state: Dict[str, Any]) -> None:
        atomic_write_json(self.state_path, state)

    def active(self, state: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
        history = (state if state is not None else self.load_state())["history"]
        return dict(history[-1]) if history else None

    def current_target(self) -> Optional[str]:
        try:
            return os.readlink(self.current)
        except OSError:
            return None

    # -- verification ----------------------------------------------------------------------
    def check_blob(self, sha: str, size: int, label: str) -> str:
        """``present``, ``missing`` or ``corrupt`` (a corrupt blob is deleted on the spot)."""
        path = self.blob_path(sha)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return "missing"
        if (
            stat.S_ISREG(st.st_mode)
            and st.st_size == size
            and self.verifier.sha256(path, label, st) == sha
        ):
            return "present"
        self.verifier.cache.forget(path)
        remove_tree(path)
        return "corrupt"

    def version_problem(self, entry: Dict[str, Any],
                        request: Optional[Request] = None) -> Optional[str]:
        """None when the entry's dir holds its manifest and every file in it verifies.

        Without ``request`` the manifest is read from the dir and must hash to the entry's
        digest (rollback); with it, the stored manifest must equal the requested one.
        """
        path = self.version_path(entry)
        if path is None:
            return "history entry has no valid dir"
        if not os.path.isdir(path):
            return "%s is missing" % entry.get("dir")
        try:
            with open(os.path.join(path, MANIFEST_NAME), "rb") as handle:
                stored = handle.read()
        except OSError as exc:
            return "cannot read its manifest: %s" % exc
        if request is not None:
            if stored != canonical_json(request.manifest):
                return "its manifest differs"
            files = request.files
        else:
            try:
                manifest = parse_manifest_bytes(stored)
                if manifest_digest(manifest) != entry.get("digest"):
                    return "its manifest does not match digest %s" % entry.get("digest")
                files = manifest_files(manifest)
            except (ValueError, AttributeError) as exc:
                return "its manifest is invalid: %s" % exc
        bad = self.verifier.check_all(path, files)
        if bad is not None:
            return "%s: %s" % bad
        return None

    def is_already_active(self, request: Request, active: Optional[Dict[str, Any]]) -> bool:
        if active is None or active.get("digest") != request.digest:
            return False
        if self.current_target() != active.get("dir"):
            return False
        return self.version_problem(active, request) is None


def parse_manifest_bytes(data: bytes) -> Dict[str, Any]:
    """A stored .edgefleet-manifest.json back into a dict (ValueError if it is not one)."""
    obj = json.loads(data.decode("utf-8"))
    if not isinstance(obj, dict):
        raise ValueError("manifest is not an object")
    return obj


def blob_status(store: Store, request: Request) -> Tuple[List[str], List[str], List[str]]:
    """(present, missing, corrupt) blob shas of a request, in manifest order."""
    present: List[str] = []
    missing: List[str] = []
    corrupt: List[str] = []
    for sha, paths in request.uses.items():
        status = store.check_blob(sha, request.sizes[sha], paths[0])
        if status == "present":
            present.append(sha)
        else:
            missing.append(sha)
            if status == "corrupt":
                corrupt.append(sha)
    return present, missing, corrupt


def status(store: Store) -> Dict[str, Any]:
    """Active version and history; ``pending`` only while another process is changing them."""
    state = store.load_state() if os.path.isdir(store.root) else {"history": []}
    data = {"active": store.active(state), "history": state["history"], "root": store.root}
    if state.get("pending") is not None:
        data["pending"] = state["pending"]
    return data
