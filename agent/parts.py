"""Uploads in flight: ``incoming/<sha>.<owner>.part``, one owning agent process per file.

Why one name per owner: two control planes pushing the same blob at once both wrote
``incoming/<sha>.part``; one truncated the other's bytes, and the second rename (or its
clean-up) met a file the first had already moved: a raw FileNotFoundError. Each agent process
that receives blobs (a ``session``) now draws a random ``owner`` id, so no two writers ever
share a file; both may land the same blob (agent.session checks the one already there).

Why a ``flock`` on every part: it tells a live owner from a dead one without any bookkeeping.
The owner holds the lock until it lets go of the part (or dies: the kernel drops the locks of a
SIGKILLed process), so another session may take over a part only when it can lock it, and the
clean-up never deletes one that someone is writing. A part is created under a hidden name
(``.<sha>.<owner>.new``) and renamed only once it is locked, so it is never visible unlocked.

Resume: a transfer whose link dropped keeps its part (agent.session). The next session's
``plan`` takes over (``claim``) the largest dead part of each missing blob: it locks it, renames
it to its own name (so the uniqueness above still holds), hashes the bytes it holds and offers
them as ``resume: {sha: {"offset", "sha256"}}``. The control plane hashes the same prefix of
its own copy and sends ``receive`` with ``offset`` only when the two agree; the agent appends
from there and checks the whole blob's sha256 at the end, as for any upload. A part of no use
(empty, longer than the blob, or turned down by the control plane) is deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import time
from typing import Any, Dict, Iterable, List, Optional

from agent.fsutil import AgentError, writing
from agent.protocol import E_BAD_INPUT, HASH_CHUNK, event

PART_RE = re.compile(r"([0-9a-f]{64})\.([0-9a-f]{16})\.part")  # fullmatch
ORPHAN_AGE_S = 24 * 3600  # a part nobody owns, older than this, is deleted at prune
WANTS_SUFFIX = ".wants"  # sessions/<owner>.wants: the blobs a live session means to use


def sessions_dir(store: Any) -> str:
    return os.path.join(store.root, "sessions")


class Part:
    """An open, locked part file: ``offset`` bytes in it, ``digest`` has hashed them."""

    def __init__(self, path: str, fd: int, offset: int, digest: Any) -> None:
        self.path = path
        self.fd = fd
        self.offset = offset
        self.digest = digest


def lock_existing(path: str, mode: int = os.O_RDONLY) -> Optional[int]:
    """An fd holding the exclusive flock of ``path``; None when it is gone or someone holds
    the lock (a live owner). ``flock`` locks conflict between open files, even in one process."""
    import fcntl

    try:
        # Never through a symlink: one planted in incoming/ would have a resume read, grow,
        # chmod and land a file outside the agent's root; nor block on a planted fifo.
        fd = os.open(path, mode | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:  # gone, a symlink, or not openable for writing: not ours to take
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a fifo or a device: not a part
            raise OSError("not a regular file")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


class Parts:
    """The parts one agent process owns; ``held`` are the ones claimed for resuming."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.owner = os.urandom(8).hex()
        self.held: Dict[str, Part] = {}
        self._wanted: List[str] = []
        self._wants_fd: Optional[int] = None

    def want(self, shas: Iterable[str]) -> None:
        """Record that this session is about to use these blobs (a plan lists them: present
        ones and ones to receive), in ``sessions/<owner>.wants``, locked for the session's
        life. Why: another session's activation prunes every blob its kept versions do not
        use, and deleted the blobs this one had just received or been told were present
        (its activate then failed: missing blob). ``agent.prune`` keeps what a live session
        wants. Called under the root lock, as prune is: a reader never sees half a file."""
        import fcntl

        known = set(self._wanted)
        new = [sha for sha in dict.fromkeys(shas) if sha not in known]
        if not new:
            return
        if self._wants_fd is None:
            os.makedirs(sessions_dir(self.store), exist_ok=True)
            tmp = os.path.join(sessions_dir(self.store), ".%s.wants.new" % self.owner)
            with writing(tmp):
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.rename(tmp, self.wants_path)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            self._wants_fd = fd
        with writing(self.wants_path):
            os.write(self._wants_fd, "".join(sha + "\n" for sha in new).encode("ascii"))
        self._wanted.extend(new)

    @property
    def wants_path(self) -> str:
        return os.path.join(sessions_dir(self.store), "%s%s" % (self.owner, WANTS_SUFFIX))

    def path(self, sha: str) -> str:
        return os.path.join(self.store.incoming, "%s.%s.part" % (sha, self.owner))

    def create(self, sha: str) -> Part:
        """A new empty part, locked before it appears under its part name."""
        import fcntl

        tmp = os.path.join(self.store.incoming, ".%s.%s.new" % (sha, self.owner))
        with writing(tmp):
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a name only we know: never busy
            os.rename(tmp, self.path(sha))
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return Part(self.path(sha), fd, 0, hashlib.sha256())

    def claim(self, sha: str, size: int, label: str,
              names: Optional[List[str]] = None) -> Optional[Part]:
        """Take over the largest dead part of ``sha`` that can be a prefix of it (at most
        ``size`` bytes, not empty), renamed to ours and its bytes hashed; the other dead parts
        of ``sha`` are deleted (only one can be resumed). None when there is none. ``names``:
        the part names in incoming/ by sha, when the caller listed them already."""
        if sha in self.held:
            return self.held[sha]
        locked = []
        for name in (names if names is not None else _parts_by_sha(self.store).get(sha, [])):
            if name.split(".")[1] == self.owner:  # <sha>.<owner>.part
                continue
            path = os.path.join(self.store.incoming, name)
            fd = lock_existing(path, os.O_RDWR)
            if fd is not None:
                locked.append((os.fstat(fd), path, fd))
        usable = [c for c in locked if stat.S_ISREG(c[0].st_mode) and 0 < c[0].st_size <= size]
        best = max(usable, key=lambda c: c[0].st_size) if usable else None
        for _st, path, fd in locked:
            if best is None or fd != best[2]:
                _unlink_and_close(path, fd)
        if best is None:
            return None
        _st, path, fd = best
        try:
            os.rename(path, self.path(sha))
        except OSError:
            os.close(fd)
            return None
        part = Part(self.path(sha), fd, 0, hashlib.sha256())
        try:
            part.offset = _hash_prefix(fd, part.digest, size)
        except OSError:
            _unlink_and_close(part.path, fd)
            return None
        self.held[sha] = part
        self.store.emit(event("resumable", path=label, offset=part.offset, size=size))
        return part

    def offers(self, shas: Iterable[str], sizes: Dict[str, int],
               labels: Dict[str, str]) -> Dict[str, Dict[str, Any]]:
        """``plan``'s ``resume``: {sha: {"offset", "sha256" of those bytes}} per claimed part."""
        offered: Dict[str, Dict[str, Any]] = {}
        by_sha = _parts_by_sha(self.store)  # one listing, however many blobs are missing
        for sha in shas:
            part = self.claim(sha, sizes[sha], labels.get(sha, sha), by_sha.get(sha, []))
            if part is not None:
                offered[sha] = {"offset": part.offset, "sha256": part.digest.hexdigest()}
        return offered

    def for_receive(self, sha: str, offset: int, label: str) -> Part:
        """The part a ``receive`` writes: the held one at ``offset``, else a new one (a held
        part the control plane did not take up, ``offset`` 0, is deleted)."""
        held = self.held.pop(sha, None)
        if offset:
            if held is None or held.offset != offset:
                if held is not None:
                    self.held[sha] = held
                raise AgentError(
                    E_BAD_INPUT, "receive %s at offset %d: this session offered %s"
                    % (label, offset, "no partial upload of it" if held is None
                       else "%d bytes of it" % held.offset), path=label)
            return held
        if held is not None:
            self.discard(held)
        return self.create(sha)

    @staticmethod
    def release(part: Part) -> None:
        """Let go of a part and keep its bytes (a dead owner's part: resumable)."""
        with contextlib.suppress(OSError):
            os.close(part.fd)

    @staticmethod
    def discard(part: Part) -> None:
        _unlink_and_close(part.path, part.fd)

    def close(self) -> None:
        """End of the session: the parts claimed but not received stay resumable; what it
        wanted is wanted no more."""
        for part in self.held.values():
            self.release(part)
        self.held.clear()
        if self._wants_fd is not None:
            _unlink_and_close(self.wants_path, self._wants_fd)
            self._wants_fd = None


def wanted_by_live_sessions(store: Any) -> Optional[set]:
    """The blobs live sessions (other agent processes, and this one) have planned to use; the
    records of dead ones are deleted. None when one cannot be read: then nothing is sure."""
    wanted: set = set()
    for name in _names(sessions_dir(store)):
        path = os.path.join(sessions_dir(store), name)
        if name.startswith(".") and name.endswith(".wants.new"):  # a session died creating it
            fd = lock_existing(path)
            if fd is not None:
                _unlink_and_close(path, fd)
            continue
        if not name.endswith(WANTS_SUFFIX):
            continue
        fd = lock_existing(path)
        if fd is not None:  # nobody holds it: its session is gone
            _unlink_and_close(path, fd)
            continue
        try:
            with open(path, "rb") as handle:
                text = handle.read(1 << 24).decode("ascii")
        except FileNotFoundError:
            continue  # ended meanwhile
        except (OSError, UnicodeDecodeError):
            return None
        wanted.update(line for line in text.split("\n") if len(line) == 64)
    return wanted


def _names(directory: str) -> List[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def _parts_by_sha(store: Any) -> Dict[str, List[str]]:
    """The part names in incoming/ (``<sha>.<owner>.part``), by sha."""
    found: Dict[str, List[str]] = {}
    for name in _names(store.incoming):
        match = PART_RE.fullmatch(name)
        if match is not None:
            found.setdefault(match.group(1), []).append(name)
    return found


def _unlink_and_close(path: str, fd: int) -> None:
    """Delete while still holding the lock, so nobody takes the file in between."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        os.close(fd)


def _hash_prefix(fd: int, digest: Any, limit: int) -> int:
    """Feed the file's first bytes (at most ``limit``) to ``digest``; returns how many."""
    os.lseek(fd, 0, os.SEEK_SET)
    done = 0
    while done < limit:
        chunk = os.read(fd, min(HASH_CHUNK, limit - done))
        if not chunk:
            break
        digest.update(chunk)
        done += len(chunk)
    return done


def sweep(store: Any, max_age_s: float = ORPHAN_AGE_S, now: Optional[float] = None) -> List[str]:
    """Delete what transfers left in ``incoming/`` (dead owners' parts, an older control
    plane's ``<sha>.part``, a ``.new`` left by a crash) untouched for ``max_age_s``; never a
    file whose owner is alive (it holds the lock). Returns them as ``incoming/<name>``."""
    now = time.time() if now is None else now
    removed: List[str] = []
    for name in sorted(_names(store.incoming)):
        path = os.path.join(store.incoming, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < max_age_s:
            continue
        fd = lock_existing(path)
        if fd is not None:
            _unlink_and_close(path, fd)
            removed.append("incoming/" + name)
    return removed
