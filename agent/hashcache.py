"""Verification cache: hash a file once, trust it while its inode, size, mtime and ctime hold.

Why: a Pi 3 hashes ~40 MB/s from an SD card, so re-hashing every model file on every ``plan``
and ``activate`` would dominate a push. Blobs are hardlinked into version dirs, so keying on
``dev:ino`` lets a file verified as a blob count as verified in every version that links it.

Rules (see DESIGN: bundles are activated only after every file verifies):
- an entry is trusted only when size, mtime_ns AND ctime_ns match the file's current stat.
  Why ctime: mtime can be put back (``os.utime``; a byte flipped with the mtime restored looked
  unchanged), ctime cannot: the kernel sets it on every write, chmod, utime, link and rename.
- our own link/unlink/chmod/rename of a verified file changes its ctime but not its bytes:
  ``HashCache.carry`` moves the entry to the new ctime (we hold the root lock), so staging a
  version or pruning one does not force a re-hash of every blob.
- an entry is persisted only when the file's mtime or ctime is older than the moment hashing
  started by more than ``RACY_WINDOW_NS``. Why: filesystem timestamps are coarse (a kernel tick;
  2 s on FAT), so a same-size rewrite within that window would keep the old timestamps and fool
  the cache. The older of the two is enough: a write after hashing sets mtime to "now", far from
  an old mtime, and a write with the mtime put back sets ctime to "now", past an old ctime; a
  received blob is backdated (agent.session.backdate) so its mtime is the old one. What remains
  is a write whose mtime is put back within one timestamp tick of our own last change of that
  inode. Such "racy" entries are kept in memory for the current command only, where nothing else
  writes to our files (we hold the root lock and the upload has finished). Bytes that rot on
  the medium without any write change no timestamp at all: ``verify`` (no cache) finds those.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from agent.fsutil import AgentError, atomic_write_json, read_json
from agent.protocol import HASH_CHUNK, event, is_sha256

RACY_WINDOW_NS = 3 * 1000 * 1000 * 1000
PROGRESS_INTERVAL_S = 0.25

Entry = Tuple[int, int, int, str]  # size, mtime_ns, ctime_ns, sha256


def _read_entries(path: str) -> Dict[str, Entry]:
    """The entries of ``cache/hashes.json``; an unreadable file counts as empty."""
    try:
        raw = read_json(path)
    except (OSError, ValueError) as exc:
        sys.stderr.write("edgefleet-agent: ignoring unreadable %s: %s\n" % (path, exc))
        raw = None
    entries: Dict[str, Entry] = {}
    if isinstance(raw, dict):
        for key, value in raw.items():
            # 3-item entries (no ctime) come from an older agent: hashed again once
            if (
                isinstance(value, list)
                and len(value) == 4
                and all(isinstance(v, int) for v in value[:3])
                and is_sha256(value[3])
            ):
                entries[key] = (value[0], value[1], value[2], value[3])
    return entries


def cache_key(st: os.stat_result) -> str:
    return "%d:%d" % (st.st_dev, st.st_ino)


class HashCache:
    """The persistent ``cache/hashes.json`` plus an in-process memo for racy entries."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.memo: Dict[str, Entry] = {}
        self.dirty = False
        # What this process changed (None: removed), applied to the file as it is at save
        # time: another command may have saved it since this one read it (see ``save``).
        self.changes: Dict[str, Optional[Entry]] = {}
        self.entries: Dict[str, Entry] = _read_entries(path)

    def lookup(self, st: os.stat_result) -> Optional[str]:
        """The cached sha256 for this stat, or None when unknown or anything changed."""
        key = cache_key(st)
        for table in (self.memo, self.entries):
            entry = table.get(key)
            if entry is not None and entry[:3] == _times(st):
                return entry[3]
        return None

    def record(self, st: os.stat_result, sha: str, hash_started_ns: int) -> None:
        key = cache_key(st)
        entry = _times(st) + (sha,)
        self.memo[key] = entry
        if min(st.st_mtime_ns, st.st_ctime_ns) < hash_started_ns - RACY_WINDOW_NS:
            self._set(key, entry)
        elif key in self.entries:
            self._set(key, None)

    def _set(self, key: str, entry: Optional[Entry]) -> None:
        """Change (or, with None, remove) an entry, remembering it for ``save``."""
        if entry is None:
            self.entries.pop(key, None)
        else:
            self.entries[key] = entry
        self.changes[key] = entry
        self.dirty = True

    def carry(self, before: os.stat_result, after: os.stat_result) -> None:
        """We linked, unlinked, chmod-ed or renamed a file whose stat was ``before``: if the
        cache vouched for it then, it vouches for ``after`` (same inode, size and mtime; only
        the ctime moved). Anything else about it changed: then nothing is carried."""
        key = cache_key(before)
        if (cache_key(after) != key or after.st_size != before.st_size
                or after.st_mtime_ns != before.st_mtime_ns):
            return
        sha = self.lookup(before)
        if sha is None:
            return
        persisted = self.entries.get(key, (None,) * 4)[:3] == _times(before)
        self.memo.pop(key, None)
        if key in self.entries:
            self._set(key, None)
        if persisted:
            self.record(after, sha, time.time_ns())
        else:
            self.memo[key] = _times(after) + (sha,)

    def forget(self, path: str) -> None:
        """Drop the entry of a file about to be deleted (its inode number will be reused)."""
        try:
            key = cache_key(os.lstat(path))
        except OSError:
            return
        self.memo.pop(key, None)
        if key in self.entries:
            self._set(key, None)

    def retain(self, keys: Iterable[str]) -> None:
        """Keep only entries for inodes still in the store, so the file does not grow forever."""
        keep = set(keys)
        for key in list(self.entries):
            if key not in keep:
                self._set(key, None)

    def save(self) -> None:
        """Persist this process's changes onto the file as it is now (callers hold the root
        lock); failure only costs a re-hash next time, so it is reported, not fatal.

        Why not the whole table as this process read it: the table was read when the command
        started, and another command may have saved since. ``verify`` drops the entry of a
        file it found rotten; an ``eval`` that started before it and saved its stale table
        after put the entry back, and the next push then said "unchanged" and bench and
        rollback trusted the corrupt model."""
        if not self.dirty:
            return
        current = _read_entries(self.path)
        for key, entry in self.changes.items():
            if entry is None:
                current.pop(key, None)
            else:
                current[key] = entry
        self.entries = current
        data = {k: list(v) for k, v in sorted(self.entries.items())}
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            atomic_write_json(self.path, data)
            self.dirty = False
            self.changes.clear()
        except (OSError, AgentError) as exc:
            sys.stderr.write("edgefleet-agent: could not save %s: %s\n" % (self.path, exc))


class Verifier:
    """Hashes files through the cache and reports progress as ``verifying`` events.

    ``hashed_files``/``hashed_bytes`` count real hashing work, so callers (and tests) can tell
    a cache hit from a re-hash.
    """

    def __init__(self, cache: HashCache, emit: Callable[[Dict[str, Any]], None]) -> None:
        self.cache = cache
        self.emit = emit
        self.hashed_files = 0
        self.hashed_bytes = 0

    def sha256(self, path: str, label: str, st: Optional[os.stat_result] = None) -> str:
        """sha256 of ``path``; ``label`` is what progress events call it (a manifest path)."""
        if st is None:
            st = os.stat(path)
        cached = self.cache.lookup(st)
        if cached is not None:
            return cached
        started_ns = time.time_ns()
        total = st.st_size
        digest = hashlib.sha256()
        done = 0
        last = 0.0
        self.emit(event("verifying", path=label, done=0, total=total))
        with open(path, "rb") as handle:
            while True:
                chunk = handle.read(HASH_CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                done += len(chunk)
                now = time.monotonic()
                if now - last >= PROGRESS_INTERVAL_S and done < total:
                    last = now
                    self.emit(event("verifying", path=label, done=done, total=total))
            after = os.fstat(handle.fileno())
        sha = digest.hexdigest()
        self.emit(event("verifying", path=label, done=done, total=total))
        self.hashed_files += 1
        self.hashed_bytes += done
        if _same_file_state(st, after):
            self.cache.record(after, sha, started_ns)
        return sha

    def check(self, path: str, sha: str, size: int, label: str) -> Optional[str]:
        """None when ``path`` is a regular file with this size and sha, else why it is not."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return "missing"
        if not _is_regular(st):
            return "not a regular file"
        if st.st_size != size:
            return "size %d, expected %d" % (st.st_size, size)
        actual = self.sha256(path, label, st)
        if actual != sha:
            return "sha256 %s, expected %s" % (actual, sha)
        return None

    def check_all(self, base: str, files: List[Dict[str, Any]]) -> Optional[Tuple[str, str]]:
        """First (manifest path, problem) among ``files`` under ``base``, or None if all verify."""
        for entry in files:
            problem = self.check(
                os.path.join(base, entry["path"]), entry["sha256"], entry["size"], entry["path"]
            )
            if problem is not None:
                return entry["path"], problem
        return None


def _is_regular(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode)


def _times(st: os.stat_result) -> Tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _same_file_state(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) + _times(a) == (b.st_dev, b.st_ino) + _times(b)
