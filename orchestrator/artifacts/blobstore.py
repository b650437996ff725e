"""Content-addressed blob store under EDGEFLEET_HOME/blobs: a file shared by two bundle versions
is stored once, and a blob's name is its proof of content.

Each host has its own store (a cache, on a worker: orchestrator.artifacts.blobfetch fills it
from the control plane or S3 through ``add_verified``); ``mirror``, when given, is told of every
blob added here (the S3 upload when a bucket is configured)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from agent.protocol import HASH_CHUNK, is_sha256
from orchestrator.core.errors import EdgeFleetError

# A temp file nobody wrote to for this long was left by a dead process: a live copy from a
# local file writes every chunk, a live download at least every socket timeout (60 s).
COPY_IDLE_S = 600.0


class BlobIntegrityError(EdgeFleetError):
    """Bytes offered for a blob are not that blob (a flipped byte, a cut-short download)."""


class BlobStore:
    def __init__(self, root: Path, mirror: Callable[[str, Path], None] | None = None) -> None:
        self.root = root
        self.mirror = mirror

    def path(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def add_file(self, source: Path) -> tuple[str, int]:
        """Copy ``source`` in while hashing it (one read); return (sha256, size).

        The copy goes to a temp file in the store, fsynced, and is renamed into place, so a
        crash (or a power cut) never leaves a blob whose name lies about its content. A blob
        already there of the same size is hashed again before it is trusted: one from before
        these fsyncs may be zeros after a power cut, and its name alone would say it is fine.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweep_temps(COPY_IDLE_S)  # what a killed build or fetch left here
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                while chunk := src.read(HASH_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            final = self.path(sha)
            if final.is_file() and final.stat().st_size == size and file_sha256(final) == sha:
                os.unlink(tmp_name)
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp_name, final)
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise
        if self.mirror is not None:
            self.mirror(sha, final)
        return sha, size

    def sweep_temps(self, idle_s: float) -> int:
        """Remove the temp files of downloads and copies that died without cleaning up (the
        process was SIGKILLed, the host lost power): any ``.fetch-*`` or ``.incoming-*`` not
        written to for ``idle_s`` seconds (a killed ``bundle build`` left a model-sized one).
        A live download writes at least once per socket timeout and a live copy once per
        chunk read from a local file, so ``idle_s`` above that never removes one in progress
        (another process's included). The count removed."""
        removed = 0
        cutoff = time.time() - idle_s
        temps = [*self.root.glob(".fetch-*"), *self.root.glob(".incoming-*")] if (
            self.root.is_dir()) else []
        for path in temps:
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # finished or swept by another process meanwhile
                pass
        return removed

    def add_verified(self, sha256: str, size: int, chunks: Iterable[bytes], where: str) -> int:
        """Store ``chunks`` as blob ``sha256`` only if they are exactly its ``size`` bytes with
        that hash; the bytes written (``size``). Written to a temp file in the store, fsynced,
        renamed into place: a download that is cut short, corrupted or interrupted (any
        exception, Ctrl-C included) leaves nothing behind, and the blob is never half there.
        ``where`` names the source in the error."""
        final = self.path(sha256)
        self.root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        got = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".fetch-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    got += len(chunk)
                    if got > size:
                        raise BlobIntegrityError(
                            f"blob {sha256} from {where}: more than its {size} bytes; refused, "
                            "nothing kept")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if got != size:
                raise BlobIntegrityError(
                    f"blob {sha256} from {where}: cut short at {got} of {size} bytes; refused, "
                    "nothing kept")
            if digest.hexdigest() != sha256:
                raise BlobIntegrityError(
                    f"blob {sha256} from {where}: the bytes received hash to "
                    f"{digest.hexdigest()}; refused, nothing kept")
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_name, final)
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise
        return got

    def export(self, sha256: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path(sha256), dest)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
