"""Where a device's persistent OpenSSH connection lives: one control socket per device and
trust, in a private per-user directory (``ControlPersist``, as ansible-core's ``~/.ansible/cp``).

Why: an SSH login cost ~0.28 s here (TCP, a post-quantum key exchange, public-key
authentication, the user's shell start), paid by every command: ``edgefleet push`` then
``bench`` logged in twice, the server's 60 s telemetry poll once per device per minute. A
connection kept open ``EDGEFLEET_SSH_PERSIST_S`` (90 s: longer than the server's 60 s telemetry
poll, so a polled device is not logged into again each minute) after the last command lets the
next one start a session over it (bench/cli_startup.py, bench/fleet_scale.py: what it saves).
Its cost: one ``ssh`` process per device contacted in the last 90 s on the control plane
(~2.5 MB each), and one login session on the device.

What must never be shared, and how: the socket's name is a digest of everything that decided
how that connection was made and checked: the ``ssh`` binary, the device's name (one connection
per device, as one per Pi, even where several inventory names reach one sshd: a real sshd
allows 10 sessions per connection), address, port, user, key file,
key exchange (a poll's classical one is not reused for a push), and the exact host keys
trusted for the device. A key trusted, replaced or untrusted since (``devices trust``) names
another socket, so a connection checked against the old keys is never reused; the old one
closes on its own when idle. The directory is the user's own (0700, checked, never followed
through a symlink): a control socket is a door into an authenticated login. Where no such
directory can be had, or its path would be too long for a Unix socket, ``None``: the
connection is the operation's own, as with ``EDGEFLEET_SSH_PERSIST_S=0``.

What OpenSSH does that this relies on (tests/fleet/test_ssh_persist.py shows the first two):
the master detaches into its own session holding none of our pipes; a stopped sshd ends it, and
the next ``ssh`` finds the socket dead and connects (and fails) on its own;
``ServerAliveInterval`` ends a master whose device vanished silently (within ~30 s; a command
started over it meanwhile fails or waits for that, not tested here); a master whose device
rebooted meets a RST on its first use, and the ``ssh`` that asked falls back to a connection
of its own (tests/fleet/test_device_reboot.py).

Not in the digest: the user's ``~/.ssh/config`` (``HostName``, ``ProxyJump``, ``IdentityFile``)
and an ssh-agent's keys. A change there reaches a device once its open connection has been
idle for ``EDGEFLEET_SSH_PERSIST_S`` (or at once with ``ssh -O exit``); host keys are checked
by the digest's known_hosts whatever the config says.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from orchestrator.transport.base import Target

log = logging.getLogger(__name__)

# sun_path is 108 bytes on Linux (104 on the BSDs); ssh first binds "<path>.<16 random chars>"
# and renames it: keep the whole under the smaller limit.
SOCKET_PATH_MAX = 104 - 18
# ssh_config expands % tokens in ControlPath and splits on spaces: only plain characters.
_PLAIN = re.compile(r"[A-Za-z0-9/._+-]+")


def control_dir() -> Path | None:
    """This user's private directory of control sockets: ``$XDG_RUNTIME_DIR/edgefleet-ssh``
    (the login's own tmpfs) or ``<tmp>/edgefleet-ssh-<uid>``, created 0700; None (with a
    warning) when that path exists as anything else: not a directory, a symlink, someone
    else's, or open to others."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    uid = os.getuid()
    path = (Path(runtime) / "edgefleet-ssh" if runtime and Path(runtime).is_dir()
            else Path(tempfile.gettempdir()) / f"edgefleet-ssh-{uid}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        log.warning("no persistent SSH connections: cannot create %s (%s)", path, exc)
        return None
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o077:
        log.warning("no persistent SSH connections: %s is not a private directory of this user "
                    "(mode %o, owner %d); remove it", path, stat.S_IMODE(info.st_mode),
                    info.st_uid)
        return None
    return path


KNOWN_HOSTS_SUFFIX = ".known_hosts"
STAGED_PREFIX = ".known_hosts-"  # a known_hosts being written (tempfile's name), then renamed
STALE_AFTER_S = 3600.0  # a connection's known_hosts with no socket beside it for this long
SWEEP_EVERY_S = 600.0
_swept: dict[Path, float] = {}  # directory -> when this process last swept it
_sweep_lock = threading.Lock()


def write_known_hosts(path: Path, lines: list[str]) -> None:
    """Write ``path`` whole or not at all (a running master may read it again when it
    re-keys): staged in its own directory, then renamed. Beside it, not in a temporary
    directory: ``$XDG_RUNTIME_DIR`` is a file system of its own (systemd's /run/user/<uid>),
    and a rename across file systems fails (EXDEV)."""
    fd, staged = tempfile.mkstemp(dir=path.parent, prefix=STAGED_PREFIX, suffix=".new")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.writelines(lines)
        os.replace(staged, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staged)
        raise


def sweep(directory: Path, now: float | None = None) -> int:
    """Remove the known_hosts files of connections long gone (no socket beside them for
    ``STALE_AFTER_S``) and staged files a killed process left; at most every
    ``SWEEP_EVERY_S`` per process and directory. Why: each trust, address or key exchange
    names a file of its own, and nothing else ever removes one. Returns how many it removed."""
    now = time.time() if now is None else now
    with _sweep_lock:
        if now - _swept.get(directory, -SWEEP_EVERY_S) < SWEEP_EVERY_S:
            return 0
        _swept[directory] = now
    removed = 0
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if name.endswith(KNOWN_HOSTS_SUFFIX):
                if os.path.lexists(os.path.join(directory, name[:-len(KNOWN_HOSTS_SUFFIX)])):
                    continue  # its connection is open
            elif not name.startswith(STAGED_PREFIX):
                continue
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(info.st_mode) and now - info.st_mtime > STALE_AFTER_S:
                    os.unlink(entry.path)
                    removed += 1
    return removed


def socket_name(ssh: str, target: Target, trusted: Mapping[str, str], kex: str | None) -> str:
    """The digest naming one connection: equal only for connections made and checked alike."""
    parts = [ssh, target.name, target.address, str(target.port), target.user or "",
             target.key_file or "", kex or "",
             *(f"{kind} {b64}" for kind, b64 in sorted(trusted.items()))]
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=16).hexdigest()


def shared_control_path(ssh: str, target: Target, trusted: Mapping[str, str],
                        kex: str | None) -> str | None:
    """The control socket ``target``'s persistent connection uses, or None for a connection of
    the operation's own (no private directory here, or a path ssh could not bind)."""
    if not trusted:  # nothing trusted: the login is refused anyway, and must say so afresh
        return None
    directory = control_dir()
    if directory is None:
        return None
    sweep(directory)
    path = str(directory / socket_name(ssh, target, trusted, kex))
    if len(path) > SOCKET_PATH_MAX or not _PLAIN.fullmatch(path):
        log.warning("no persistent SSH connections: the socket path %r is too long or unusual "
                    "for ssh; set XDG_RUNTIME_DIR or TMPDIR to a short plain path", path)
        return None
    return path
