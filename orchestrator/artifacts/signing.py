"""Bundle-signing keys and bundle signatures (issue 15).

Why: a device with pinned keys (agent.signatures) runs only what one of them signed, so a
control plane whose DB or blob store someone else wrote cannot make it run anything else. For
that the private key must be out of the DB's reach: it is an OpenSSH Ed25519 key file under
``EDGEFLEET_HOME/keys/signing/NAME`` (mode 0600, optionally passphrase-protected; usable with
``ssh-keygen -Y sign`` too), and the DB keeps only the public half and fingerprint. Nothing here
returns or logs the private key or the passphrase.

A signature covers ``agent.protocol.signed_message(name, version, digest)``: the manifest digest
(hence every file) with the bundle's name and version, so it cannot be moved onto another
bundle or version. Each operation writes its audit event (``key.create``, ``bundle.sign``) in
its own transaction.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, col, select

from agent.protocol import SIGNATURE_NAMESPACE, is_key_name, manifest_digest, signed_message
from orchestrator.access import audit
from orchestrator.artifacts import sshsig
from orchestrator.core.config import Settings
from orchestrator.core.errors import NotFoundError, SigningError
from orchestrator.core.listings import manifest_of
from orchestrator.core.models import Bundle, SigningKey

PASSPHRASE_ENV = "EDGEFLEET_KEY_PASSPHRASE"


def check_key_name(name: str) -> str:
    if not is_key_name(name):
        raise SigningError(f"key name {name!r} is not allowed: 1-64 letters, digits, '.', '_', "
                           "'-', not starting with '.' or '-'")
    return name


def key_dir(settings: Settings) -> Path:
    return settings.keys_dir / "signing"


def key_file(settings: Settings, name: str) -> Path:
    return key_dir(settings) / check_key_name(name)


def key_public(key: SigningKey) -> dict[str, Any]:
    """What `keys list --json` and the API show: the public half only."""
    return {"name": key.name, "public_key": key.public_key, "fingerprint": key.fingerprint,
            "encrypted": key.encrypted, "created_by": key.created_by,
            "created_at": key.created_at.isoformat()}


def create_key(session: Session, settings: Settings, name: str, passphrase: str | None = None,
               *, actor: str = "") -> SigningKey:
    """Make an Ed25519 key: the private half to a new 0600 file (never overwritten), the public
    half to the DB, audited as ``key.create``."""
    check_key_name(name)
    if session.exec(select(SigningKey).where(SigningKey.name == name)).first():
        raise SigningError(f"a signing key named {name} already exists; pick another name")
    path = key_file(settings, name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode()) if passphrase
        else serialization.NoEncryption())
    data = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                 encryption)
    public = sshsig.public_line(private.public_key())
    try:  # O_EXCL: an existing file (another key's, or one left by hand) is never replaced
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SigningError(f"{path} already exists; move it away or pick another name") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(path, 0o600)  # whatever the umask
    path.with_suffix(".pub").write_text(f"{public} {name}\n")
    key = SigningKey(name=name, public_key=public, fingerprint=sshsig.fingerprint(public),
                     encrypted=bool(passphrase), created_by=actor or audit.local_actor())
    session.add(key)
    session.flush()
    audit.add_event(session, actor, "key.create", f"key:{name}",
                    {"fingerprint": key.fingerprint, "encrypted": key.encrypted})
    return key


@dataclass(frozen=True)
class PinKey:
    """A key to pin on devices (``agent install --trust-key``): its public half only."""

    name: str
    public_key: str
    fingerprint: str


def keys_to_pin(session: Session, names: list[str]) -> list[PinKey]:
    """The registered keys ``names`` (each must exist), in the order given, once each."""
    return [PinKey(k.name, k.public_key, k.fingerprint)
            for k in (get_key(session, n) for n in dict.fromkeys(names))]


def list_keys(session: Session) -> list[SigningKey]:
    return list(session.exec(select(SigningKey).order_by(col(SigningKey.name))).all())


def get_key(session: Session, name: str) -> SigningKey:
    key = session.exec(select(SigningKey).where(SigningKey.name == check_key_name(name))).first()
    if key is None:
        raise NotFoundError(f"no signing key named {name}; make one: edgefleet keys create "
                            f"{name}")
    return key


def load_private(settings: Settings, key: SigningKey,
                 passphrase: str | None) -> Ed25519PrivateKey:
    """The private key from its file, refused (as ssh refuses) if others may read it, and
    checked against the public half the DB holds (a file swapped behind our back)."""
    path = key_file(settings, key.name)
    try:
        st = path.stat()
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SigningError(f"the private key of {key.name} is not on this machine "
                           f"({path.name} under EDGEFLEET_HOME/keys/signing)") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise SigningError(f"the key file of {key.name} is readable by others (mode "
                           f"{stat.S_IMODE(st.st_mode):o}); chmod 600 it")
    if key.encrypted and not passphrase:
        raise SigningError(f"key {key.name} is passphrase-protected: give the passphrase "
                           f"(prompted, or {PASSPHRASE_ENV})")
    try:
        private = serialization.load_ssh_private_key(
            raw, passphrase.encode() if key.encrypted and passphrase else None)
    except ValueError:
        raise SigningError(f"cannot open the key file of {key.name}: wrong passphrase or not "
                           "an OpenSSH key") from None
    if (not isinstance(private, Ed25519PrivateKey)
            or sshsig.public_line(private.public_key()) != key.public_key):
        raise SigningError(f"the key file of {key.name} does not hold the key registered as "
                           f"{key.fingerprint}")
    return private


def bundle_message(bundle: Bundle) -> bytes:
    """What a signature of ``bundle`` covers, from its manifest (not its digest column)."""
    return signed_message(bundle.name, bundle.version, manifest_digest(manifest_of(bundle)))


def sign_bundle(session: Session, settings: Settings, bundle: Bundle, key_name: str,
                passphrase: str | None = None, *, actor: str = "") -> Bundle:
    """Sign ``bundle`` (replacing any earlier signature: re-signing with a new key is how a
    key rotation reaches bundles already built), audited as ``bundle.sign``."""
    key = get_key(session, key_name)
    if manifest_digest(manifest_of(bundle)) != bundle.digest:
        raise SigningError(f"{bundle.name}@{bundle.version}: its manifest does not match its "
                           "digest (edited in the DB?); not signed")
    private = load_private(settings, key, passphrase)
    previous = bundle.signed_by
    bundle.signature = sshsig.sign(private, SIGNATURE_NAMESPACE, bundle_message(bundle))
    bundle.signed_by, bundle.signed_fingerprint = key.name, key.fingerprint
    bundle.signed_at = datetime.now(UTC)
    session.add(bundle)
    session.flush()
    audit.add_event(session, actor, "bundle.sign", f"bundle:{bundle.name}@{bundle.version}",
                    {"key": key.name, "fingerprint": key.fingerprint, "digest": bundle.digest,
                     "replaced": previous})
    return bundle


def signature_status(session: Session, bundle: Bundle) -> dict[str, Any] | None:
    """Who signed ``bundle`` and whether the signature still matches it here (the device
    checks again against its own pinned keys); None when unsigned."""
    if not bundle.signature:
        return None
    key = session.exec(select(SigningKey).where(SigningKey.name == bundle.signed_by)).first()
    problem = ("its key is not registered here" if key is None else
               sshsig.verify(key.public_key, SIGNATURE_NAMESPACE, bundle_message(bundle),
                             bundle.signature))
    return {"by": bundle.signed_by, "fingerprint": bundle.signed_fingerprint,
            "at": bundle.signed_at.isoformat() if bundle.signed_at else None,
            "valid": problem is None, "problem": problem}
