"""A device that reboots under a persistent SSH connection (transport.sshpersist).

A Pi that loses power (the weak supply of the README's story) sends no FIN: the control
plane's persistent ``ssh`` masters still believe in their TCP connections, and the first packet
one sends once the Pi is back meets a kernel that never heard of it (a RST). The next command
must not fail for it: OpenSSH's multiplexing client, when the master dies before the session
is set up, falls back to a connection of its own (``ControlMaster=auto`` makes it the new
master). Emulated for real: the device's sshd runs in a network namespace behind a veth pair;
the pair is removed (no packet leaves the device), sshd and its sessions are killed, then the
pair comes back with the same addresses and sshd restarts with the same host key and port,
as a rebooted Pi.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import Cli
from .test_push_e2e import model_folder, setup_fleet
from .test_ssh_persist import logins, masters, socket_dir  # noqa: F401 - socket_dir: a fixture

HOST_ADDRESS, DEVICE_ADDRESS = "10.203.0.1", "10.203.0.2"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root "
                                "(scripts/test.sh runs as root in CI)")


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)  # noqa: S603


class Link:
    """The veth pair between this host and the device's namespace (names of this process's
    own: interface names are host-wide)."""

    def __init__(self, ns: str) -> None:
        self.ns, self.outside, self.inside = ns, f"efr{os.getpid()}o", f"efr{os.getpid()}i"

    def up(self) -> None:
        sh("ip", "link", "add", self.outside, "type", "veth", "peer", "name", self.inside)
        sh("ip", "link", "set", self.inside, "netns", self.ns)
        sh("ip", "addr", "add", f"{HOST_ADDRESS}/24", "dev", self.outside)
        sh("ip", "link", "set", self.outside, "up")
        inside = ("ip", "netns", "exec", self.ns, "ip")
        sh(*inside, "addr", "add", f"{DEVICE_ADDRESS}/24", "dev", self.inside)
        sh(*inside, "link", "set", self.inside, "up")

    def cut(self) -> None:
        """Power lost: the pair is gone, so nothing the device's kernel does reaches us."""
        sh("ip", "link", "del", self.outside)


@pytest.fixture
def link() -> Iterator[Link]:
    ns = f"efreboot{os.getpid()}"
    sh("ip", "netns", "add", ns)
    made = Link(ns)
    try:
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        made.up()
        yield made
    finally:
        subprocess.run(["ip", "link", "del", made.outside], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def test_the_first_commands_after_a_reboot_log_in_again(
        cli: Cli, sshd_factory, tmp_path: Path, link: Link, socket_dir: Path) -> None:  # noqa: F811
    (host,) = sshd_factory(1, netns=link.ns, address=DEVICE_ADDRESS)
    setup_fleet(cli, tmp_path, [host])  # agent install: its connection stays open
    assert cli("telemetry", host.name, "--json").json[0]["state"] == "ok"  # and the poll's
    cli("bundle", "build", model_folder(tmp_path), "--name", "first-crack")
    before, live = logins(host), masters()
    assert len(live) == 2, live

    link.cut()
    host.stop()  # its sessions too: their FINs go nowhere
    link.up()
    host.start()  # same port, same host key
    assert masters() == live  # stale: they know nothing of the reboot

    polled = cli("telemetry", host.name, "--json").json[0]
    assert polled["state"] == "ok", polled
    pushed = cli("push", "first-crack", host.name, "--json").json[0]
    assert pushed["state"] == "active", pushed
    assert logins(host) == before + 2  # one new login for each connection
    now = masters()
    assert len(now) == 2 and set(now.values()).isdisjoint(live.values()), (live, now)
