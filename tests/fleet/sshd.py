"""Real OpenSSH test hosts on loopback: one ``/usr/sbin/sshd`` per simulated Pi.

Each :class:`SshdHost` has its own port on 127.0.0.1, its own ed25519 host key, its own
AuthorizedKeysFile (holding the session's user key), its own ``edgefleet_root`` directory and a
:class:`~orchestrator.demo.simulate.SimulatedDevice`. Logins are as the current user (root included)
with public keys only.

Startup is synchronised on sshd's own log line ``Server listening on 127.0.0.1 port N`` (read
from its stderr with a deadline, no sleeping); if the port turned out to be taken another one is
tried. Teardown stops the listener *and* every session process it forked (sessions outlive a
plain SIGTERM to the listener), and is also run at interpreter exit. Where ``setpriv`` exists,
sshd is started with ``--pdeathsig TERM`` so even a hard-killed pytest does not leave it behind
(the signal fires when the *thread* that started the host exits: start hosts from a thread that
lives as long as they should, e.g. pytest's main thread).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.demo.simulate import SimulatedDevice, create_simulated_device

from .sshd_process import PortTaken, SshdProcess

SSHD = "/usr/sbin/sshd"
ADDRESS = "127.0.0.1"
READY_TIMEOUT = 15.0
PORT_ATTEMPTS = 10
ODD_ROOT_NAME = 'edge fleet\'s "root" $NOPE'
ODD_SIM_NAME = 'sim dir\'s "pi"'


@dataclass(frozen=True)
class UserKey:
    """The client-side key pair every test host accepts."""

    private_key: Path
    public_key: Path

    @property
    def public_line(self) -> str:
        """``ssh-ed25519 AAAA... comment``, as it goes into authorized_keys."""
        return self.public_key.read_text().strip()


def generate_user_key(directory: Path) -> UserKey:
    """Create an ed25519 key pair (no passphrase) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / "id_ed25519"
    _keygen(private, comment="edgefleet-tests")
    return UserKey(private, private.with_name(private.name + ".pub"))


def current_user() -> str:
    """Name of the effective user; the test hosts log this user in."""
    return pwd.getpwuid(os.geteuid()).pw_name


def openssh_fingerprint(public_key_line: str) -> str:
    """``SHA256:<base64, no padding>`` of a public key line, exactly as ``ssh-keygen -l``."""
    blob = base64.b64decode(public_key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (sshd retries if it is not)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ADDRESS, 0))
        return s.getsockname()[1]


def _keygen(private: Path, comment: str) -> None:
    for p in (private, private.with_name(private.name + ".pub")):
        p.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(private)],
        check=True,
        capture_output=True,
    )


def _config_path(path: Path) -> str:
    """Quote a path for sshd_config; refuse characters sshd_config cannot carry."""
    text = str(path)
    if any(c in text for c in '"%\n'):
        raise ValueError(
            f"sshd test host files cannot live under a path with '\"', '%' or a newline: {text!r}"
        )
    return f'"{text}"'


_LIVE: set[SshdHost] = set()
SshdFactory = Callable[..., "list[SshdHost]"]
"""Type of the ``sshd_factory`` fixture: ``make(n=3, **opts) -> list[SshdHost]``."""


@atexit.register
def _stop_all_hosts() -> None:
    for host in list(_LIVE):
        with contextlib.suppress(Exception):
            host.stop()


class SshdHost:
    """A real sshd on 127.0.0.1 standing in for one Raspberry Pi.

    Layout under ``base_dir/name``: ``sshd/`` (config, host key, authorized_keys, pid, log),
    the simulated device (``sim/``), and ``root`` = the device's ``edgefleet_root`` (its parent
    exists, the directory itself is left for the agent to create, as on a fresh Pi).
    """

    address = ADDRESS

    def __init__(
        self,
        name: str,
        base_dir: Path,
        user_key: UserKey,
        *,
        port: int | None = None,
        odd_root: bool = False,
        odd_sim_dir: bool = False,
        sim_options: Mapping[str, Any] | None = None,
        start: bool = True,
        address: str = ADDRESS,
        netns: str | None = None,
        cpus: str | None = None,
        sftp_server: str = "internal-sftp",
        log_level: str = "INFO",
        kex: str | None = None,
        shell_start: Path | None = None,
    ) -> None:
        """``odd_root`` / ``odd_sim_dir`` put spaces, quotes and a ``$`` in those paths;
        ``sim_options`` go to :func:`create_simulated_device`; ``port`` is tried first.
        ``netns``/``address``: run sshd inside that network namespace, listening on ``address``
        (bench/push.py uses this for a LAN-shaped link). ``sftp_server``: the sftp subsystem;
        stock Debian and Raspberry Pi OS run ``/usr/lib/openssh/sftp-server`` through the
        user's shell (as every exec is), the default ``internal-sftp`` skips the shell.
        ``shell_start``: a script each command's login shell (bash) sources first, as a
        ``pyenv init`` in a Pi's ``.bashrc`` runs (sshd's ``SetEnv BASH_ENV``)."""
        self.name = name
        self.address = address
        self.netns = netns
        if not re.fullmatch(r"internal-sftp|/[\w./-]+", sftp_server):
            raise ValueError(f"sftp_server must be internal-sftp or a plain path: {sftp_server!r}")
        self.sftp_server = sftp_server
        plain = re.fullmatch(r"[A-Z0-9]+", log_level) and re.fullmatch(r"[\w@.,-]*", kex or "")
        if not plain:
            raise ValueError(f"log_level/kex: plain sshd_config words only: {log_level!r} {kex!r}")
        self.log_level = log_level  # DEBUG1 logs each connection's key exchange
        self.kex = kex  # the KexAlgorithms this sshd offers (None: OpenSSH's default)
        self.cpus = cpus  # e.g. "1": pin the "device" to CPUs of its own (bench/push.py --pin)
        if shell_start is not None and not re.fullmatch(r"/[\w./-]+", str(shell_start)):
            raise ValueError(f"shell_start must be a plain absolute path: {shell_start}")
        self.shell_start = shell_start
        self.user = current_user()
        self.key_file = user_key.private_key
        self.user_key = user_key
        self.dir = (Path(base_dir) / name).absolute()
        self.sshd_dir = self.dir / "sshd"
        self.sshd_dir.mkdir(parents=True, exist_ok=True)
        self.config_file = self.sshd_dir / "sshd_config"
        self.host_key_file = self.sshd_dir / "ssh_host_ed25519_key"
        self.authorized_keys_file = self.sshd_dir / "authorized_keys"
        self.pid_file = self.sshd_dir / "sshd.pid"
        self.log_file = self.sshd_dir / "sshd.log"
        for path in (self.config_file, self.host_key_file, self.authorized_keys_file):
            _config_path(path)
        self.root = self.dir / (ODD_ROOT_NAME if odd_root else "edgefleet-root")
        self.sim: SimulatedDevice = create_simulated_device(
            self.dir / (ODD_SIM_NAME if odd_sim_dir else "sim"), **dict(sim_options or {})
        )
        self.port: int = port or 0
        self._process: SshdProcess | None = None
        self.authorized_keys_file.write_text(user_key.public_line + "\n")
        _keygen(self.host_key_file, comment=f"edgefleet-test-host-{name}")
        if start:
            self.start()

    # -- keys -------------------------------------------------------------------------------

    @property
    def host_public_key_line(self) -> str:
        """``ssh-ed25519 AAAA...`` (type and key, no comment) of the current host key."""
        pub = self.host_key_file.with_name(self.host_key_file.name + ".pub").read_text()
        return " ".join(pub.split()[:2])

    @property
    def host_key_fingerprint(self) -> str:
        """``SHA256:...`` fingerprint of the current host key, as OpenSSH prints it."""
        return openssh_fingerprint(self.host_public_key_line)

    @property
    def known_hosts_line(self) -> str:
        """``[127.0.0.1]:PORT ssh-ed25519 AAAA...`` for a known_hosts file."""
        return f"[{self.address}]:{self.port} {self.host_public_key_line}"

    def write_known_hosts(self, path: Path) -> Path:
        """Write a known_hosts file trusting exactly this host's current key."""
        path.write_text(self.known_hosts_line + "\n")
        return path

    def ssh_argv(self, *command: str, known_hosts: Path | None = None) -> list[str]:
        """argv for the real OpenSSH client, strict host key checking, no user config."""
        if known_hosts is None:
            known_hosts = self.write_known_hosts(self.dir / "known_hosts")
        return [
            "ssh", "-F", "/dev/null",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f'UserKnownHostsFile="{known_hosts}"', "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
            "-i", str(self.key_file), "-p", str(self.port), f"{self.user}@{self.address}",
            *command,
        ]  # fmt: skip

    def regenerate_host_key(self) -> str:
        """Replace the host key (restarting sshd on the same port if it was running); return
        the new fingerprint. For "the host key changed" scenarios."""
        was_running = self.running
        self.stop()
        _keygen(self.host_key_file, comment=f"edgefleet-test-host-{self.name}")
        if was_running:
            self.start()
        return self.host_key_fingerprint

    # -- process ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.proc.pid if self._process is not None else None

    def log_text(self) -> str:
        """Everything sshd logged so far (all runs), for failure messages."""
        return self.log_file.read_text() if self.log_file.exists() else ""

    def _write_config(self, port: int) -> None:
        q = _config_path
        self.config_file.write_text(
            f"Port {port}\n"
            f"ListenAddress {self.address}\n"
            "AddressFamily inet\n"
            f"HostKey {q(self.host_key_file)}\n"
            f"PidFile {q(self.pid_file)}\n"
            f"AuthorizedKeysFile {q(self.authorized_keys_file)}\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "PermitRootLogin prohibit-password\n"
            "StrictModes no\n"
            f"Subsystem sftp {self.sftp_server}\n"
            "MaxStartups 100:100:100\n"
            "MaxSessions 100\n"
            "LoginGraceTime 30\n"
            "UseDNS no\n"
            "PrintMotd no\n"
            "PrintLastLog no\n"
            f"LogLevel {self.log_level}\n"
            + (f"KexAlgorithms {self.kex}\n" if self.kex else "")
            + (f"SetEnv BASH_ENV={self.shell_start}\n" if self.shell_start else "")
        )

    process_class: type[SshdProcess] = SshdProcess
    """What runs and stops sshd (tests/arm's hosts stop a whole PID namespace instead)."""

    def process_argv(self) -> list[str]:
        """The command that runs sshd in the foreground, logging to stderr (tests/arm's hosts
        run it inside an arm64 chroot)."""
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        prefix = []
        if setpriv := shutil.which("setpriv"):
            prefix = [setpriv, "--pdeathsig", "TERM", "--"]
        if self.netns:
            prefix = [*prefix, "ip", "netns", "exec", self.netns]
        if self.cpus:
            prefix = [*prefix, "taskset", "-c", self.cpus]
        return [*prefix, SSHD, "-D", "-e", "-f", str(self.config_file)]

    def start(self) -> None:
        """Start sshd (no-op if running); return once it listens. The previous port is tried
        first, then fresh ones if it is taken."""
        if self.running:
            return
        argv = self.process_argv()
        last: Exception | None = None
        for attempt in range(PORT_ATTEMPTS):
            port = self.port if attempt == 0 and self.port else free_port()
            self._write_config(port)
            process = self.process_class(argv, self.log_file)
            try:
                listening = process.wait_listening(READY_TIMEOUT)
            except PortTaken as exc:
                process.stop()
                last = exc
                continue
            except BaseException:
                process.stop()
                raise
            if listening != port:
                process.stop()
                raise RuntimeError(f"{self.name}: sshd listens on {listening}, wanted {port}")
            self.port = port
            self._process = process
            _LIVE.add(self)
            return
        raise RuntimeError(f"{self.name}: no free port after {PORT_ATTEMPTS} tries: {last}")

    def stop(self) -> None:
        """Stop sshd and every session it is serving; idempotent."""
        process, self._process = self._process, None
        _LIVE.discard(self)
        if process is not None:
            process.stop()

    def __enter__(self) -> SshdHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"SshdHost({self.name!r}, {self.address}:{self.port}, {state})"

    # -- inventory --------------------------------------------------------------------------

    def inventory_vars(self) -> dict[str, Any]:
        """Ansible host variables that reach this host and its simulated sensors."""
        return {
            "ansible_host": self.address,
            "ansible_port": self.port,
            "ansible_user": self.user,
            "ansible_ssh_private_key_file": str(self.key_file),
            "edgefleet_root": str(self.root),
            "edgefleet_python": sys.executable,
            "edgefleet_env": dict(self.sim.env),
        }


def write_inventory(
    path: Path,
    hosts: Sequence[SshdHost],
    group: str | None = "pis",
    extra_host_vars: Mapping[str, Mapping[str, Any]] | None = None,
    group_vars: Mapping[str, Any] | None = None,
) -> Path:
    """Write an Ansible YAML inventory for ``hosts`` and return ``path``.

    Hosts go into group ``group`` (under ``all.children``), or straight under ``all.hosts``
    when ``group`` is ``None`` or ``"all"``. ``extra_host_vars`` maps a host name to extra
    variables for that host (e.g. labels); ``group_vars`` become the group's ``vars``.
    """
    extra = dict(extra_host_vars or {})
    unknown = set(extra) - {h.name for h in hosts}
    if unknown:
        raise ValueError(f"extra_host_vars for unknown hosts: {sorted(unknown)}")
    entries = {h.name: {**h.inventory_vars(), **dict(extra.get(h.name, {}))} for h in hosts}
    section: dict[str, Any] = {"hosts": entries}
    if group_vars:
        section["vars"] = dict(group_vars)
    doc = {"all": section} if group in (None, "all") else {"all": {"children": {group: section}}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))
    return path
