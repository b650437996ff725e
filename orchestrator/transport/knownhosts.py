"""The host keys EdgeFleet trusts for one host, decided with the standard library alone, by the
rule the paramiko transport applies (``hostkeys.load_known``): per key type, the first key
found in the database's rows, then the legacy ``EDGEFLEET_HOME/known_hosts``, then
``~/.ssh/known_hosts``.

Why not hand ``ssh`` the files themselves: OpenSSH accepts a key found in *any* of its
known_hosts files, so a stale line in ``~/.ssh/known_hosts`` would still be trusted after
``devices trust --replace`` recorded the device's new key in the database, where paramiko
(first key per type wins) refuses it. The OpenSSH transport therefore writes exactly this
module's answer to a private file and gives ``ssh`` that file alone. Why not paramiko's own
parser: a push through OpenSSH never imports paramiko (~0.25 s of a fresh process).

Files are read as paramiko reads them (``HostKeys.load``, ``HostKeyEntry.from_line``):
comment and blank lines skipped, fields split on one space or tab, names compared exactly or
as hashed ``|1|salt|hash`` entries, a key type paramiko cannot load skipped, a key field that
is not base64 an error (paramiko's InvalidHostKey: a ``@cert-authority`` or ``@revoked`` line
is one, as paramiko supports neither; refusing is the safe reading of a revocation).
tests/unit/transport/test_knownhosts.py compares both on the same files.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from collections.abc import Iterable
from pathlib import Path

from orchestrator.core.errors import HostKeyError

# The key types paramiko loads from a known_hosts line (``paramiko.key_classes``'
# identifiers) by family, and the types a key blob of each family may name, with the name the
# loaded key then reports (``PKey.get_name()``): the type a lookup is keyed by.
_LINE_TYPES: dict[str, str] = {
    **dict.fromkeys(("ssh-rsa", "rsa-sha2-256", "rsa-sha2-512", "ssh-rsa-cert-v01@openssh.com",
                     "rsa-sha2-256-cert-v01@openssh.com", "rsa-sha2-512-cert-v01@openssh.com"),
                    "rsa"),
    **dict.fromkeys(("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"),
                    "ecdsa"),
    "ssh-ed25519": "ed25519",
}
_BLOB_TYPES: dict[str, tuple[str, str]] = {
    "ssh-rsa": ("rsa", "ssh-rsa"),
    "ssh-rsa-cert-v01@openssh.com": ("rsa", "ssh-rsa"),
    **{t: ("ecdsa", t) for t in ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                                 "ecdsa-sha2-nistp521")},
    "ssh-ed25519": ("ed25519", "ssh-ed25519"),
}
_FIELDS = re.compile(" |\t")


def _blob_type(blob: bytes) -> str | None:
    """The key type a public key blob names first (``string type`` of RFC 4253)."""
    if len(blob) < 4:
        return None
    (size,) = struct.unpack(">I", blob[:4])
    try:
        return blob[4:4 + size].decode("ascii") if 4 + size <= len(blob) else None
    except UnicodeDecodeError:
        return None


def decode(b64: str) -> bytes:
    """A key field's bytes, decoded as paramiko decodes it (``base64.decodebytes``, which skips
    characters outside the alphabet); ValueError where paramiko raises InvalidHostKey."""
    try:
        return base64.decodebytes(b64.encode())
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None


def key_name(line_type: str, blob: bytes) -> str | None:
    """The type a line's key is looked up by (what paramiko's loaded key says its name is),
    or None where paramiko skips the line (a type it cannot load, a blob of another type)."""
    family = _LINE_TYPES.get(line_type)
    inner = _BLOB_TYPES.get(_blob_type(blob) or "")
    if family is None or inner is None or inner[0] != family:
        return None
    return inner[1]


def _hashed_match(pattern: str, hostname: str) -> bool:
    """``|1|base64(salt)|base64(HMAC-SHA1(salt, hostname))``, as ``HashKnownHosts`` writes."""
    parts = pattern.split("|")
    if len(parts) != 4 or hostname.startswith("|1|"):
        return False
    try:
        salt, digest = base64.b64decode(parts[2]), base64.b64decode(parts[3])
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(hmac.new(salt, hostname.encode(), hashlib.sha1).digest(), digest)


def _names_match(names: str, hostname: str) -> bool:
    return any(name == hostname or (name.startswith("|1|") and _hashed_match(name, hostname))
               for name in names.split(","))


def file_keys(path: Path, hostname: str) -> list[tuple[str, str]]:
    """``(type, base64)`` of each key ``path`` lists for ``hostname``, in file order."""
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise HostKeyError(f"cannot read known_hosts file {path}: {exc}") from exc
    found: list[tuple[str, str]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = _FIELDS.split(line)
        if len(fields) < 3:
            continue
        try:  # every line's key, as paramiko decodes them all (a marker line fails here)
            blob = decode(fields[2])
        except ValueError as exc:
            raise HostKeyError(f"cannot read known_hosts file {path}: line {lineno}: {exc} "
                               "(a @cert-authority or @revoked line is not supported)") from None
        if _names_match(fields[0], hostname):
            name = key_name(fields[1], blob)
            if name is not None:
                found.append((name, fields[2]))
    return found


def effective(db_keys: Iterable[tuple[str, str]], files: Iterable[Path],
              hostname: str) -> dict[str, str]:
    """{type: base64}: per key type the first key of the database's rows for ``hostname``
    (``db_keys``: their ``(key_type, key_base64)``), then of each file in order."""
    keys: dict[str, str] = {}
    for key_type, b64 in db_keys:
        keys.setdefault(key_type, b64)
    for path in files:
        for key_type, b64 in file_keys(path, hostname):
            keys.setdefault(key_type, b64)
    return keys
