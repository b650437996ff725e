"""Shared blobs through an S3-compatible store (issue 14 item 4), against a real S3 HTTP server
(moto's, tests/s3_server.py): ``bundle build`` on host A uploads each blob, host B (empty blob
store, its own key, no control plane URL) fetches them from the bucket, hash-verified, and
pushes to a real sshd device; a corrupted object is refused and nothing is kept."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from tests.s3_server import SECRET_KEY, S3Server
from tests.s3_server import s3 as s3  # noqa: F401 - the fixture, by name

from ..conftest import Cli
from .sshd import write_inventory
from .test_push_e2e import model_folder
from .test_shared_state import Pushed, blobs_of, sha256


def test_worker_fetches_blobs_from_s3_and_pushes(cli: Cli, tmp_path: Path, sshd_factory,
                                                  s3: S3Server) -> None:
    (host,) = sshd_factory(1)
    cli("inventory", "sync", write_inventory(tmp_path / "inventory.yml", [host]), "--json")
    cli("devices", "trust", "pis", "--json")
    assert cli("agent", "install", "pis", "--json").json[0]["state"] == "installed"
    bundle = cli("bundle", "build", model_folder(tmp_path, 0), "--name", "first-crack",
                 "--json").json
    shas = sorted({f["sha256"] for f in bundle["files"]})
    assert s3.keys() == [f"blobs/{sha}" for sha in shas]  # uploaded as they were built

    home_b, user_b = tmp_path / "host-b", tmp_path / "host-b-user"
    user_b.mkdir()
    key = home_b / "keys" / "id_ed25519"
    key.parent.mkdir(parents=True)
    shutil.copy(host.key_file, key)
    env = dict(os.environ, EDGEFLEET_HOME=str(home_b), HOME=str(user_b),
               EDGEFLEET_SSH_KEY_FILE=str(key))
    env.setdefault("DATABASE_URL", f"sqlite:///{cli.home / 'edgefleet.db'}")
    env.pop("EDGEFLEET_CONTROL_PLANE_URL", None)

    model = next(f for f in bundle["files"] if f["path"] == "model.onnx")
    client = s3.client()
    original = client.get_object(Bucket=s3.bucket, Key=f"blobs/{model['sha256']}")["Body"].read()
    flipped = bytearray(original)
    flipped[-1] ^= 0x80
    client.put_object(Bucket=s3.bucket, Key=f"blobs/{model['sha256']}", Body=bytes(flipped))
    failed = Pushed(env)
    assert failed.returncode != 0, failed.text
    assert f"blob {model['sha256']} from s3://{s3.bucket}/blobs/" in failed.text
    assert "refused, nothing kept" in failed.text
    assert SECRET_KEY not in failed.text
    assert model["sha256"] not in blobs_of(home_b)
    assert not [n for n in blobs_of(home_b) if n.startswith(".")]

    client.put_object(Bucket=s3.bucket, Key=f"blobs/{model['sha256']}", Body=original)
    pushed = Pushed(env)
    assert pushed.returncode == 0, pushed.text
    assert "active" in pushed.stdout
    for entry in bundle["files"]:
        assert sha256(host.root / "current" / entry["path"]) == entry["sha256"]
    assert blobs_of(home_b) == shas


def test_missing_object_is_named_without_credentials(cli: Cli, tmp_path: Path,
                                                     s3: S3Server) -> None:
    """A bucket that lacks the blob: the error names the blob, the bucket and S3's code."""
    from orchestrator.artifacts.blobfetch import BlobFetchError, Needed, blob_store, ensure_local
    from orchestrator.core.config import Settings

    settings = Settings(home=tmp_path / "host-c")
    store = blob_store(settings)
    wanted = Needed("ab" * 32, 10, "model.onnx of x@1")
    try:
        ensure_local(settings, store, [wanted])
    except BlobFetchError as exc:
        message = str(exc)
    else:
        raise AssertionError("a missing object was not refused")
    assert message == (f"model.onnx of x@1: cannot fetch blob {'ab' * 32} at "
                       f"s3://{s3.bucket}/blobs/: NoSuchKey")
    assert SECRET_KEY not in message and blobs_of(settings.home) == []


def test_publish_back_fills_the_bucket_with_blobs_built_before_it_was_set(
        cli: Cli, tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bundles built before EDGEFLEET_S3_BUCKET was set are not in the bucket: ``bundle
    publish`` uploads their blobs (the same bytes), once; a blob this host lacks is named and
    the command fails, having uploaded the rest."""
    bucket = os.environ["EDGEFLEET_S3_BUCKET"]
    monkeypatch.delenv("EDGEFLEET_S3_BUCKET")
    first = cli("bundle", "build", model_folder(tmp_path, 0), "--name", "first-crack",
                "--json").json
    second = cli("bundle", "build", model_folder(tmp_path, 1), "--name", "other",
                 "--json").json
    assert s3.keys() == []
    monkeypatch.setenv("EDGEFLEET_S3_BUCKET", bucket)

    only = cli("bundle", "publish", "first-crack", "--json").json
    shas = sorted({f["sha256"] for f in first["files"]})
    assert sorted(only["uploaded"]) == shas and only["present"] == only["missing"] == []
    assert s3.keys() == [f"blobs/{sha}" for sha in shas]
    model = next(f for f in first["files"] if f["path"] == "model.onnx")
    stored = s3.client().get_object(Bucket=s3.bucket, Key=f"blobs/{model['sha256']}")
    assert hashlib.sha256(stored["Body"].read()).hexdigest() == model["sha256"]

    everything = cli("bundle", "publish", "--json").json
    all_shas = shas + [f["sha256"] for f in second["files"]]
    assert sorted(everything["present"]) == shas  # not uploaded twice
    assert sorted(everything["uploaded"]) == sorted(set(all_shas) - set(shas))

    lost = next(f for f in second["files"] if f["path"] == "model.onnx")
    client = s3.client()
    client.delete_object(Bucket=s3.bucket, Key=f"blobs/{lost['sha256']}")
    (cli.home / "blobs" / lost["sha256"][:2] / lost["sha256"]).unlink()
    failed = cli("bundle", "publish", "other", "--json", expect=1)
    assert failed.json["missing"] == [{"sha256": lost["sha256"],
                                       "what": f"model.onnx of {second['name']}@1"}]
