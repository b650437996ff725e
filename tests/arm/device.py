"""Emulated arm64 Pis: the cached Debian rootfs (tests/arm/rootfs.py) under a per-device overlay,
its own aarch64 ``/usr/sbin/sshd`` on a loopback port, run by qemu-user through binfmt_misc.

Why a PID and mount namespace per device (``unshare --mount --pid --fork``): the overlay, /proc
and /dev mounts exist only in that namespace, so nothing is left mounted on the host whatever
happens to the test process; and the chroot's sshd is the namespace's init, so killing it takes
every session, agent and onnxruntime child with it (the kernel kills a PID namespace's members
when its init dies). ``setpriv --pdeathsig KILL`` and ``unshare --kill-child`` chain that to the
test process: a hard-killed pytest leaves no qemu behind either.

The device sees the cached rootfs read-only through an overlay whose upper layer is the test's
own directory, so concurrent tests share one rootfs and never see each other's writes. The
sshd files and the simulated sensors (orchestrator/demo/simulate.py, EDGEFLEET_SYSFS) are bind
mounts at the same absolute path inside as outside, so :class:`SshdHost`'s paths, its pinned
host key and ``SimulatedDevice.set_*`` work unchanged. The agent lives where it does on a Pi:
``edgefleet_root: ~/.edgefleet`` (``/root/.edgefleet``: the tests log in as root), Python
``python3``; ``root`` is the host's view of it (the overlay's upper layer).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.fleet.sshd import SshdHost, UserKey
from tests.fleet.sshd_process import STOP_TIMEOUT, SshdProcess, _descendants, _terminate_pids

from .rootfs import SUITES, ensure_rootfs

DEVICE_ROOT = "~/.edgefleet"
HOME = "root"  # the login user's home inside the rootfs (root: the tests run as root)

_ENTER = r"""
set -eu
lower=$1 upper=$2 work=$3 merged=$4 config=$5
shift 5
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$merged"
mount -t proc proc "$merged/proc"
mount --rbind /dev "$merged/dev"
for dir in "$@"; do
  mkdir -p "$merged$dir"
  mount --bind "$dir" "$merged$dir"
done
exec chroot "$merged" /usr/sbin/sshd -D -e -f "$config"
"""


class NamespaceSshdProcess(SshdProcess):
    """sshd as the init of its own PID namespace: stopping it ends the whole namespace."""

    def stop(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            members = _descendants(proc.pid)
            # SIGKILL the namespace's init (unshare's child): the kernel kills and reaps every
            # other member before init itself exits, and unshare reaps init and exits.
            if members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(members[0], signal.SIGKILL)
            else:
                proc.kill()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _terminate_pids(members, STOP_TIMEOUT)  # waits (pidfd) until each one is gone
        self._thread.join(STOP_TIMEOUT)
        if proc.stderr is not None and not self._thread.is_alive():
            proc.stderr.close()


class ArmHost(SshdHost):
    """One emulated Pi (``suite``: ``bookworm`` or ``bullseye``) reached over real OpenSSH."""

    process_class = NamespaceSshdProcess

    def __init__(self, name: str, suite: str, base_dir: Path, user_key: UserKey, *,
                 sim_options: Mapping[str, Any] | None = None, start: bool = True) -> None:
        self.suite = SUITES[suite]
        self.rootfs = ensure_rootfs(suite)
        super().__init__(name, base_dir, user_key, sim_options=sim_options, start=False)
        overlay = self.dir / "overlay"
        self.upper, self.work, self.merged = (overlay / p for p in ("upper", "work", "merged"))
        for path in (self.upper, self.work, self.merged):
            path.mkdir(parents=True, exist_ok=True)
        # pip on the device installs from the rootfs's wheelhouse (rootfs.py) without
        # byte-compiling every module it unpacks (sympy alone is thousands, each compile run by
        # qemu); what is imported gets compiled at its first import instead, as usual.
        (self.upper / "etc").mkdir(parents=True, exist_ok=True)
        (self.upper / "etc/pip.conf").write_text(
            (self.rootfs / "etc/pip.conf").read_text() + "no-compile = true\n")
        self.root = self.upper / HOME / DEVICE_ROOT.removeprefix("~/")
        self.share = self.dir / "share"  # the same path inside: files for tests to hand over
        self.share.mkdir(exist_ok=True)
        self.pid_namespace: str | None = None
        if start:
            self.start()

    def process_argv(self) -> list[str]:
        prefix = []
        if setpriv := shutil.which("setpriv"):
            prefix = [setpriv, "--pdeathsig", "KILL", "--"]
        return [*prefix, "unshare", "--mount", "--pid", "--fork", "--kill-child=SIGKILL",
                "sh", "-c", _ENTER, "arm-device", str(self.rootfs), str(self.upper),
                str(self.work), str(self.merged), str(self.config_file),
                str(self.sshd_dir), str(self.sim.dir), str(self.share)]

    def start(self) -> None:
        super().start()
        assert self._process is not None
        init = [p for p in _descendants(self._process.proc.pid)]
        if init:
            with contextlib.suppress(OSError):
                self.pid_namespace = os.readlink(f"/proc/{init[0]}/ns/pid")

    def run(self, *command: str, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on the device over ssh (pinned host key), capturing its output."""
        return subprocess.run(self.ssh_argv(shlex.join(command)), capture_output=True,
                              text=True, timeout=timeout)

    def inventory_vars(self) -> dict[str, Any]:
        """As a Pi's inventory says it: default root and ``python3``, plus the sensors' env."""
        return {**super().inventory_vars(), "edgefleet_root": DEVICE_ROOT,
                "edgefleet_python": "python3"}


def namespace_members(pid_namespace: str) -> list[int]:
    """Live processes in the PID namespace ``pid:[inode]`` (empty once a device is stopped).
    Zombies do not count: they have exited and only wait for a parent to collect their status
    (an init killed with its test process is reparented to the host's init, which may take a
    moment)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/pid") != pid_namespace:
                    continue
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if state not in ("Z", "X"):
                    found.append(int(entry))
    return found
