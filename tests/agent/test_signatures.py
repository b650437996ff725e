"""Pinned signing keys on the device (agent.signatures), through the real zipapp and the real
``ssh-keygen -Y verify``: what a device with pinned keys refuses, before anything is staged, and
that it keeps the previous version active; rotation; rollback protection; a device without
pinned keys unaffected."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import Bundle, agent_env, make_bundle, push, read_state, run_agent, upload
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.protocol import SIGNATURE_NAMESPACE, signed_message
from orchestrator.artifacts import sshsig


def sign(bundle: Bundle, key: Ed25519PrivateKey, name: str) -> dict[str, Any]:
    manifest = bundle.manifest
    message = signed_message(manifest["name"], manifest["version"], bundle.digest)
    return {"key": name, "sshsig": sshsig.sign(key, SIGNATURE_NAMESPACE, message)}


def request(bundle: Bundle, signature: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(bundle.request)
    if signature is not None:
        out["signature"] = signature
    return out


def pin(pyz: Path, root: Path, **keys: Ed25519PrivateKey) -> dict[str, Any]:
    doc = {"keys": [{"name": n, "public_key": sshsig.public_line(k.public_key())}
                    for n, k in keys.items()]}
    return run_agent(pyz, root, "trust", doc).data


def activate(pyz: Path, root: Path, bundle: Bundle, signature: dict[str, Any] | None,
             **kw: Any) -> Any:
    upload(root, bundle)
    return run_agent(pyz, root, "activate", request(bundle, signature), **kw)


def active_version(root: Path) -> str:
    return read_state(root)["history"][-1]["version"]


@pytest.fixture
def release() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_no_pinned_keys_behaves_as_before(pyz: Path, root: Path) -> None:
    push(pyz, root, make_bundle("m", "1", {"model.onnx": b"one"}), plan=False)
    run = activate(pyz, root, make_bundle("m", "2", {"model.onnx": b"two"}), None)
    assert run.data["changed"] and active_version(root) == "2"
    assert not (root / "trust").exists()


def test_pinned_device_refuses_unsigned_wrong_tampered_replayed(
        pyz: Path, root: Path, release: Ed25519PrivateKey) -> None:
    v1 = make_bundle("m", "1", {"model.onnx": b"one"})
    push(pyz, root, v1, plan=False)
    pinned = pin(pyz, root, release=release)
    assert pinned["pinned"] == ["release"]
    allowed = root / "trust" / "allowed_signers"
    assert allowed.read_text().startswith('release namespaces="edgefleet-bundle" ssh-ed25519 ')

    v2 = make_bundle("m", "2", {"model.onnx": b"two"})
    unsigned = activate(pyz, root, v2, None)
    assert unsigned.error["code"] == "signature_refused"
    assert unsigned.error["reason"] == "unsigned"
    assert "m@2 refused: it is not signed" in unsigned.error["message"]
    assert "m@1 stays active" in unsigned.error["message"]

    stranger = Ed25519PrivateKey.generate()
    untrusted = activate(pyz, root, v2, sign(v2, stranger, "other"))
    assert untrusted.error["reason"] == "untrusted_key"
    assert "'other', which is not pinned" in untrusted.error["message"]

    forged = activate(pyz, root, v2, sign(v2, stranger, "release"))  # claims the pinned name
    assert forged.error["reason"] == "bad_signature"

    # Signed, then the manifest changed (digest recomputed so it is self-consistent).
    signature = sign(v2, release, "release")
    tampered = make_bundle("m", "2", {"model.onnx": b"evil"})
    assert tampered.digest != v2.digest
    refused = activate(pyz, root, tampered, signature)
    assert refused.error["reason"] == "bad_signature"
    assert "does not verify against the pinned key 'release'" in refused.error["message"]

    # A signature of m@2 attached to another bundle's version with the same files.
    replay = make_bundle("m", "5", {"model.onnx": b"two"})
    assert activate(pyz, root, replay, signature).error["reason"] == "bad_signature"
    other = make_bundle("n", "2", {"model.onnx": b"two"})
    assert activate(pyz, root, other, signature).error["reason"] == "bad_signature"

    assert active_version(root) == "1"
    assert (root / "current" / "model.onnx").read_bytes() == b"one"
    assert len(read_state(root)["history"]) == 1
    assert [p.name for p in (root / "versions").iterdir()] == [
        read_state(root)["history"][0]["dir"].split("/")[1]]  # nothing staged was left

    good = activate(pyz, root, v2, signature)
    assert good.data["changed"] and good.data["active"]["signed_by"] == "release"
    assert (root / "current" / "model.onnx").read_bytes() == b"two"


def test_plan_refuses_before_anything_is_sent(pyz: Path, root: Path,
                                              release: Ed25519PrivateKey) -> None:
    pin(pyz, root, release=release)
    bundle = make_bundle("m", "1", {"model.onnx": b"one"})
    refused = run_agent(pyz, root, "plan", request(bundle, None))
    assert refused.error["reason"] == "unsigned"
    planned = run_agent(pyz, root, "plan", request(bundle, sign(bundle, release, "release")))
    assert planned.data["signature"] == {"key": "release"}
    assert planned.data["missing"] == [bundle.sha_of("model.onnx")]


def test_rotation_two_keys_pinned(pyz: Path, root: Path, release: Ed25519PrivateKey) -> None:
    new = Ed25519PrivateKey.generate()
    pin(pyz, root, old=release, new=new)
    v1 = make_bundle("m", "1", {"model.onnx": b"one"})
    v2 = make_bundle("m", "2", {"model.onnx": b"two"})
    assert activate(pyz, root, v1, sign(v1, release, "old")).data["changed"]
    assert activate(pyz, root, v2, sign(v2, new, "new")).data["changed"]
    # The old key retired: what it signed is refused from now on.
    pin(pyz, root, new=new)
    v3 = make_bundle("m", "3", {"model.onnx": b"three"})
    assert activate(pyz, root, v3, sign(v3, release, "old")).error["reason"] == "untrusted_key"
    assert active_version(root) == "2"


def test_older_signed_version_refused_unless_rollback(pyz: Path, root: Path,
                                                      release: Ed25519PrivateKey) -> None:
    pin(pyz, root, release=release)
    bundles = {v: make_bundle("m", v, {"model.onnx": v.encode()}) for v in ("3", "4", "5")}
    sigs = {v: sign(b, release, "release") for v, b in bundles.items()}
    for v in ("3", "5"):
        assert activate(pyz, root, bundles[v], sigs[v]).ok
    older = activate(pyz, root, bundles["4"], sigs["4"])
    assert older.error["reason"] == "older_version" and older.error["committed"] == "5"
    assert "older than m@5, the version committed on this device" in older.error["message"]
    # Via another bundle name in between: the floor is per name, not the active entry's.
    n1 = make_bundle("n", "1", {"model.onnx": b"n"})
    assert activate(pyz, root, n1, sign(n1, release, "release")).ok
    assert activate(pyz, root, bundles["3"], sigs["3"]).error["reason"] == "older_version"

    rolled = run_agent(pyz, root, "rollback", {}).data  # n@1 -> m@5
    assert rolled["active"]["version"] == "5"
    rolled = run_agent(pyz, root, "rollback", {}).data  # m@5 -> m@3: asked for, so allowed
    assert rolled["active"]["version"] == "3"
    # The floor followed the rollback down: m@4 is not older than the committed m@3.
    assert activate(pyz, root, bundles["4"], sigs["4"]).data["changed"]


def test_unpin_and_bad_trust_input(pyz: Path, root: Path, release: Ed25519PrivateKey) -> None:
    pin(pyz, root, release=release)
    bad = run_agent(pyz, root, "trust", {"keys": [{"name": "x", "public_key": "ssh-rsa AAAA"}]})
    assert bad.error["code"] == "bad_input"
    assert (root / "trust" / "allowed_signers").exists()  # unchanged by the refused call
    assert run_agent(pyz, root, "trust", {"keys": []}).data["pinned"] == []
    assert activate(pyz, root, make_bundle("m", "1", {"a": b"1"}), None).ok


def test_pinning_refused_without_a_verifier(pyz: Path, root: Path,
                                            release: Ed25519PrivateKey,
                                            tmp_path: Path) -> None:
    """A device whose ssh-keygen predates -Y (OpenSSH < 8.1) cannot verify: pinning says so
    instead of leaving a device that refuses every push."""
    old = tmp_path / "ssh-keygen"
    old.write_text("#!/bin/sh\necho 'ssh-keygen: unknown option -- Y' >&2\nexit 1\n")
    old.chmod(old.stat().st_mode | stat.S_IXUSR)
    env = agent_env(EDGEFLEET_SSH_KEYGEN=str(old))
    doc = {"keys": [{"name": "release", "public_key": sshsig.public_line(release.public_key())}]}
    refused = run_agent(pyz, root, "trust", doc, env=env)
    assert refused.error["reason"] == "no_verifier"
    assert "OpenSSH >= 8.1" in refused.error["message"]
    assert not (root / "trust" / "allowed_signers").exists()
    # Pinned where OpenSSH could verify, then OpenSSH replaced by an old one: refused, why said.
    pin(pyz, root, release=release)
    bundle = make_bundle("m", "1", {"a": b"1"})
    upload(root, bundle)
    later = run_agent(pyz, root, "activate", request(bundle, sign(bundle, release, "release")),
                      env=env)
    assert later.error["reason"] == "no_verifier"
    assert "m@1 refused: cannot verify the signature" in later.error["message"]



def test_rollback_under_pinned_keys_goes_only_to_signed_versions(
        pyz: Path, root: Path, release: Ed25519PrivateKey) -> None:
    """Rollback waives the version floor, never the signature: a version that arrived unsigned
    (or signed by a key since retired) is skipped; one signed before the keys were pinned is
    checked against them now, from the signature it arrived with."""
    v1 = make_bundle("m", "1", {"model.onnx": b"one"})
    v2 = make_bundle("m", "2", {"model.onnx": b"two"})
    v3 = make_bundle("m", "3", {"model.onnx": b"three"})
    assert activate(pyz, root, v1, None).ok  # no keys pinned yet: unsigned is fine
    assert activate(pyz, root, v2, sign(v2, release, "release")).ok
    pin(pyz, root, release=release)
    assert activate(pyz, root, v3, sign(v3, release, "release")).ok
    assert sorted(p.name for p in (root / "trust" / "signatures").iterdir()) == sorted(
        f"{b.digest}.json" for b in (v2, v3))

    assert run_agent(pyz, root, "rollback", {}).data["active"]["version"] == "2"
    refused = run_agent(pyz, root, "rollback", {})
    assert refused.error["code"] == "nothing_to_roll_back"
    assert "m@1: not signed" in refused.error["message"]
    assert active_version(root) == "2"

    # The key retired: what it signed is no rollback target any more either.
    assert activate(pyz, root, v3, sign(v3, release, "release")).ok
    newer = Ed25519PrivateKey.generate()
    pin(pyz, root, new=newer)
    retired = run_agent(pyz, root, "rollback", {})
    assert "m@2: signed by 'release', which is no longer pinned" in retired.error["message"]
    assert active_version(root) == "3"


def test_malformed_signature_is_bad_input(pyz: Path, root: Path) -> None:
    bundle = make_bundle("m", "1", {"a": b"1"})
    for bad in ({"key": "-x", "sshsig": "-----BEGIN SSH SIGNATURE-----"},
                {"key": "k", "sshsig": "-----BEGIN SSH SIGNATURE-----\u00e9"},
                {"key": "k", "sshsig": "x" * 20000}, "text"):
        run = run_agent(pyz, root, "plan", request(bundle, bad))  # type: ignore[arg-type]
        assert run.error["code"] == "bad_input", bad


def test_a_signature_that_cannot_be_kept_fails_the_push_before_it_commits(
        pyz: Path, root: Path, release: Ed25519PrivateKey) -> None:
    """The version's signature is written before the activation begins: where it cannot be
    (here ``trust/signatures`` is a file, as a full disk or a broken SD card would refuse it),
    the push fails with the previous version active. Before, it was written after the commit,
    and the push reported a failure while the new version was already live."""
    push(pyz, root, make_bundle("m", "1", {"model.onnx": b"one"}), plan=False)
    (root / "trust").mkdir()
    (root / "trust" / "signatures").write_text("not a directory")
    second = make_bundle("m", "2", {"model.onnx": b"two"})
    run = activate(pyz, root, second, sign(second, release, "release-2026"))
    assert not run.ok
    assert active_version(root) == "1"
    assert read_state(root).get("pending") is None
