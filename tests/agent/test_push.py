"""plan / activate / status through the real zipapp: happy path, caching, corruption, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path

import pytest
from agent_helpers import Bundle, make_bundle, push, read_state, run_agent, upload

from agent.protocol import canonical_json, manifest_digest

HOUR_NS = 3600 * 10**9


def model_bundle(version: str = "1.0", weights: bytes = b"weights-v1" * 1000) -> Bundle:
    return make_bundle(
        "bark-detector",
        version,
        {"model.onnx": weights, "labels/classes.txt": b"bark\nquiet\n", "README": b"hi"},
    )


def hashing_runs(run) -> list[str]:
    """Paths that were actually hashed (each hash starts with a done=0 event)."""
    return [e["path"] for e in run.events if e["event"] == "verifying" and e["done"] == 0]


def age_files(*paths: Path) -> None:
    """Backdate mtimes so the verification cache may persist them (it skips racy, fresh files)."""
    old = time.time_ns() - HOUR_NS
    for path in paths:
        os.utime(path, ns=(old, old), follow_symlinks=False)


def test_plan_upload_activate_then_already_active(pyz: Path, root: Path) -> None:
    bundle = model_bundle()
    planned = run_agent(pyz, root, "plan", bundle.request).data
    assert planned["root"] == str(root)
    assert planned["incoming"] == str(root / "incoming") and (root / "incoming").is_dir()
    assert sorted(planned["missing"]) == sorted(bundle.contents)
    assert planned["missing_bytes"] == sum(len(b) for b in bundle.contents.values())
    assert planned["present"] == [] and planned["corrupt"] == []
    assert planned["active"] is None and planned["already_active"] is False
    assert planned["disk_free_bytes"] > 0
    assert isinstance(planned["onnxruntime"], str)

    upload(root, bundle)
    run = run_agent(pyz, root, "activate", bundle.request)
    data = run.data
    assert data["changed"] is True and data["previous"] is None
    assert data["verified_files"] == 3
    assert data["active"]["digest"] == bundle.digest
    assert data["active"]["name"] == "bark-detector" and data["active"]["version"] == "1.0"
    # each blob hashed exactly once: the staged hardlinks are trusted through the shared inode
    assert sorted(hashing_runs(run)) == ["README", "labels/classes.txt", "model.onnx"]
    finals = {e["path"]: (e["done"], e["total"]) for e in run.events
              if e["event"] == "verifying" and e["done"] > 0}
    assert finals["model.onnx"] == (10000, 10000)

    link = os.readlink(root / "current")
    assert link == data["dir"] and link.startswith("versions/" + bundle.digest[:16] + "-")
    assert (root / "current" / "model.onnx").read_bytes() == b"weights-v1" * 1000
    assert (root / "current" / "labels" / "classes.txt").read_bytes() == b"bark\nquiet\n"
    stored = (root / "current" / ".edgefleet-manifest.json").read_bytes()
    assert stored == canonical_json(bundle.manifest)
    assert list((root / "incoming").iterdir()) == []
    for sha in bundle.contents:
        blob = root / "blobs" / sha
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha
        assert not blob.stat().st_mode & stat.S_IWUSR  # read-only
    model = root / "current" / "model.onnx"
    assert model.stat().st_ino == (root / "blobs" / bundle.sha_of("model.onnx")).stat().st_ino
    assert [e["digest"] for e in read_state(root)["history"]] == [bundle.digest]

    again = run_agent(pyz, root, "plan", bundle.request).data
    assert again["already_active"] is True and again["missing"] == []
    assert sorted(again["present"]) == sorted(bundle.contents)
    assert again["active"]["digest"] == bundle.digest

    noop = run_agent(pyz, root, "activate", bundle.request).data
    assert noop["changed"] is False and noop["dir"] == data["dir"]
    assert os.readlink(root / "current") == data["dir"]
    assert len(read_state(root)["history"]) == 1

    status = run_agent(pyz, root, "status").data
    assert status["root"] == str(root)
    assert status["active"]["dir"] == data["dir"]
    assert [e["digest"] for e in status["history"]] == [bundle.digest]


def test_duplicate_content_is_one_blob(pyz: Path, root: Path) -> None:
    bundle = make_bundle("dup", "1", {"a.bin": b"same", "b/a.bin": b"same"})
    planned = run_agent(pyz, root, "plan", bundle.request).data
    assert planned["missing"] == [hashlib.sha256(b"same").hexdigest()]
    assert planned["missing_bytes"] == 4
    push(pyz, root, bundle, plan=False)
    assert (root / "current" / "b" / "a.bin").read_bytes() == b"same"


def test_cache_trusts_unchanged_blobs_and_plan_deletes_corrupt_ones(pyz: Path, root: Path) -> None:
    bundle = model_bundle()
    push(pyz, root, bundle, plan=False)
    model_sha = bundle.sha_of("model.onnx")
    age_files(*(root / "blobs").iterdir())

    first = run_agent(pyz, root, "plan", bundle.request)
    assert len(hashing_runs(first)) == 3  # mtimes changed (backdated): re-hashed, now cached
    cache = json.loads((root / "cache" / "hashes.json").read_text())
    blob_stat = (root / "blobs" / model_sha).stat()
    assert cache[f"{blob_stat.st_dev}:{blob_stat.st_ino}"][3] == model_sha
    second = run_agent(pyz, root, "plan", bundle.request)
    assert hashing_runs(second) == []  # nothing changed: nothing hashed
    assert second.data["already_active"] is True

    blob = root / "blobs" / model_sha
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF  # same size, different bytes, fresh mtime
    blob.write_bytes(bytes(data))
    planned = run_agent(pyz, root, "plan", bundle.request).data
    assert planned["corrupt"] == [model_sha]
    assert model_sha in planned["missing"] and model_sha not in planned["present"]
    assert not blob.exists()
    # the active version's file was the same inode: it no longer verifies either
    assert planned["already_active"] is False

    upload(root, bundle, [model_sha])
    fixed = run_agent(pyz, root, "activate", bundle.request).data
    assert fixed["changed"] is True
    assert (root / "current" / "model.onnx").read_bytes() == b"weights-v1" * 1000


def test_size_change_is_never_trusted_even_with_the_old_mtime(pyz: Path, root: Path) -> None:
    bundle = model_bundle()
    push(pyz, root, bundle, plan=False)
    sha = bundle.sha_of("README")
    blob = root / "blobs" / sha
    age_files(blob)
    run_agent(pyz, root, "plan", bundle.request)  # caches the aged blob
    before = blob.stat()
    blob.chmod(0o644)
    with blob.open("ab") as handle:
        handle.write(b"!")
    os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert blob.stat().st_mtime_ns == before.st_mtime_ns
    planned = run_agent(pyz, root, "plan", bundle.request).data
    assert planned["corrupt"] == [sha]


def test_bad_upload_fails_verification_and_keeps_previous_version(pyz: Path, root: Path) -> None:
    v1 = model_bundle("1.0")
    push(pyz, root, v1, plan=False)
    state_before = (root / "state.json").read_bytes()
    current_before = os.readlink(root / "current")

    v2 = model_bundle("2.0", weights=b"weights-v2" * 1000)
    upload(root, v2)
    bad_sha = v2.sha_of("model.onnx")
    part = root / "incoming" / f"{bad_sha}.part"
    part.write_bytes(b"truncated upload")
    error = run_agent(pyz, root, "activate", v2.request).error
    assert error["code"] == "verify_failed"
    assert error["path"] == "model.onnx" and error["paths"] == ["model.onnx"]
    assert error["expected"] == bad_sha
    assert error["actual"] == hashlib.sha256(b"truncated upload").hexdigest()
    assert "model.onnx" in error["message"]
    assert not part.exists()
    assert os.readlink(root / "current") == current_before
    assert (root / "state.json").read_bytes() == state_before
    assert [p.name for p in (root / "versions").iterdir()] == [current_before.split("/")[1]]


def test_activate_without_upload_names_the_missing_file(pyz: Path, root: Path) -> None:
    bundle = model_bundle()
    upload(root, bundle, [bundle.sha_of("README")])
    error = run_agent(pyz, root, "activate", bundle.request).error
    assert error["code"] == "missing_blob"
    assert error["path"] in ("labels/classes.txt", "model.onnx")
    assert error["path"] in error["message"]
    assert not (root / "current").exists() and not (root / "state.json").exists()


def test_digest_mismatch_changes_nothing(pyz: Path, root: Path) -> None:
    bundle = model_bundle()
    tampered = dict(bundle.manifest, version="9.9")
    for command in ("plan", "activate"):
        error = run_agent(pyz, root, command, {"manifest": tampered,
                                               "digest": bundle.digest}).error
        assert error["code"] == "digest_mismatch"
        assert error["expected"] == bundle.digest
        assert error["actual"] == manifest_digest(tampered)
    assert not root.exists()


@pytest.mark.parametrize(
    "bad_path",
    ["../x", "/etc/passwd", "a/./b", "a//b", ".edgefleet-manifest.json", "lib"],
)
@pytest.mark.parametrize("command", ["plan", "activate"])
def test_unsafe_paths_are_rejected_before_touching_disk(
    pyz: Path, tmp_path: Path, bad_path: str, command: str
) -> None:
    root = tmp_path / "r"
    bundle = make_bundle("evil", "1", {bad_path: b"x", "lib/ok.txt": b"y"})
    error = run_agent(pyz, root, command, bundle.request).error
    assert error["code"] == "unsafe_path"
    assert repr(bad_path) in error["message"]
    assert not root.exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("stdin", "needle"),
    [(b"", "got nothing"), (b"{not json", "not one JSON document"),
     ({"manifest": [], "digest": "x"}, "expected"), ({"manifest": {}, "digest": "XYZ"}, "hex")],
)
def test_bad_input(pyz: Path, root: Path, stdin: object, needle: str) -> None:
    error = run_agent(pyz, root, "plan", stdin).error
    assert error["code"] == "bad_input" and needle in error["message"]


def test_manifest_with_no_files_is_rejected(pyz: Path, root: Path) -> None:
    manifest = {"name": "x", "version": "1", "files": []}
    run = run_agent(pyz, root, "plan", {"manifest": manifest, "digest": manifest_digest(manifest)})
    assert run.error["code"] == "unsafe_path" and "no files" in run.error["message"]
