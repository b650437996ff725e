"""A staged version's (or dataset's) nested folders are fsynced before it is renamed into place.

Why: a file's data fsync does not make its directory entry durable; after a power cut a folder
whose entries were never fsynced may come back empty. ``build_dir`` used to fsync the staging
dir's top only, so ``labels/classes.txt`` of a verified, active version could be gone after the
reboot. A power cut cannot be injected on this machine; what is checked is the syscall order
that makes the outcome durable: every folder below the staging dir, deepest first, then the
staging dir, all before the rename."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import make_bundle

from agent import activation
from agent.store import Store, parse_request


def test_every_nested_folder_is_fsynced_before_the_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = make_bundle("kws", "1", {"model.onnx": b"m" * 100, "labels/classes.txt": b"a\nb\n",
                                      "tok/en/vocab.json": b"{}", "tok/en/merges.txt": b"x"})
    store = Store(str(tmp_path / "root"), lambda event: None)
    store.ensure_layout()
    for sha, data in bundle.contents.items():
        Path(store.blob_path(sha)).write_bytes(data)
    synced: list[str] = []
    real_fsync_dir, real_rename = activation.fsync_dir, os.rename

    def fsync_dir(path: str) -> None:
        synced.append(path)
        real_fsync_dir(path)

    def rename(src: Any, dst: Any) -> None:
        synced.append(f"rename {src}")
        real_rename(src, dst)

    monkeypatch.setattr(activation, "fsync_dir", fsync_dir)
    monkeypatch.setattr(activation.os, "rename", rename)
    final = os.path.join(store.versions, "v1")
    activation.build_dir(store, parse_request(bundle.request), store.versions, "manifest.json",
                         final, "bundle")

    rename_at = next(i for i, s in enumerate(synced) if s.startswith("rename "))
    staging = synced[rename_at - 1]
    assert synced[rename_at] == f"rename {staging}"
    relative = [os.path.relpath(s, staging) for s in synced[:rename_at]]
    assert relative == ["tok/en", "labels", "tok", "."]  # deepest first, staging last
    assert synced[rename_at + 1:] == [store.versions]  # then the rename's own directory
    assert (Path(final) / "tok/en/merges.txt").read_bytes() == b"x"
