"""SSHSIG signatures (OpenSSH's PROTOCOL.sshsig) with Ed25519 keys, made and checked in Python.

Why SSHSIG: the device verifies with ``ssh-keygen -Y verify``, which every device running sshd
has (OpenSSH >= 8.1), so the agent needs no crypto library. Why not shell out to
``ssh-keygen -Y sign`` here: the ``cryptography`` package (already installed, paramiko needs it)
signs in-process, takes a passphrase without a terminal, and lets ``bundle show`` check a
signature without a subprocess. tests/unit/artifacts/test_sshsig.py checks both directions
against the real ssh-keygen.

Wire format (PROTOCOL.sshsig)::

    signature blob = "SSHSIG" uint32(1) string(publickey) string(namespace) string(reserved="")
                     string(hash_algorithm) string(signature)
    signed data    = "SSHSIG" string(namespace) string(reserved="") string(hash_algorithm)
                     string(H(message))

armoured as base64 between ``-----BEGIN SSH SIGNATURE-----`` and ``-----END SSH SIGNATURE-----``.
"""

from __future__ import annotations

import base64
import hashlib
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MAGIC = b"SSHSIG"
VERSION = 1
HASH = "sha512"
KEY_TYPE = b"ssh-ed25519"
BEGIN = "-----BEGIN SSH SIGNATURE-----"
END = "-----END SSH SIGNATURE-----"
LINE = 70  # ssh-keygen wraps the base64 at 70 columns


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _read_string(blob: bytes, at: int) -> tuple[bytes, int]:
    if at + 4 > len(blob):
        raise ValueError("truncated SSHSIG blob")
    (size,) = struct.unpack(">I", blob[at:at + 4])
    end = at + 4 + size
    if end > len(blob):
        raise ValueError("truncated SSHSIG blob")
    return blob[at + 4:end], end


def public_blob(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return _string(KEY_TYPE) + _string(raw)


def public_line(key: Ed25519PublicKey) -> str:
    """``ssh-ed25519 BASE64``: the authorized_keys / allowed_signers form."""
    return f"{KEY_TYPE.decode()} {base64.b64encode(public_blob(key)).decode()}"


def fingerprint(public_key_line: str) -> str:
    """``SHA256:...`` as ``ssh-keygen -l`` prints it."""
    blob = base64.b64decode(public_key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _signed_data(namespace: str, message: bytes) -> bytes:
    return (MAGIC + _string(namespace.encode()) + _string(b"") + _string(HASH.encode())
            + _string(hashlib.sha512(message).digest()))


def sign(key: Ed25519PrivateKey, namespace: str, message: bytes) -> str:
    """The armoured SSHSIG signature of ``message`` in ``namespace``."""
    raw = key.sign(_signed_data(namespace, message))
    blob = (MAGIC + struct.pack(">I", VERSION) + _string(public_blob(key.public_key()))
            + _string(namespace.encode()) + _string(b"") + _string(HASH.encode())
            + _string(_string(KEY_TYPE) + _string(raw)))
    text = base64.b64encode(blob).decode()
    return "\n".join([BEGIN, *(text[i:i + LINE] for i in range(0, len(text), LINE)), END]) + "\n"


def verify(public_key_line: str, namespace: str, message: bytes, armored: str) -> str | None:
    """None when ``armored`` is ``public_key_line``'s signature of ``message`` in
    ``namespace``, else why not (a reason a person can act on)."""
    try:
        body = armored.strip()
        if not body.startswith(BEGIN) or not body.endswith(END):
            return "not an armoured SSH signature"
        blob = base64.b64decode("".join(body[len(BEGIN):-len(END)].split()), validate=True)
        if blob[:6] != MAGIC or struct.unpack(">I", blob[6:10])[0] != VERSION:
            return "not an SSHSIG v1 signature"
        key, at = _read_string(blob, 10)
        namespace_got, at = _read_string(blob, at)
        _, at = _read_string(blob, at)
        hash_alg, at = _read_string(blob, at)
        sig, at = _read_string(blob, at)
        sig_type, inner = _read_string(sig, 0)
        raw, _ = _read_string(sig, inner)
    except (ValueError, struct.error) as exc:
        return f"malformed signature: {exc}"
    if key != base64.b64decode(public_key_line.split()[1]):
        return "made by another key"
    if namespace_got != namespace.encode():
        return f"made for namespace {namespace_got.decode(errors='replace')!r}"
    if hash_alg not in (b"sha512", b"sha256") or sig_type != KEY_TYPE:
        return "unsupported hash or key type"
    digest = hashlib.new(hash_alg.decode(), message).digest()
    data = (MAGIC + _string(namespace.encode()) + _string(b"") + _string(hash_alg)
            + _string(digest))
    pub_raw, _ = _read_string(key, _read_string(key, 0)[1])
    try:
        Ed25519PublicKey.from_public_bytes(pub_raw).verify(raw, data)
    except (InvalidSignature, ValueError):
        return "does not match the signed name, version and digest"
    return None
