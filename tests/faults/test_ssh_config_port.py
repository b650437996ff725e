"""Fault: ``~/.ssh/config``'s ``Port`` was ignored. A device whose inventory gives no
``ansible_port`` gets port 22, and that 22 was passed to Fabric explicitly, overriding the
``Port`` of a matching ``Host`` block (its HostName, User and IdentityFile were honoured). Here a
real sshd listens on a free loopback port known only to the user's ssh config: the connection
must reach it, and an explicit other port in the inventory must still win."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.config import Settings
from orchestrator.core.errors import HostKeyError, TransportError
from orchestrator.transport.base import Target
from orchestrator.transport.hostkeys import load_known, trust
from orchestrator.transport.ssh import SshConnection, ssh_destination
from tests.fleet.sshd import SshdFactory, free_port


@pytest.mark.timeout(60)
def test_ssh_config_port_is_used_when_the_inventory_gives_none(
        sshd_factory: SshdFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = sshd_factory(1)[0]
    home = tmp_path / "user-home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host roaster-pi\n  HostName 127.0.0.1\n  Port {host.port}\n  User {host.user}\n"
        f"  IdentityFile {host.key_file}\n")
    monkeypatch.setenv("HOME", str(home))  # Fabric reads ~/.ssh/config per connection
    target = Target("roaster-pi", "roaster-pi")  # port 22: the inventory's default
    assert target.port == 22
    # `devices trust` records the key where the connection will look for it
    assert ssh_destination("roaster-pi", 22) == ("127.0.0.1", host.port)
    settings = Settings(home=tmp_path / "edgefleet-home")  # trusted keys live in its DB
    result = trust("roaster-pi", *ssh_destination("roaster-pi", 22), settings, 10.0)
    assert result.fingerprint == host.host_key_fingerprint
    known = load_known(settings)
    with SshConnection(target, known, 10.0) as conn:
        channel = conn.start(["echo", "reached"])
        assert channel.readline() == "reached\n"
    # An explicit port other than 22 still wins over the ssh config (nothing listens there).
    closed = Target("roaster-pi", "roaster-pi", port=free_port())
    with pytest.raises(TransportError, match=rf"roaster-pi:{closed.port}"):
        SshConnection(closed, known, 5.0)


@pytest.mark.timeout(60)
def test_a_proxyjump_host_with_an_unknown_key_is_refused(
        sshd_factory: SshdFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """~/.ssh/config sends the device through a ProxyJump host. Fabric built that hop with its
    AutoAddPolicy: any key the jump host showed was accepted and handed the login. Now its key
    must be in the user's ~/.ssh/known_hosts, as OpenSSH's own jump requires; the device's
    key is still checked against EdgeFleet's trusted keys."""
    jump, device = sshd_factory(2)
    home = tmp_path / "user-home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host bastion\n  HostName 127.0.0.1\n  Port {jump.port}\n  User {jump.user}\n"
        f"  IdentityFile {jump.key_file}\n"
        f"Host lab-pi\n  HostName 127.0.0.1\n  Port {device.port}\n  User {device.user}\n"
        f"  IdentityFile {device.key_file}\n  ProxyJump bastion\n")
    monkeypatch.setenv("HOME", str(home))
    settings = Settings(home=tmp_path / "edgefleet-home")
    trust("lab-pi", *ssh_destination("lab-pi", 22), settings, 10.0)  # the device's key only
    target = Target("lab-pi", "lab-pi")
    with pytest.raises(HostKeyError, match=r"lab-pi: the host key of its jump host bastion "
                                           r"\(\[127\.0\.0\.1\]:\d+, ProxyJump .* is not in "
                                           r"~/\.ssh/known_hosts .*`ssh bastion` once"):
        SshConnection(target, load_known(settings), 10.0)
    # Its key in the user's known_hosts (as `ssh bastion` once would leave it): through.
    jump.write_known_hosts(home / ".ssh" / "known_hosts")
    with SshConnection(target, load_known(settings), 10.0) as conn:
        assert conn.start(["echo", "reached"]).readline() == "reached\n"
    # Another key on record for the jump host: its change is named, and where to fix it.
    (home / ".ssh" / "known_hosts").write_text(
        f"[127.0.0.1]:{jump.port} {device.host_public_key_line}\n")
    with pytest.raises(HostKeyError, match=r"lab-pi: HOST KEY CHANGED for its jump host "
                                           r"127\.0\.0\.1 \(ProxyJump.*replace its "
                                           r"line in ~/\.ssh/known_hosts"):
        SshConnection(target, load_known(settings), 10.0)
