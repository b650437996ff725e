"""The blob store keeps no lie under a blob's name and no litter from dead processes."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from orchestrator.artifacts.blobstore import COPY_IDLE_S, BlobStore


def test_a_blob_of_the_right_size_but_wrong_bytes_is_replaced(tmp_path: Path) -> None:
    """A blob written before add_file fsynced, then a power cut: zeros of the right size under
    the right name. add_file used to trust any same-size file there; it hashes it now."""
    store = BlobStore(tmp_path / "blobs")
    model = tmp_path / "model.onnx"
    model.write_bytes(os.urandom(300_000))
    sha, size = store.add_file(model)
    store.path(sha).write_bytes(b"\0" * size)  # the power cut's leftover
    assert store.add_file(model) == (sha, size)
    assert hashlib.sha256(store.path(sha).read_bytes()).hexdigest() == sha


def test_temp_files_of_dead_processes_are_swept_not_live_ones(tmp_path: Path) -> None:
    """A ``bundle build`` SIGKILLed mid-copy left a model-sized ``.incoming-*`` for ever (only
    ``.fetch-*`` were swept, and only when a worker fetched)."""
    store = BlobStore(tmp_path / "blobs")
    store.root.mkdir(parents=True)
    old = time.time() - COPY_IDLE_S - 60
    dead = [store.root / ".incoming-dead1", store.root / ".fetch-dead2"]
    live = [store.root / ".incoming-live1", store.root / ".fetch-live2"]
    for path in dead + live:
        path.write_bytes(b"x" * 1000)
    for path in dead:
        os.utime(path, (old, old))
    model = tmp_path / "model.onnx"
    model.write_bytes(b"model")
    store.add_file(model)
    assert [p.exists() for p in dead + live] == [False, False, True, True]
