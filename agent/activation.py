"""activate / rollback / prune: the only code that moves ``current``.

Why the order matters: everything that can fail (hashing uploads, staging, verifying the staged
files) happens in ``versions/.staging-*`` before ``current`` is swapped, so a failure leaves the
running model and state.json exactly as they were. The swap is one ``os.replace`` of a symlink,
which is atomic on POSIX: a reader sees the old version or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import stat
import time
from typing import Any, Dict, List, Optional

from agent.fsutil import (
    NO_SPACE_ERRNOS,
    AgentError,
    fsync_dir,
    fsync_file,
    remove_tree,
    writing,
)
from agent.protocol import (
    E_MISSING_BLOB,
    E_NOTHING_TO_ROLL_BACK,
    E_SMOKE_FAILED,
    E_VERIFY_FAILED,
    canonical_json,
    is_sha256,
)
from agent.store import MANIFEST_NAME, STAGING_PREFIX, Request, Store, parse_manifest_bytes

KEEP_VERSIONS = 4  # current + 3 previous distinct versions
BLOB_MODE = 0o444  # read-only: a write through current/ must not corrupt a shared blob


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _entry_summary(entry: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    return dict(entry) if entry is not None else None


def accept_uploads(store: Store, request: Request, require_all: bool = True) -> None:
    """Move verified ``incoming/<sha>.part`` files into ``blobs/``; with ``require_all`` every
    sha must end up present (not needed when the bundle is already active and verified).

    A .part whose content does not match is deleted (re-uploading is the only fix) and the
    error names the manifest path(s) that use it.
    """
    verifier = store.verifier
    for sha, paths in request.uses.items():
        size = request.sizes[sha]
        part = store.part_path(sha)
        try:
            st = os.lstat(part)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            actual = verifier.sha256(part, paths[0], st)
            if actual != sha or st.st_size != size:
                verifier.cache.forget(part)
                remove_tree(part)
                raise AgentError(
                    E_VERIFY_FAILED,
                    "upload of %s does not match the manifest: sha256 %s (%d bytes), expected "
                    "%s (%d bytes); the upload was deleted, push again"
                    % (", ".join(paths), actual, st.st_size, sha, size),
                    path=paths[0], paths=paths, expected=sha, actual=actual,
                    size=st.st_size, expected_size=size,
                )
            os.chmod(part, BLOB_MODE)
            fsync_file(part)  # the cache will vouch for it after a power cut, so flush first
            os.replace(part, store.blob_path(sha))
            continue
        if require_all and store.check_blob(sha, size, paths[0]) != "present":
            raise AgentError(
                E_MISSING_BLOB,
                "no verified content for %s (sha256 %s): upload it to %s first"
                % (", ".join(paths), sha, store.part_path(sha)),
                path=paths[0], paths=paths, sha256=sha,
            )
    fsync_dir(store.blobs)


def _link_or_copy(src: str, dst: str) -> None:
    """Hardlink (shares the inode, so the hash cache already vouches for it), else copy."""
    with writing(dst):
        try:
            os.link(src, dst)
            return
        except OSError as exc:
            if exc.errno in NO_SPACE_ERRNOS:
                raise
        shutil.copyfile(src, dst)
        os.chmod(dst, BLOB_MODE)
        fsync_file(dst)


def build_dir(store: Store, request: Request, parent: str, manifest_name: str, final: str,
              what: str) -> None:
    """Hard-link (or copy) every verified blob of ``request`` into a staging dir under
    ``parent``, verify the result, write the manifest, fsync, and rename it to ``final`` (a
    damaged earlier copy there is replaced). Nothing half-built is ever left at ``final``.
    Shared by bundle versions and staged datasets."""
    staging = os.path.join(parent, STAGING_PREFIX + os.urandom(8).hex())
    os.mkdir(staging)
    try:
        for entry in request.files:
            dst = os.path.join(staging, entry["path"])
            with writing(dst):
                os.makedirs(os.path.dirname(dst), exist_ok=True)
            _link_or_copy(store.blob_path(entry["sha256"]), dst)
        bad = store.verifier.check_all(staging, request.files)
        if bad is not None:
            raise AgentError(E_VERIFY_FAILED, "staged %s file %s failed verification: %s; push "
                             "again" % ((what,) + tuple(bad)), path=bad[0])
        manifest_path = os.path.join(staging, manifest_name)
        with writing(manifest_path), open(manifest_path, "xb") as handle:
            handle.write(canonical_json(request.manifest))
            handle.flush()
            os.fsync(handle.fileno())
        fsync_dir(staging)
        if os.path.lexists(final):
            remove_tree(final)
        os.rename(staging, final)
    except BaseException:
        remove_tree(staging)
        raise
    fsync_dir(parent)


def stage(store: Store, request: Request) -> str:
    """Build and verify a complete version dir; returns its name under versions/."""
    name = "%s-%d" % (request.digest[:16], time.time_ns())
    build_dir(store, request, store.versions, MANIFEST_NAME,
              os.path.join(store.versions, name), "bundle")
    return name


def swap_current(store: Store, target: Optional[str]) -> None:
    """Point ``current`` at ``target`` (relative, e.g. versions/x) atomically; None removes it."""
    if target is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(store.current)
    else:
        tmp = os.path.join(store.root, ".current.tmp-" + os.urandom(4).hex())
        with writing(tmp):
            os.symlink(target, tmp)
        try:
            os.replace(tmp, store.current)
        except BaseException:
            remove_tree(tmp)
            raise
    fsync_dir(store.root)


def commit(store: Store, state: Dict[str, Any], target: str) -> None:
    """Swap ``current`` then record it; if recording fails, swap back so both still agree."""
    before = store.current_target()
    swap_current(store, target)
    try:
        store.save_state(state)
    except BaseException:
        with contextlib.suppress(Exception):
            swap_current(store, before)
        raise


def activate(store: Store, request: Request) -> Dict[str, Any]:
    from agent import smoke

    golden = smoke.golden_of(request.manifest)  # a malformed key is refused before any change
    store.ensure_layout()
    with store.lock():
        state = store.load_state()
        previous = store.active(state)
        already = store.is_already_active(request, previous)
        accept_uploads(store, request, require_all=not already)
        if already:
            store.verifier.cache.save()
            return {"changed": False, "active": previous, "previous": _entry_summary(previous),
                    "dir": previous["dir"] if previous else None,
                    "verified_files": len(request.files), "pruned": []}
        name = stage(store, request)
        rel = "versions/" + name
        entry = {"name": request.name, "version": request.version, "digest": request.digest,
                 "dir": rel, "activated_at": _now()}
        state["history"].append(entry)
        before = store.current_target()
        try:
            commit(store, state, rel)
        except BaseException:
            remove_tree(os.path.join(store.versions, name))
            raise
        data: Dict[str, Any] = {"changed": True, "active": dict(entry),
                                "previous": _entry_summary(previous), "dir": rel,
                                "verified_files": len(request.files), "pruned": []}
        if golden is not None:  # before prune: a rollback needs the previous version's dir
            data["smoke"] = _smoke_or_undo(store, state, before, previous, name, golden)
        try:
            data["pruned"] = prune(store, state)
        except (OSError, AgentError) as exc:
            # The new version is live; a failed clean-up must not report the push as failed.
            data["prune_error"] = str(exc)
        store.verifier.cache.save()
        data["hashed_bytes"] = store.verifier.hashed_bytes
        return data


def _smoke_or_undo(store: Store, state: Dict[str, Any], before: Optional[str],
                   previous: Optional[Dict[str, Any]], name: str,
                   golden: Dict[str, Any]) -> Dict[str, Any]:
    """Smoke-test the version just made current; on failure (or interruption) undo the
    activation and raise ``smoke_failed`` naming the difference and where the device is now."""
    from agent import smoke

    new = state["history"][-1]
    try:
        report = smoke.run_smoke(os.path.join(store.versions, name), golden, store.emit)
    except BaseException:
        _undo(store, state, before, name)
        raise
    if report["ok"]:
        return {key: report.get(key) for key in ("ok", "outputs", "ms", "load_ms", "run_ms",
                                                 "max_abs", "max_rel", "onnxruntime",
                                                 "heap_reserved_mb")}
    _undo(store, state, before, name)
    if previous is not None:
        where = "rolled back to %s@%s" % (previous.get("name"), previous.get("version"))
    else:
        where = "nothing is active now (it was the first version on this device)"
    hint = ("if this difference is expected on this hardware, rebuild with a looser "
            "--golden-rtol/--golden-atol" if report["reason"] == "mismatch" else
            "check the device's onnxruntime version against the bundle's min_onnxruntime")
    raise AgentError(
        E_SMOKE_FAILED,
        "smoke test of %s@%s failed: %s; %s; %s"
        % (new.get("name"), new.get("version"), smoke.failure_message(report, golden), where,
           hint),
        reason=report["reason"], outputs=report.get("outputs") or [],
        max_abs=report.get("max_abs"), max_rel=report.get("max_rel"),
        error=report.get("error"), ms=report.get("ms"),
        rolled_back_to=_entry_summary(previous),
    )


def _undo(store: Store, state: Dict[str, Any], before: Optional[str], name: str) -> None:
    """Put ``current`` and state.json back as they were before this activation, then delete
    the version dir. The hash cache keeps only inodes still in the store: a copied (not
    hardlinked) file's inode dies with the dir and could be reused by an unrelated file."""
    state["history"].pop()
    swap_current(store, before)
    store.save_state(state)
    remove_tree(os.path.join(store.versions, name))
    keep = []
    for entry in state["history"]:
        path = store.version_path(entry)
        if path is not None and os.path.isdir(path):
            keep.append(os.path.basename(path))
    store.verifier.cache.retain(_inode_keys(store, keep))
    store.verifier.cache.save()


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


def prune(store: Store, state: Dict[str, Any]) -> List[str]:
    """Keep current + 3 previous distinct versions; delete other dirs and unreferenced blobs.

    State is saved before anything is deleted, so a crash mid-prune leaves only orphans that
    the next prune removes, never a history entry pointing at a deleted dir.
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
    for name in sorted(os.listdir(store.versions)):
        if name in keep_names:
            continue
        remove_tree(os.path.join(store.versions, name))
        if not name.startswith(STAGING_PREFIX):
            pruned.append("versions/" + name)

    referenced = set()
    for name in keep_names:
        try:
            with open(os.path.join(store.versions, name, MANIFEST_NAME), "rb") as handle:
                manifest = parse_manifest_bytes(handle.read())
            referenced.update(f["sha256"] for f in manifest["files"])
        except (OSError, ValueError, KeyError, TypeError):
            return pruned  # cannot tell what is still needed: keep every blob
    cache = store.verifier.cache
    for name in os.listdir(store.blobs):
        if is_sha256(name) and name not in referenced:
            path = store.blob_path(name)
            with contextlib.suppress(OSError):
                if os.lstat(path).st_nlink == 1:  # else a staged dataset still links the inode
                    cache.forget(path)
            remove_tree(path)
    cache.retain(_inode_keys(store, keep_names))
    return pruned


def _inode_keys(store: Store, version_names: Any) -> List[str]:
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


def rollback(store: Store) -> Dict[str, Any]:
    """Pop the current entry and re-activate the newest earlier one that still verifies."""
    if not os.path.isdir(store.root):
        raise AgentError(E_NOTHING_TO_ROLL_BACK, "nothing to roll back: %s does not exist"
                         % store.root)
    with store.lock():
        state = store.load_state()
        history = state["history"]
        if len(history) < 2:
            raise AgentError(E_NOTHING_TO_ROLL_BACK, "nothing to roll back: %s"
                             % ("no version was ever activated under %s" % store.root
                                if not history else "only one version is in the history"))
        rolled_from = history[-1]
        candidates = history[:-1]
        skipped: List[Dict[str, Any]] = []
        while candidates:
            problem = store.version_problem(candidates[-1])
            if problem is None:
                break
            bad = dict(candidates.pop())
            bad["problem"] = problem
            skipped.append(bad)
        if not candidates:
            raise AgentError(
                E_NOTHING_TO_ROLL_BACK,
                "nothing to roll back: no earlier version still verifies (%s)"
                % "; ".join("%s@%s: %s" % (s.get("name"), s.get("version"), s["problem"])
                            for s in skipped),
                skipped=skipped,
            )
        target = dict(candidates[-1])
        target["activated_at"] = _now()
        candidates[-1] = target
        state["history"] = candidates
        commit(store, state, target["dir"])
        store.verifier.cache.save()
        return {"active": dict(target), "previous": dict(rolled_from), "skipped": skipped}
