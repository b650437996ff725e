"""``verify``: re-check the active version from scratch, on demand (``devices verify``).

Why no cache: the point is to catch what the hash cache cannot (bit rot, a file changed with
its mtime restored), so every file is hashed again; then the golden outputs are re-run in a
fresh child, as after an activation (agent/smoke.py).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, List, Optional

from agent import journal
from agent.fsutil import AgentError
from agent.protocol import (
    E_NOTHING_ACTIVE,
    HASH_CHUNK,
    event,
    manifest_digest,
    manifest_files,
)
from agent.smoke import failure_message, golden_of, run_smoke


def _hash_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(HASH_CHUNK)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)


def _file_problem(path: str, entry: Dict[str, Any]) -> Optional[str]:
    """Why the file at ``path`` is not the manifest's ``entry`` (hashed now, no cache)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    if os.path.islink(path) or not os.path.isfile(path):
        return "not a regular file"
    if st.st_size != entry["size"]:
        return "%d bytes, expected %d" % (st.st_size, entry["size"])
    actual = _hash_file(path)
    if actual != entry["sha256"]:
        return "sha256 %s, expected %s" % (actual, entry["sha256"])
    return None


def verify(store: Any) -> Dict[str, Any]:
    """Re-hash every file of the active version and re-run its golden comparison.

    ``ok`` false (not an error) when anything is off, so the control plane can show all of
    it; an error only when nothing is active. Failed files are dropped from the hash cache, so
    the next push re-checks them instead of trusting an entry for bytes that changed.
    """
    from agent.store import MANIFEST_NAME, parse_manifest_bytes

    missing = AgentError(E_NOTHING_ACTIVE, "nothing is active under %s: push a bundle first "
                         "(edgefleet push NAME TARGETS)" % store.root)
    if not os.path.isdir(store.root):
        raise missing
    with journal.locked(store):
        state = store.load_state()
        entry = store.active(state)
        if entry is None:
            raise missing
        problems: List[str] = []
        failed: Dict[str, str] = {}
        files: List[Dict[str, Any]] = []
        manifest: Dict[str, Any] = {}
        vdir = store.version_path(entry)
        if store.current_target() != entry.get("dir"):
            problems.append("current points at %s, the history says %s"
                            % (store.current_target(), entry.get("dir")))
        try:
            if vdir is None:
                raise ValueError("the history entry has no valid dir")
            with open(os.path.join(vdir, MANIFEST_NAME), "rb") as handle:
                manifest = parse_manifest_bytes(handle.read())
            if manifest_digest(manifest) != entry.get("digest"):
                raise ValueError("its manifest does not match digest %s" % entry.get("digest"))
            files = manifest_files(manifest)
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            problems.append("%s: %s" % (entry.get("dir"), exc))
        for item in files:
            path = os.path.join(vdir or "", item["path"])
            store.emit(event("verifying", path=item["path"], done=0, total=item["size"]))
            why = _file_problem(path, item)
            if why is not None:
                failed[item["path"]] = why
                store.verifier.cache.forget(path)
        store.verifier.cache.save()
        smoke = None
        golden = None
        if files:
            try:
                golden = golden_of(manifest)
            except AgentError as exc:
                problems.append(exc.message)
        if golden is not None and vdir is not None:
            smoke = run_smoke(vdir, golden, store.emit)
            if not smoke["ok"]:
                smoke["message"] = failure_message(smoke, golden)
    ok = not problems and not failed and (smoke is None or smoke["ok"])
    return {"ok": ok, "active": entry, "problems": problems,
            "files": {"checked": len(files), "failed": sorted(failed), "problems": failed},
            "smoke": smoke}
