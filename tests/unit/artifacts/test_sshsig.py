"""SSHSIG made in Python (orchestrator.artifacts.sshsig) against the real ``ssh-keygen -Y``:
what the control plane signs, the device's OpenSSH verifies, and the other way round."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.protocol import SIGNATURE_NAMESPACE, signed_message
from orchestrator.artifacts import sshsig

MESSAGE = signed_message("first-crack", "3", "ab" * 32)


def keygen_verify(tmp_path: Path, public: str, signature: str, message: bytes,
                  namespace: str = SIGNATURE_NAMESPACE) -> subprocess.CompletedProcess[bytes]:
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f'release namespaces="{SIGNATURE_NAMESPACE}" {public}\n')
    sig = tmp_path / "bundle.sig"
    sig.write_text(signature)
    return subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "release",
                           "-n", namespace, "-s", str(sig)], input=message,
                          capture_output=True, check=False)


def test_ssh_keygen_verifies_what_we_sign(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    public = sshsig.public_line(key.public_key())
    signature = sshsig.sign(key, SIGNATURE_NAMESPACE, MESSAGE)
    good = keygen_verify(tmp_path, public, signature, MESSAGE)
    assert good.returncode == 0, good.stderr
    assert sshsig.fingerprint(public).encode() in good.stdout  # ssh-keygen -l's form
    other = signed_message("first-crack", "5", "ab" * 32)  # the same signature, replayed
    assert keygen_verify(tmp_path, public, signature, other).returncode != 0
    assert keygen_verify(tmp_path, public, signature, MESSAGE, "file").returncode != 0
    assert sshsig.verify(public, SIGNATURE_NAMESPACE, MESSAGE, signature) is None
    assert sshsig.verify(public, SIGNATURE_NAMESPACE, other, signature) == (
        "does not match the signed name, version and digest")
    stranger = sshsig.public_line(Ed25519PrivateKey.generate().public_key())
    assert sshsig.verify(stranger, SIGNATURE_NAMESPACE, MESSAGE, signature) == (
        "made by another key")
    lines = signature.splitlines()
    truncated = "\n".join([lines[0], lines[1][:40], lines[-1]])
    assert sshsig.verify(public, SIGNATURE_NAMESPACE, MESSAGE, truncated).startswith(
        "malformed signature")
    assert sshsig.verify(public, SIGNATURE_NAMESPACE, MESSAGE, "junk") == (
        "not an armoured SSH signature")


def test_we_verify_what_ssh_keygen_signs(tmp_path: Path) -> None:
    """Our key files are plain OpenSSH keys: ``ssh-keygen -Y sign`` can sign with them."""
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "release"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.OpenSSH,
                                       serialization.BestAvailableEncryption(b"pw")))
    path.chmod(0o600)
    data = tmp_path / "message"
    data.write_bytes(MESSAGE)
    subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(path), "-P", "pw", "-n",
                    SIGNATURE_NAMESPACE, str(data)], check=True, capture_output=True)
    signature = (tmp_path / "message.sig").read_text()
    public = sshsig.public_line(key.public_key())
    assert sshsig.verify(public, SIGNATURE_NAMESPACE, MESSAGE, signature) is None
    assert sshsig.verify(public, "other", MESSAGE, signature) == (
        "made for namespace 'edgefleet-bundle'")
