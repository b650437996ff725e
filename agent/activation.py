"""activate / rollback: the steps of a change of ``current``, journalled by agent.journal.

Why the order matters: everything that can fail (hashing uploads, staging, verifying the staged
files, the smoke test) happens before ``current`` is swapped, so a failure leaves the running
model exactly as it was, and a new version is never live before its smoke test passed. The
journal (state.json's ``pending``) makes a crash at any point recoverable: the next command
reverts what was not committed. The swap is one ``os.replace`` of a symlink, which is atomic on
POSIX: a reader sees the old version or the new one, never a mix.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import time
from typing import Any, Dict, List, Optional, Set

from agent import journal, signatures
from agent.fsutil import (
    NO_SPACE_ERRNOS,
    AgentError,
    disk_free_bytes,
    fsync_dir,
    fsync_file,
    remove_tree,
    writing,
)
from agent.hashcache import HashCache
from agent.journal import crash_point
from agent.protocol import (
    E_MISSING_BLOB,
    E_NOTHING_TO_ROLL_BACK,
    E_SMOKE_FAILED,
    E_VERIFY_FAILED,
    canonical_json,
)
from agent.prune import prune, remove_version_dir
from agent.store import (
    MANIFEST_NAME,
    STAGING_PREFIX,
    Request,
    Store,
    blob_status,
    parse_manifest_bytes,
)

BLOB_MODE = 0o444  # read-only: a write through current/ must not corrupt a shared blob


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
            verifier.cache.carry(st, os.lstat(store.blob_path(sha)))  # chmod moved its ctime
            continue
        if require_all and store.check_blob(sha, size, paths[0]) != "present":
            raise AgentError(
                E_MISSING_BLOB,
                "no verified content for %s (sha256 %s): upload it to %s first"
                % (", ".join(paths), sha, store.part_path(sha)),
                path=paths[0], paths=paths, sha256=sha,
            )
    fsync_dir(store.blobs)


def _link_or_copy(src: str, dst: str, cache: HashCache) -> None:
    """Hardlink (shares the inode, so the hash cache already vouches for it: the entry is
    carried to the ctime the link gives it), else copy."""
    with writing(dst):
        try:
            before = os.lstat(src)
            os.link(src, dst)
            cache.carry(before, os.lstat(src))
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
    subdirs: Set[str] = set()  # every folder below staging: each one's entries need an fsync
    try:
        for entry in request.files:
            dst = os.path.join(staging, entry["path"])
            folder = os.path.dirname(dst)
            with writing(dst):
                os.makedirs(folder, exist_ok=True)
            while folder != staging and folder not in subdirs:
                subdirs.add(folder)
                folder = os.path.dirname(folder)
            _link_or_copy(store.blob_path(entry["sha256"]), dst, store.verifier.cache)
        bad = store.verifier.check_all(staging, request.files)
        if bad is not None:
            raise AgentError(E_VERIFY_FAILED, "staged %s file %s failed verification: %s; push "
                             "again" % ((what,) + tuple(bad)), path=bad[0])
        manifest_path = os.path.join(staging, manifest_name)
        with writing(manifest_path), open(manifest_path, "xb") as handle:
            handle.write(canonical_json(request.manifest))
            handle.flush()
            os.fsync(handle.fileno())
        # Deepest first, then staging itself: after a power cut the renamed dir holds every
        # file (labels/classes.txt too), not only those at its top.
        for folder in sorted(subdirs, key=lambda f: (-f.count(os.sep), f)):
            fsync_dir(folder)
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


def activate(store: Store, request: Request) -> Dict[str, Any]:
    """Stage, record the intent, smoke-test (not live yet), swap ``current``, commit, prune."""
    from agent import smoke

    golden = smoke.golden_of(request.manifest)  # a malformed key is refused before any change
    golden = golden or smoke.load_check_of(request.manifest)  # no golden: a load check
    store.ensure_layout()
    with journal.locked(store):  # reverts whatever a dead process left pending (agent.journal)
        state = store.load_state()
        previous = store.active(state)
        # Before anything is staged: a device with pinned keys refuses what none of them signed.
        signed = signatures.check(store, request, previous)
        already = store.is_already_active(request, previous)
        accept_uploads(store, request, require_all=not already)
        if already:
            # a re-signed version (a rotation): keep its new signature for a later rollback
            signatures.remember(store, request.digest, request.signature)
            store.verifier.cache.save()
            return {"changed": False, "active": previous, "previous": _entry_summary(previous),
                    "dir": previous["dir"] if previous else None,
                    "verified_files": len(request.files), "pruned": []}
        name = stage(store, request)
        crash_point("staged")
        rel = "versions/" + name
        entry = {"name": request.name, "version": request.version, "digest": request.digest,
                 "dir": rel, "activated_at": journal.now()}
        if signed is not None:
            entry["signed_by"] = signed["key"]
        try:
            # The signature first: once the activation commits, a crash or a full disk must
            # not leave the live version without it (a rollback to it is checked against it).
            signatures.remember(store, request.digest, request.signature)
            journal.begin(store, state, "activate", entry)
        except BaseException:
            state["pending"] = None
            remove_version_dir(store, os.path.join(store.versions, name))
            raise
        crash_point("pending")
        data: Dict[str, Any] = {"changed": True, "active": dict(entry),
                                "previous": _entry_summary(previous), "dir": rel,
                                "verified_files": len(request.files), "pruned": []}
        try:
            if golden is not None:
                data["smoke"] = _smoke_or_revert(store, state, previous, name, golden)
                # Which onnxruntime passed it: a rollback to it under another smoke-tests again.
                entry["smoke_onnxruntime"] = data["smoke"].get("onnxruntime")
                data["active"] = dict(entry)
                journal.advance(store, state, "smoke_tested")
                crash_point("smoke_tested")
            journal.commit(store, state, state["history"] + [entry], "swapped")
        except BaseException:
            if state.get("pending") is not None:  # not committed: nothing of it may stay
                journal.revert_quietly(store, state)
                store.verifier.cache.save()
            raise
        crash_point("committed")
        record_error = _record_committed(store, entry, state["history"], request.signature)
        if record_error:
            data["trust_record_error"] = record_error
        try:
            data["pruned"] = prune(store, state)
        except (OSError, AgentError) as exc:
            # The new version is live; a failed clean-up must not report the push as failed.
            data["prune_error"] = str(exc)
        store.verifier.cache.save()
        data["hashed_bytes"] = store.verifier.hashed_bytes
        return data


def _smoke_or_revert(store: Store, state: Dict[str, Any], previous: Optional[Dict[str, Any]],
                     name: str, golden: Dict[str, Any]) -> Dict[str, Any]:
    """Smoke-test the staged version before it goes live; on failure revert the pending
    activation (``current`` never moved) and raise ``smoke_failed`` naming the difference."""
    from agent import smoke

    new = state["pending"]["entry"]
    report = smoke.run_smoke(os.path.join(store.versions, name), golden, store.emit)
    if report["ok"]:
        return {key: report.get(key) for key in ("ok", "outputs", "ms", "load_ms", "run_ms",
                                                 "max_abs", "max_rel", "onnxruntime",
                                                 "heap_reserved_mb", "load_only")}
    journal.revert(store, state)
    store.verifier.cache.save()
    if previous is not None:
        where = "%s stays active (%s@%s never went live)" % (
            journal.ref(previous), new.get("name"), new.get("version"))
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


def rollback(store: Store) -> Dict[str, Any]:
    """Pop the current entry and re-activate the newest earlier one that still verifies (every
    file re-checked through the hash cache: a file changed since, even with its mtime put back,
    is hashed again, and a version that fails is skipped, naming the file)."""
    if not os.path.isdir(store.root):
        raise AgentError(E_NOTHING_TO_ROLL_BACK, "nothing to roll back: %s does not exist"
                         % store.root)
    with journal.locked(store):
        state = store.load_state()
        history = state["history"]
        if len(history) < 2:
            raise AgentError(E_NOTHING_TO_ROLL_BACK, "nothing to roll back: %s"
                             % ("no version was ever activated under %s" % store.root
                                if not history else "only one version is in the history"))
        rolled_from = history[-1]
        candidates = history[:-1]
        skipped: List[Dict[str, Any]] = []
        smoked: Optional[Dict[str, Any]] = None
        while candidates:
            problem = (store.version_problem(candidates[-1])
                       or signatures.rollback_problem(store, candidates[-1]))
            if problem is None:
                smoked, problem = _smoke_again_if_runtime_changed(store, candidates[-1])
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
        target["activated_at"] = journal.now()
        journal.begin(store, state, "rollback", target)
        crash_point("rollback_pending")
        try:
            journal.commit(store, state, candidates[:-1] + [target], "rollback_swapped")
        except BaseException:
            journal.revert_quietly(store, state)
            raise
        # asked for: the floor goes down with it
        record_error = _record_committed(store, target, state["history"], None)
        store.verifier.cache.save()
        result = {"active": dict(target), "previous": dict(rolled_from), "skipped": skipped}
        if smoked is not None:
            result["smoke"] = smoked
        if record_error:
            result["trust_record_error"] = record_error
        return result


def _smoke_again_if_runtime_changed(store: Store, entry: Dict[str, Any]
                                    ) -> "tuple[Optional[Dict[str, Any]], Optional[str]]":
    """(smoke summary, problem) for rolling back to ``entry``: its smoke test is run again
    when this device's onnxruntime is not the one that passed it (or that is not recorded):
    a rollback after an onnxruntime upgrade would otherwise put live a model never run on it.
    (None, None): no need, or nothing to check it with. On success the entry records the
    runtime that passed it."""
    from agent import smoke
    from agent.facts import onnxruntime_version_fast

    runtime = onnxruntime_version_fast()
    if runtime is not None and entry.get("smoke_onnxruntime") == runtime:
        return None, None
    vdir = store.version_path(entry)
    if vdir is None:
        return None, None  # version_problem already refused it
    try:
        with open(os.path.join(vdir, MANIFEST_NAME), "rb") as handle:
            manifest = parse_manifest_bytes(handle.read())
        golden = smoke.golden_of(manifest) or smoke.load_check_of(manifest)
    except (OSError, ValueError, AgentError) as exc:
        return None, "its manifest cannot be read to smoke-test it again (%s)" % exc
    if golden is None:
        return None, None
    report = smoke.run_smoke(vdir, golden, store.emit)
    if not report["ok"]:
        return None, ("its smoke test fails under onnxruntime %s, which it was not tested "
                      "with: %s" % (report.get("onnxruntime") or runtime or "?",
                                    smoke.failure_message(report, golden)))
    entry["smoke_onnxruntime"] = report.get("onnxruntime") or runtime
    return {key: report.get(key) for key in ("ok", "ms", "max_abs", "max_rel", "onnxruntime",
                                             "load_only")}, None


def _record_committed(store: Store, entry: Dict[str, Any], history: List[Dict[str, Any]],
                      signature: Optional[Dict[str, str]]) -> Optional[str]:
    """``signatures.record_committed`` after a commit; what failed, if anything. Why not
    raised: the version is live by now, and an error would report the push or rollback as
    failed (a full disk here said ``no_space`` about a committed activation)."""
    try:
        signatures.record_committed(store, entry, history, signature)
    except (OSError, AgentError) as exc:
        return "the version is active, but its trust records were not updated: %s" % exc
    return None


def _reclaim(store: Store, state: Dict[str, Any], request: Request) -> List[str]:
    """Before a plan measures the free space: remove what no version needs (``prune``), the
    plan's own blobs kept.

    Why here and not only after a commit: a failed activation (a smoke test that failed, a
    full disk while staging, a kill mid-copy) left its blobs and staging behind, and the next
    prune came only with a successful activation. Each failed bundle's model stayed, until
    the free space the plan reports refused every push ("not enough disk space"), which the
    only clean-up that would make room could then never run."""
    if state.get("pending") is not None:
        return []
    try:
        return prune(store, state, keep=request.sizes)
    except (OSError, AgentError) as exc:  # a clean-up only: the plan answers as before
        sys.stderr.write("edgefleet-agent: clean-up before the plan failed: %s\n" % exc)
        return []


def plan(store: Store, request: Request) -> Dict[str, Any]:
    """What the control plane must upload before ``activate``; deletes corrupt blobs. In a
    session, ``resume`` offers the bytes a dropped transfer left of a missing blob."""
    from agent.facts import onnxruntime_version_fast  # only plan needs facts (and its imports)

    store.ensure_layout()
    with journal.locked(store):
        state = store.load_state()  # reverted already if a dead process left it pending
        active = store.active(state)
        signed = signatures.check(store, request, active)  # refused: nothing is sent
        pruned = _reclaim(store, state, request)
        present, missing, corrupt = blob_status(store, request)
        already = store.is_already_active(request, active)
        if store.parts is not None and not already:  # kept from other sessions' prunes
            store.parts.want(request.sizes)
        store.verifier.cache.save()
    extra: Dict[str, Any] = {}
    if store.parts is not None and not already:
        labels = {sha: paths[0] for sha, paths in request.uses.items()}
        extra["resume"] = store.parts.offers(missing, request.sizes, labels)
    return {
        "root": store.root,
        "incoming": store.incoming,
        "missing": missing,
        "missing_bytes": sum(request.sizes[sha] for sha in missing),
        "present": present,
        "corrupt": corrupt,
        "active": active,
        "already_active": already,
        "disk_free_bytes": disk_free_bytes(store.root),
        "onnxruntime": onnxruntime_version_fast(),
        "signature": signed,
        "pruned": pruned,
        **extra,
    }
