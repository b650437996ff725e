"""Host keys: the trusted keys in the shared database (``hostkey`` table), then the
pre-database ``EDGEFLEET_HOME/known_hosts`` file, then the user's ~/.ssh/known_hosts.

Why the database: every worker, on whatever host claims a job, must check a device against the
same keys, and a file under one process's home is on one host only (issue 14). Why the old file
is still read (rather than imported once): an existing install keeps connecting with no step to
run, nothing is written behind the user's back, and the database's key wins wherever both name
the same host and key type (it is looked up first), so ``devices trust --replace`` is never
undone by a stale file line. ``devices trust`` copies a key it confirms from a file into the
database, which is how a file-only key reaches the other hosts.

Nothing is ever accepted silently. An unknown key is refused with its fingerprint and the command
that trusts it; a changed key is refused with both fingerprints.

Both SSH transports trust the same keys: the paramiko one gets ``load_known``'s HostKeys, the
OpenSSH one ``trusted_keys``, the same rule decided without paramiko (``knownhosts``). paramiko,
SQLModel and the models are imported where they are used: a push through OpenSSH, which may
start before the ORM is loaded (``fleet.early``, reading the database with the standard
library), needs neither.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.core.errors import HostKeyError
from orchestrator.transport import knownhosts

if TYPE_CHECKING:
    import paramiko

    from orchestrator.core.config import Settings
    from orchestrator.core.envsettings import EnvSettings
    from orchestrator.core.models import HostKey


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` form, as ``ssh-keygen -lf`` prints it."""
    raw = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(raw).decode("ascii").rstrip("=")


def known_hosts_entry(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


def user_known_hosts() -> Path:
    return Path.home() / ".ssh" / "known_hosts"


def _load_file(keys: paramiko.HostKeys, path: Path) -> None:
    """Append ``path``'s entries (paramiko keeps the first entry per host and key type)."""
    import paramiko
    from paramiko.hostkeys import InvalidHostKey

    if path.is_file():
        try:
            keys.load(str(path))
        except (OSError, paramiko.SSHException, InvalidHostKey) as exc:
            # InvalidHostKey: a key that is not base64, or a @cert-authority/@revoked line
            # (paramiko supports neither): refused, as the OpenSSH transport does (knownhosts)
            raise HostKeyError(f"cannot read known_hosts file {path}: {exc}") from exc


def keys_from_file(path: Path) -> paramiko.HostKeys:
    """One known_hosts file alone (a test's or a benchmark's own)."""
    import paramiko

    keys = paramiko.HostKeys()
    _load_file(keys, path)
    return keys


def _db_key(row: HostKey) -> paramiko.PKey:
    import paramiko

    return paramiko.PKey.from_type_string(row.key_type, base64.b64decode(row.key_base64))


def db_rows(settings: Settings | EnvSettings, entry: str | None = None) -> list[HostKey]:
    """The database's trusted keys (only ``entry``'s when given: one device's connection reads
    one host's rows), oldest first. Through the ORM with ``Settings``; with ``EnvSettings`` (a
    push started before the ORM loads, ``fleet.early``, only ever on a current SQLite file)
    through the standard library, as rows with the same attributes."""
    from orchestrator.core.envsettings import EnvSettings

    if isinstance(settings, EnvSettings):
        from orchestrator.core import listings

        rows = listings.host_key_rows(entry)
        if rows is None:
            raise HostKeyError("cannot read the trusted host keys: the database is not a "
                               "current SQLite file")
        return rows  # type: ignore[return-value]
    from sqlmodel import select

    from orchestrator.core.db import session_scope
    from orchestrator.core.models import HostKey

    with session_scope(settings) as session:
        query = select(HostKey).order_by(HostKey.id)  # type: ignore[arg-type]
        if entry is not None:
            query = query.where(HostKey.entry == entry)
        return list(session.exec(query).all())


def load_known(settings: Settings | EnvSettings,
               entry: str | None = None) -> paramiko.HostKeys:
    """The keys to check a host against: the database's (only ``entry``'s when given: one
    device's connection reads one host's rows), then the legacy managed file, then the user's
    known_hosts. Order matters: paramiko's lookup answers with the first matching entry per
    key type, so the key `devices trust --replace` recorded beats a stale file line."""
    import paramiko

    keys = paramiko.HostKeys()
    for row in db_rows(settings, entry):
        try:
            keys.add(row.entry, row.key_type, _db_key(row))
        except (ValueError, paramiko.SSHException) as exc:  # a row written by hand
            raise HostKeyError(f"host key of {row.entry} in the database is unreadable "
                               f"({row.key_type}): {exc}") from None
    for path in (settings.known_hosts, user_known_hosts()):
        _load_file(keys, path)
    return keys


def trusted_keys(settings: Settings | EnvSettings, entry: str) -> dict[str, str]:
    """{key type: base64} trusted for ``entry``: what ``load_known(settings, entry)
    .lookup(entry)`` holds, decided without paramiko (the OpenSSH transport's known_hosts)."""
    rows = db_rows(settings, entry)
    return knownhosts.effective([(r.key_type, r.key_base64) for r in rows],
                                (settings.known_hosts, user_known_hosts()), entry)


def key_from(key_type: str, b64: str) -> paramiko.PKey:
    """A trusted key as paramiko's, to word a refusal (fingerprints, comparison)."""
    import paramiko

    return paramiko.PKey.from_type_string(key_type, base64.b64decode(b64))


def unknown_key_error(device: str, hostname: str, key: paramiko.PKey) -> HostKeyError:
    return HostKeyError(
        f"{device}: host key of {hostname} is not trusted "
        f"({key.get_name()} {fingerprint(key)}). Check it against the device "
        f"(ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then run "
        f"`edgefleet devices trust {device}`"
    )


def changed_key_error(device: str, hostname: str, offered: paramiko.PKey,
                      expected: paramiko.PKey) -> HostKeyError:
    return HostKeyError(
        f"{device}: HOST KEY CHANGED for {hostname}: it offered {offered.get_name()} "
        f"{fingerprint(offered)} but {expected.get_name()} {fingerprint(expected)} is trusted. "
        "Nothing was sent. If the device was reinstalled, verify the new key and run "
        f"`edgefleet devices trust {device} --replace`"
    )


# paramiko logs a failed key exchange (with its traceback) from its own thread before
# ``start_client`` raises it; the exception says it all, so its log goes to a silent logger.
_PARAMIKO_LOG = "orchestrator.transport.hostkeys.paramiko"
logging.getLogger(_PARAMIKO_LOG).addHandler(logging.NullHandler())
logging.getLogger(_PARAMIKO_LOG).propagate = False
KEYSCAN_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                 "ecdsa-sha2-nistp521", "ssh-rsa")  # preference, as paramiko's


def fetch_host_key(address: str, port: int, timeout: float) -> paramiko.PKey:
    """Key exchange only (no authentication): what key does this host offer?

    paramiko first; a host it cannot even negotiate with (an sshd offering only post-quantum
    key exchanges: paramiko has ML-KEM but not sntrup761, OpenSSH 9.2-9.8's) is asked with
    OpenSSH's ``ssh-keyscan``, which speaks whatever ``ssh`` does."""
    import paramiko

    sock = socket.create_connection((address, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    transport.set_log_channel(_PARAMIKO_LOG)
    try:
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    except paramiko.IncompatiblePeer:
        scanned = keyscan(address, port, timeout)
        if scanned is None:
            raise
        return scanned
    finally:
        transport.close()


def keyscan(address: str, port: int, timeout: float) -> paramiko.PKey | None:
    """The host key ``ssh-keyscan`` reads (the first of ``KEYSCAN_TYPES`` offered); None
    without ``ssh-keyscan`` or an answer. Its output is the host's: bounded, and each line
    parsed as a key or ignored."""
    import paramiko

    binary = shutil.which("ssh-keyscan")
    if binary is None:
        return None
    try:
        done = subprocess.run(  # noqa: S603 - fixed binary, address after "--"
            [binary, "-T", str(max(1, int(timeout))), "-p", str(port),
             "-t", "ed25519,ecdsa,rsa", "--", address],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout + 5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    offered: dict[str, paramiko.PKey] = {}
    for line in done.stdout[:65536].decode("ascii", "replace").splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] in KEYSCAN_TYPES:
            try:
                offered.setdefault(fields[1], paramiko.PKey.from_type_string(
                    fields[1], base64.b64decode(fields[2], validate=True)))
            except Exception:  # noqa: BLE001, S112 - a line that is not a key is not one
                continue
    return next((offered[t] for t in KEYSCAN_TYPES if t in offered), None)


@dataclass
class TrustResult:
    device: str
    entry: str
    key_type: str
    fingerprint: str
    status: str  # "added", "already trusted", "replaced"
    previous_fingerprint: str | None = None


def trust(device: str, address: str, port: int, settings: Settings, timeout: float,
          replace: bool = False) -> TrustResult:
    """Record the host's current key in the database; a different recorded key (database or
    file) is only replaced when asked to. A key already trusted by a file only is copied into
    the database, so workers on other hosts trust it too."""
    key = fetch_host_key(address, port, timeout)
    entry = known_hosts_entry(address, port)
    result = TrustResult(device, entry, key.get_name(), fingerprint(key), "added")
    recorded = (load_known(settings, entry).lookup(entry) or {}).get(key.get_name())
    if recorded is not None and recorded != key:
        if not replace:
            raise changed_key_error(device, entry, key, recorded)
        result.status, result.previous_fingerprint = "replaced", fingerprint(recorded)
    elif recorded is not None:
        result.status = "already trusted"
    from sqlalchemy.exc import IntegrityError

    try:
        _store(settings, entry, key)
    except IntegrityError:  # another process recorded this host's key meanwhile: recheck it
        now = (load_known(settings, entry).lookup(entry) or {}).get(key.get_name())
        if now != key:
            raise changed_key_error(device, entry, key, now) from None
    return result


def _store(settings: Settings, entry: str, key: paramiko.PKey) -> None:
    """The database's key for ``entry`` and this key type becomes ``key`` (nothing written
    when it already is)."""
    from sqlmodel import select

    from orchestrator.core.db import session_scope
    from orchestrator.core.models import HostKey

    with session_scope(settings) as session:
        row = session.exec(select(HostKey).where(HostKey.entry == entry,
                                                 HostKey.key_type == key.get_name())).first()
        if row is not None and _db_key(row) == key:
            return
        row = row or HostKey(entry=entry, key_type=key.get_name(), key_base64="",
                             fingerprint="")
        row.key_base64 = key.get_base64()
        row.fingerprint = fingerprint(key)
        session.add(row)
