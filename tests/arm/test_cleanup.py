"""A test process that dies hard (SIGKILL: no teardown, no atexit) leaves no emulated device
behind: no sshd, no qemu, no mounts (they only ever existed in the device's namespace)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

from tests.fleet.sshd import UserKey

from .conftest import require_arm
from .device import namespace_members

REPO = Path(__file__).resolve().parents[2]
START = """
import sys
from pathlib import Path
from tests.arm.device import ArmHost
from tests.fleet.sshd import UserKey
key = UserKey(Path(sys.argv[2]), Path(sys.argv[2] + ".pub"))
host = ArmHost("pi-doomed", "bullseye", Path(sys.argv[1]), key)
print(host.pid_namespace, flush=True)
sys.stdin.read()
"""


def _wait_gone(pids: list[int], timeout: float) -> None:
    poller = select.poll()
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            continue
        poller.register(fds[-1], select.POLLIN)
    try:
        left = set(fds)
        while left:
            ready = poller.poll(timeout * 1000)
            if not ready:
                break
            for fd, _ in ready:
                poller.unregister(fd)
                left.discard(fd)
    finally:
        for fd in fds:
            os.close(fd)


def test_sigkilled_test_process_leaves_no_device(tmp_path: Path, ssh_user_key: UserKey) -> None:
    require_arm()
    proc = subprocess.Popen(
        [sys.executable, "-c", START, str(tmp_path), str(ssh_user_key.private_key)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    namespace = proc.stdout.readline().strip() if proc.stdout else ""
    assert namespace.startswith("pid:["), namespace
    members = namespace_members(namespace)
    assert members, "the device's sshd should be running"
    proc.kill()
    proc.wait()
    _wait_gone(members, 30.0)
    assert namespace_members(namespace) == []
    if proc.stdin:
        proc.stdin.close()
