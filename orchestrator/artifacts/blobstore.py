"""Content-addressed blob store under EDGEFLEET_HOME/blobs: a file shared by two bundle versions
is stored once, and a blob's name is its proof of content."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from agent.protocol import HASH_CHUNK, is_sha256


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def add_file(self, source: Path) -> tuple[str, int]:
        """Copy ``source`` in while hashing it (one read); return (sha256, size).

        The copy goes to a temp file in the store and is renamed into place, so a crash never
        leaves a blob whose name lies about its content.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                while chunk := src.read(HASH_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            sha = digest.hexdigest()
            final = self.path(sha)
            if final.is_file() and final.stat().st_size == size:
                os.unlink(tmp_name)
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp_name, final)
            return sha, size
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise

    def export(self, sha256: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path(sha256), dest)
