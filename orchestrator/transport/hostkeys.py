"""Host keys: EdgeFleet's own known_hosts under EDGEFLEET_HOME, plus the user's ~/.ssh/known_hosts.

Nothing is ever accepted silently. An unknown key is refused with its fingerprint and the command
that trusts it; a changed key is refused with both fingerprints. paramiko (which reads and
writes the files here) is imported where it is used: the OpenSSH transport needs this module's
file names on every push and paramiko only to word a refusal.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.core.errors import HostKeyError

if TYPE_CHECKING:
    import paramiko

_write_lock = threading.Lock()


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` form, as ``ssh-keygen -lf`` prints it."""
    raw = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(raw).decode("ascii").rstrip("=")


def known_hosts_entry(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


def user_known_hosts() -> Path:
    return Path.home() / ".ssh" / "known_hosts"


def load_known(managed: Path) -> paramiko.HostKeys:
    """Union of the managed file and the user's known_hosts (managed entries win)."""
    import paramiko

    keys = paramiko.HostKeys()
    # Managed first: paramiko's lookup answers with the first matching entry, so the file that
    # `devices trust --replace` writes must come before a stale line in ~/.ssh/known_hosts.
    for path in (managed, user_known_hosts()):
        if path.is_file():
            try:
                keys.load(str(path))
            except (OSError, paramiko.SSHException) as exc:
                raise HostKeyError(f"cannot read known_hosts file {path}: {exc}") from exc
    return keys


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


def fetch_host_key(address: str, port: int, timeout: float) -> paramiko.PKey:
    """Key exchange only (no authentication): what key does this host offer?"""
    import paramiko

    sock = socket.create_connection((address, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    finally:
        transport.close()


@dataclass
class TrustResult:
    device: str
    entry: str
    key_type: str
    fingerprint: str
    status: str  # "added", "already trusted", "replaced"
    previous_fingerprint: str | None = None


def trust(device: str, address: str, port: int, managed: Path, timeout: float,
          replace: bool = False) -> TrustResult:
    """Record the host's current key in the managed known_hosts; a different recorded key is
    only replaced when asked to."""
    key = fetch_host_key(address, port, timeout)
    entry = known_hosts_entry(address, port)
    known = load_known(managed)
    recorded = (known.lookup(entry) or {}).get(key.get_name())
    result = TrustResult(device, entry, key.get_name(), fingerprint(key), "added")
    if recorded is not None and recorded == key:
        result.status = "already trusted"
        return result
    if recorded is not None:
        if not replace:
            raise changed_key_error(device, entry, key, recorded)
        result.status, result.previous_fingerprint = "replaced", fingerprint(recorded)
    import paramiko

    with _write_lock:
        managed.parent.mkdir(parents=True, exist_ok=True)
        own = paramiko.HostKeys()
        if managed.is_file():
            own.load(str(managed))
        own.add(entry, key.get_name(), key)
        own.save(str(managed))
    return result
