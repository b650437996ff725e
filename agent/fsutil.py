"""Filesystem helpers for the device store: atomic writes, locking, disk space, typed errors.

Why a separate module: every write on the device has to survive a pulled power plug (SD cards,
no UPS) and a full disk must be reported as ``no_space`` naming the file, not as a traceback.
Keeping those rules in one place keeps ``store`` and ``activation`` about bundles, not errno.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
from typing import Any, Iterator, Optional

from agent.protocol import E_NO_SPACE

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class AgentError(Exception):
    """A failure the control plane should see as a protocol error with ``code`` and details."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


def no_space_error(path: str, exc: OSError) -> AgentError:
    return AgentError(
        E_NO_SPACE,
        "no space left on the device while writing %s (%s)" % (path, exc.strerror or exc),
        path=path,
    )


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT raised inside the block into ``no_space`` naming ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in NO_SPACE_ERRNOS:
            raise no_space_error(path, exc) from exc
        raise


def fsync_dir(path: str) -> None:
    """Make a rename/link inside ``path`` durable; best effort (not every FS allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    """Flush a file someone else wrote (an SFTP upload) before we record it as verified."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write via a temp file + fsync + ``os.replace`` so readers never see a torn file."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, ".%s.tmp-%s" % (os.path.basename(path), os.urandom(4).hex()))
    try:
        with writing(path):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def atomic_write_json(path: str, obj: Any) -> None:
    data = (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    atomic_write_bytes(path, data)


def read_json(path: str) -> Optional[Any]:
    """The parsed file, or None when it does not exist (other errors propagate)."""
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read().decode("utf-8"))
    except FileNotFoundError:
        return None


def disk_free_bytes(path: str) -> Optional[int]:
    """Free bytes for an unprivileged user on the FS holding ``path`` or its nearest parent.

    Why the parent walk: ``facts`` runs before the root exists and must not create it.
    """
    current = os.path.abspath(path)
    while True:
        try:
            st = os.statvfs(current)
            return int(st.f_bavail * st.f_frsize)
        except FileNotFoundError:
            parent = os.path.dirname(current)
            if parent == current:
                return None
            current = parent
        except OSError:
            return None


def remove_tree(path: str) -> None:
    """Delete a file, symlink or directory tree; missing is fine.

    Why chmod on error: blobs are stored read-only and a copy-fallback version dir may hold
    read-only files inside read-only dirs on some filesystems.
    """

    def _onerror(func: Any, failed: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(failed), 0o755)
        func(failed)

    if os.path.islink(path) or os.path.isfile(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    elif os.path.isdir(path):
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=_onerror)  # onerror is deprecated from 3.12
        else:
            shutil.rmtree(path, onerror=_onerror)


class RootLock:
    """An exclusive ``flock`` on ROOT/.lock so two activations never interleave.

    Why: a second control plane (or an impatient user) can start ``activate`` while one is
    running; both would prune and swap ``current`` concurrently. ``on_wait`` is called once if
    we have to wait, so the control plane sees why nothing is happening.
    """

    def __init__(self, root: str, on_wait: Any = None) -> None:
        self.path = os.path.join(root, ".lock")
        self.on_wait = on_wait
        self.fd: Optional[int] = None

    def __enter__(self) -> RootLock:
        import fcntl

        with writing(self.path):
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if self.on_wait is not None:
                self.on_wait(self.path)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None

