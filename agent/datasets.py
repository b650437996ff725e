"""``dataset_plan`` / ``dataset_stage``: evaluation datasets on the device, pushed like bundles.

Layout (next to the bundle store of agent.store)::

    datasets/<digest[:16]>/                 the dataset's files, hard links to blobs/
    datasets/<digest[:16]>/.edgefleet-dataset.json   its canonical manifest

The control plane plans (which blobs are missing), streams those in the same session
(``receive``), then stages. Staging verifies every file and never touches ``current``.

Why hard links: a bundle activation prunes ``blobs/`` down to what kept bundle versions use, so a
dataset's blobs disappear from there; its staged links keep the data (and the hash cache, which
keys on inodes, keeps vouching for them), so the next eval of the same dataset sends nothing and
re-hashes nothing. Why the directory name is only the digest: names and versions come from users
and never reach the filesystem.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Dict, List, Optional, Tuple

from agent import journal
from agent.fsutil import AgentError, disk_free_bytes, remove_tree
from agent.inuse import in_use
from agent.protocol import E_BAD_INPUT, is_sha256
from agent.store import STAGING_PREFIX, Request, Store, blob_status, parse_manifest_bytes
from agent.store import parse_request as parse_bundle_request

DATASET_MANIFEST = ".edgefleet-dataset.json"
KEEP_DATASETS = 4  # staged datasets kept; older ones are removed when a new one is staged
E_DATASET_NOT_ON_DEVICE = "dataset_not_on_device"
DIR_RE = re.compile(r"[0-9a-f]{16}")  # fullmatch: "$" would allow a trailing newline


def datasets_dir(store: Store) -> str:
    return os.path.join(store.root, "datasets")


def dataset_dir(store: Store, digest: str) -> str:
    return os.path.join(datasets_dir(store), digest[:16])


def parse_request(doc: Any) -> Request:
    """A bundle-style request (manifest + digest, every path safe) that is a dataset."""
    request = parse_bundle_request(doc)
    if request.manifest.get("kind") != "dataset":
        raise AgentError(E_BAD_INPUT, "dataset_plan/dataset_stage need a dataset manifest "
                         '("kind": "dataset")')
    if any(f["path"] == DATASET_MANIFEST for f in request.files):
        raise AgentError(E_BAD_INPUT, "path %r is reserved for the agent" % DATASET_MANIFEST)
    return request


def staged_problem(store: Store, digest: str,
                   files: Optional[List[Dict[str, Any]]] = None) -> Optional[str]:
    """None when ``datasets/<digest[:16]>`` holds this dataset and every file verifies (cheap:
    the hash cache vouches for unchanged inodes), else what is wrong."""
    from agent.protocol import manifest_digest, manifest_files

    path = dataset_dir(store, digest)
    try:
        with open(os.path.join(path, DATASET_MANIFEST), "rb") as handle:
            manifest = parse_manifest_bytes(handle.read())
    except (OSError, ValueError) as exc:
        return "not staged (%s)" % exc
    if manifest_digest(manifest) != digest:
        return "the staged manifest is not dataset %s" % digest
    try:
        entries = files if files is not None else manifest_files(manifest)
    except ValueError as exc:
        return "its manifest is invalid: %s" % exc
    bad = store.verifier.check_all(path, entries)
    return None if bad is None else "%s: %s" % bad


def plan(store: Store, request: Request) -> Dict[str, Any]:
    """What to upload before ``dataset_stage``: nothing when the dataset is staged and intact."""
    store.ensure_layout()
    with journal.locked(store):
        staged = staged_problem(store, request.digest, request.files) is None
        present: List[str] = list(request.uses)
        missing: List[str] = []
        corrupt: List[str] = []
        if not staged:
            present, missing, corrupt = blob_status(store, request)
            if store.parts is not None:  # kept from other sessions' prunes (agent.parts)
                store.parts.want(request.sizes)
        store.verifier.cache.save()
    data: Dict[str, Any] = {
        "already_staged": staged, "missing": missing,
        "missing_bytes": sum(request.sizes[sha] for sha in missing), "present": present,
        "corrupt": corrupt, "disk_free_bytes": disk_free_bytes(store.root),
        "dir": os.path.relpath(dataset_dir(store, request.digest), store.root)}
    if store.parts is not None and not staged:  # in a session: what dropped transfers kept
        labels = {sha: paths[0] for sha, paths in request.uses.items()}
        data["resume"] = store.parts.offers(missing, request.sizes, labels)
    return data


def stage(store: Store, request: Request) -> Dict[str, Any]:
    """Link every file into a staging dir, verify, write the manifest, rename into place."""
    from agent.activation import accept_uploads, build_dir

    store.ensure_layout()
    rel = os.path.relpath(dataset_dir(store, request.digest), store.root)
    with journal.locked(store):
        if staged_problem(store, request.digest, request.files) is None:
            store.verifier.cache.save()
            return {"changed": False, "dir": rel, "files": len(request.files),
                    "samples": len(request.manifest.get("samples") or []), "pruned": []}
        accept_uploads(store, request)
        top = datasets_dir(store)
        os.makedirs(top, exist_ok=True)
        final = dataset_dir(store, request.digest)
        build_dir(store, request, top, DATASET_MANIFEST, final, "dataset")
        pruned = prune(store, keep=os.path.basename(final))
        store.verifier.cache.save()
    return {"changed": True, "dir": rel, "files": len(request.files),
            "samples": len(request.manifest.get("samples") or []), "pruned": pruned}


def prune(store: Store, keep: str) -> List[str]:
    """Keep the newest KEEP_DATASETS staged datasets (``keep`` always); remove the rest and any
    staging dir a crash left behind."""
    top = datasets_dir(store)
    entries = []
    for name in os.listdir(top):
        path = os.path.join(top, name)
        if name.startswith(STAGING_PREFIX):
            remove_tree(path)
        elif DIR_RE.fullmatch(name):
            entries.append((os.stat(path).st_mtime_ns if name != keep else time.time_ns(), name))
    entries.sort(reverse=True)
    pruned = []
    for _mtime, name in entries[KEEP_DATASETS:]:
        path = os.path.join(top, name)
        if in_use(path):
            continue  # an eval reads it (agent.inuse): a later prune removes it
        for dirpath, _dirs, files in os.walk(path):
            for filename in files:
                store.verifier.cache.forget(os.path.join(dirpath, filename))
        remove_tree(path)
        pruned.append("datasets/" + name)
    return pruned


def load_staged(store: Store, digest: str) -> Tuple[Dict[str, Any], str]:
    """(manifest, dir) of a staged dataset that verifies; an error saying how to get it there."""
    if not is_sha256(digest):
        raise AgentError(E_BAD_INPUT, "dataset must be a 64 hex digit digest, got %r"
                         % (digest,))
    problem = staged_problem(store, digest)
    with journal.locked(store):  # another command may save the cache meanwhile (hashcache)
        store.verifier.cache.save()
    if problem is not None:
        raise AgentError(E_DATASET_NOT_ON_DEVICE, "dataset %s is not usable on this device (%s):"
                         " `edgefleet eval` pushes it first" % (digest[:16], problem),
                         dataset=digest)
    path = dataset_dir(store, digest)
    with open(os.path.join(path, DATASET_MANIFEST), "rb") as handle:
        return parse_manifest_bytes(handle.read()), path
