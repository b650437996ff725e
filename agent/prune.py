"""Deleting old versions and unused blobs without making the hash cache forget what it knows.

Why a module of its own: every unlink of a hardlinked file changes the ctime of the inode it
shares with a blob (its link count changed), and the hash cache keys on ctime (agent.hashcache).
Deleting a version dir therefore has to carry the cache entries of the blobs it linked, or the
next command re-hashes every blob (seconds per model on a Pi's SD card).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Dict, Iterable, List, Tuple

from agent.fsutil import remove_tree
from agent.inuse import in_use
from agent.parts import sweep, wanted_by_live_sessions
from agent.protocol import is_sha256
from agent.store import MANIFEST_NAME, STAGING_PREFIX, Store, parse_manifest_bytes

KEEP_VERSIONS = 4  # current + 3 previous distinct versions


def remove_version_dir(store: Store, path: str) -> None:
    """``remove_tree`` a version dir, carrying the cache entries of the blobs its files are
    linked to (the unlinks move their ctime, not their bytes) and forgetting the files that die
    with it (a copy's inode number will be reused by an unrelated file)."""
    cache = store.verifier.cache
    before: List[Tuple[os.stat_result, str]] = []
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                sha = cache.lookup(st)
                if st.st_nlink == 1:
                    cache.forget(os.path.join(dirpath, name))
                elif sha is not None:
                    before.append((st, sha))
    remove_tree(path)
    for st, sha in before:
        with contextlib.suppress(OSError):
            cache.carry(st, os.lstat(store.blob_path(sha)))


def _kept_history(history: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    kept: List[Dict[str, Any]] = []
    seen = set()
    for entry in reversed(history):
        digest = entry.get("digest")
        if digest in seen or len(kept) >= KEEP_VERSIONS:
            continue
        seen.add(digest)
        kept.append(entry)
    kept.reverse()
    return kept


def prune(store: Store, state: Dict[str, Any], keep: Iterable[str] = ()) -> List[str]:
    """Keep current + 3 previous distinct versions; delete other dirs and unreferenced blobs,
    and the uploads nobody owns that were left in incoming/ more than a day ago (agent.parts:
    a dropped transfer's part stays resumable until then). Returns what went, as paths.

    State is saved before anything is deleted, so a crash mid-prune leaves only orphans that
    the next prune removes, never a history entry pointing at a deleted dir. Only called with
    nothing pending (after a commit, or before a plan: ``plan``), so every dir outside the
    history is an orphan; one a running bench or eval reads is left for a later prune
    (agent.inuse). ``keep``: blobs to keep as well (the ones the plan asks about).
    """
    kept = _kept_history(state["history"])
    if kept != state["history"]:
        state["history"] = kept
        store.save_state(state)
    keep_names = set()
    for entry in kept:
        path = store.version_path(entry)
        if path is not None:
            keep_names.add(os.path.basename(path))
    pruned: List[str] = []
    for name in os.listdir(store.root):
        if name.startswith((".current.tmp-", ".state.json.tmp-")):  # left by a crash
            remove_tree(os.path.join(store.root, name))
    pruned.extend(sweep(store))
    # Temp files of the writes made under the root lock (we hold it: none is being written),
    # left by a kill between their creation and their rename: small, but never reclaimed.
    for top, prefix in (("cache", ".hashes.json.tmp-"), ("trust", ".sig-")):
        with contextlib.suppress(OSError):
            for name in os.listdir(os.path.join(store.root, top)):
                if name.startswith(prefix):
                    remove_tree(os.path.join(store.root, top, name))
    for name in sorted(os.listdir(store.versions)):
        if name in keep_names:
            continue
        if in_use(os.path.join(store.versions, name)):
            continue  # a bench or eval reads it (agent.inuse): the next prune removes it
        remove_version_dir(store, os.path.join(store.versions, name))
        if not name.startswith(STAGING_PREFIX):
            pruned.append("versions/" + name)

    referenced = set(keep)
    for name in keep_names:
        try:
            with open(os.path.join(store.versions, name, MANIFEST_NAME), "rb") as handle:
                manifest = parse_manifest_bytes(handle.read())
            referenced.update(f["sha256"] for f in manifest["files"])
        except (OSError, ValueError, KeyError, TypeError):
            return pruned  # cannot tell what is still needed: keep every blob
    wanted = wanted_by_live_sessions(store)
    if wanted is None:
        return pruned  # a live session's plan cannot be read: keep every blob
    referenced |= wanted  # another session's blobs, received or planned, stay for its activate
    cache = store.verifier.cache
    still_linked: List[os.stat_result] = []  # by a staged dataset (agent.datasets)
    for name in os.listdir(store.blobs):
        if is_sha256(name) and name not in referenced:
            path = store.blob_path(name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if st.st_nlink == 1:
                    cache.forget(path)
                elif cache.lookup(st) is not None:
                    still_linked.append(st)
            remove_tree(path)
    _carry_to_datasets(store, still_linked)
    cache.retain(inode_keys(store, keep_names))
    return pruned


def _carry_to_datasets(store: Store, removed: Iterable[os.stat_result]) -> None:
    """The blobs just removed whose inode a staged dataset still links: find those links and
    carry the cache entries to their new ctime (else the next eval re-hashes the dataset)."""
    wanted = {(st.st_dev, st.st_ino): st for st in removed}
    if not wanted:
        return
    for dirpath, _dirs, names in os.walk(os.path.join(store.root, "datasets")):
        for name in names:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                before = wanted.pop((st.st_dev, st.st_ino), None)
                if before is not None:
                    store.verifier.cache.carry(before, st)


def inode_keys(store: Store, version_names: Any) -> List[str]:
    """dev:ino of every file in blobs/, the named version dirs and the staged datasets."""
    keys: List[str] = []
    tops = [store.blobs] + [os.path.join(store.versions, n) for n in version_names]
    tops.append(os.path.join(store.root, "datasets"))  # staged eval datasets (agent.datasets)
    for top in tops:
        for dirpath, _dirs, names in os.walk(top):
            for name in names:
                with contextlib.suppress(OSError):
                    st = os.lstat(os.path.join(dirpath, name))
                    keys.append("%d:%d" % (st.st_dev, st.st_ino))
    return keys
