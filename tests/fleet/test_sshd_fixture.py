"""The real-sshd test hosts behave like reachable, strictly-keyed Pis — and go away cleanly."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .sshd import SshdFactory, SshdHost, UserKey, free_port


def _ssh(host: SshdHost, known_hosts: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """The real OpenSSH client, strict host key checking against ``known_hosts`` only."""
    return subprocess.run(
        [
            "ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
            "-i", str(host.key_file), "-p", str(host.port), f"{host.user}@127.0.0.1", *command,
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def _refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_three_hosts_accept_the_user_key_with_strict_host_checking(
    sshd_factory: SshdFactory, tmp_path: Path
) -> None:
    hosts = sshd_factory(3)
    assert [h.name for h in hosts] == ["pi1", "pi2", "pi3"]
    assert len({h.port for h in hosts}) == 3
    assert len({h.host_key_fingerprint for h in hosts}) == 3, "each host has its own key"
    for host in hosts:
        known_hosts = tmp_path / f"known_hosts_{host.name}"
        known_hosts.write_text(f"[127.0.0.1]:{host.port} {host.host_public_key_line}\n")
        result = _ssh(host, known_hosts, "echo", "ok", "from", "$(id -un)")
        assert result.returncode == 0, result.stderr + host.log_text()
        assert result.stdout == f"ok from {host.user}\n"


def test_unknown_host_key_is_rejected(sshd_factory: SshdFactory, tmp_path: Path) -> None:
    first, second = sshd_factory(2)
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{first.port} {second.host_public_key_line}\n")
    result = _ssh(first, wrong, "echo", "ok")
    assert result.returncode == 255
    assert "ok" not in result.stdout
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr


def test_fingerprint_matches_ssh_keygen(sshd_factory: SshdFactory) -> None:
    for host in sshd_factory(3):
        listed = subprocess.run(
            ["ssh-keygen", "-lf", f"{host.host_key_file}.pub"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert listed[1] == host.host_key_fingerprint
        assert host.host_key_fingerprint.startswith("SHA256:")
        assert not host.host_key_fingerprint.endswith("=")
        assert host.known_hosts_line == f"[127.0.0.1]:{host.port} {host.host_public_key_line}"


def test_stop_refuses_connections_and_start_comes_back(sshd_factory: SshdFactory) -> None:
    (host,) = sshd_factory(1)
    pid = host.pid
    assert pid is not None and not _refuses(host.port)
    host.stop()
    assert not host.running
    assert _refuses(host.port)
    assert not Path(f"/proc/{pid}").exists(), "sshd process is reaped"
    host.stop()  # idempotent
    host.start()
    result = subprocess.run(host.ssh_argv("echo", "back"), capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, "back\n"), result.stderr


def test_stop_ends_open_sessions(sshd_factory: SshdFactory) -> None:
    (host,) = sshd_factory(1)
    client = subprocess.Popen(
        host.ssh_argv("echo started; exec sleep 300.123"), stdout=subprocess.PIPE, text=True
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == "started\n"  # the session is up
        host.stop()
        assert client.wait(timeout=15) != 0, "the connection was cut"
        assert _refuses(host.port)
    finally:
        client.kill()
        client.wait()
    stray = subprocess.run(["pgrep", "-x", "-f", "sleep 300.123"], capture_output=True, text=True)
    assert stray.stdout == "", "the remote command was killed with its session"


def test_regenerate_host_key_changes_fingerprint_and_trips_strict_checking(
    sshd_factory: SshdFactory, tmp_path: Path
) -> None:
    (host,) = sshd_factory(1)
    old_fingerprint, port = host.host_key_fingerprint, host.port
    old_known = host.write_known_hosts(tmp_path / "old_known_hosts")
    assert _ssh(host, old_known, "true").returncode == 0

    new_fingerprint = host.regenerate_host_key()

    assert new_fingerprint == host.host_key_fingerprint != old_fingerprint
    assert host.running and host.port == port, "same address, different key"
    stale = _ssh(host, old_known, "true")
    assert stale.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in stale.stderr
    fresh = _ssh(host, host.write_known_hosts(tmp_path / "new_known_hosts"), "echo", "ok")
    assert (fresh.returncode, fresh.stdout) == (0, "ok\n"), fresh.stderr


def test_taken_port_is_retried_on_another(tmp_path: Path, ssh_user_key: UserKey) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", free_port()))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with SshdHost("squat", tmp_path, ssh_user_key, port=taken) as host:
            assert host.running and host.port != taken
            assert "Address already in use" in host.log_text()
            result = subprocess.run(host.ssh_argv("echo", "ok"), capture_output=True, text=True)
            assert result.stdout == "ok\n", result.stderr
        assert not host.running


def test_sim_env_drives_remote_vcgencmd_and_odd_root_survives_inventory(
    sshd_factory: SshdFactory, write_inventory, tmp_path: Path
) -> None:
    (host,) = sshd_factory(1, odd_root=True, odd_sim_dir=True, sim_options={"throttled": 0x5})
    assert " " in str(host.root) and "'" in str(host.root) and '"' in str(host.root)
    assert host.root.parent.is_dir() and not host.root.exists()

    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in host.sim.env.items())
    remote = f"env {exports} vcgencmd get_throttled"
    assert subprocess.run(host.ssh_argv(remote), capture_output=True, text=True).stdout == (
        "throttled=0x5\n"
    )
    host.sim.set_throttled(0x50000)
    assert subprocess.run(host.ssh_argv(remote), capture_output=True, text=True).stdout == (
        "throttled=0x50000\n"
    )

    path = write_inventory(
        tmp_path / "inv.yml", [host], extra_host_vars={host.name: {"room": "roastery #2"}}
    )
    inv = yaml.safe_load(path.read_text())
    hv = inv["all"]["children"]["pis"]["hosts"][host.name]
    assert hv == {
        "ansible_host": "127.0.0.1",
        "ansible_port": host.port,
        "ansible_user": host.user,
        "ansible_ssh_private_key_file": str(host.key_file),
        "edgefleet_root": str(host.root),
        "edgefleet_python": sys.executable,
        "edgefleet_env": host.sim.env,
        "room": "roastery #2",
    }
    assert os.path.isabs(hv["edgefleet_python"])

    flat = yaml.safe_load(write_inventory(tmp_path / "flat.yml", [host], group=None).read_text())
    assert list(flat["all"]["hosts"]) == [host.name]
    with pytest.raises(ValueError, match="nope"):
        write_inventory(tmp_path / "bad.yml", [host], extra_host_vars={"nope": {}})


def test_device_python_has_the_agent_dependencies(sshd_factory: SshdFactory) -> None:
    (host,) = sshd_factory(1)
    python = host.inventory_vars()["edgefleet_python"]
    probe = "import numpy, onnxruntime; print(onnxruntime.__version__)"
    result = subprocess.run(
        host.ssh_argv(shlex.join([python, "-c", probe])), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


@pytest.mark.timeout(60)
def test_a_remote_command_that_reads_none_of_its_input_is_abandoned(
        sshd_factory: SshdFactory, tmp_path: Path) -> None:
    """Over real SSH: once the channel window and sshd's pipe are full, a write waits for the
    remote command; after ``timeout`` seconds without progress it fails instead of hanging."""
    from orchestrator.core.errors import TransportError
    from orchestrator.transport.base import Target
    from orchestrator.transport.hostkeys import keys_from_file
    from orchestrator.transport.ssh import SshConnection

    host = sshd_factory(1)[0]
    known_hosts = host.write_known_hosts(tmp_path / "known_hosts")
    target = Target(host.name, "127.0.0.1", port=host.port, user=host.user,
                    key_file=str(host.key_file))
    # Before its first output a command also has the login's allowance (Channel.start_s):
    # here 1 s of silence + 2 s to log in and start.
    with SshConnection(target, keys_from_file(known_hosts), 10.0, login_s=2.0) as conn:
        channel = conn.start(["sleep", "60"], timeout=1.0)
        with pytest.raises(TransportError, match="read none of its input for 3s"):
            for _ in range(64):  # 16 MiB: well past the 2 MiB window and the pipe
                channel.write(b"x" * 256 * 1024)
        channel.abort()
        reader = conn.start(["sh", "-c", "cat > /dev/null; echo read"], timeout=1.0)
        for _ in range(64):
            reader.write(b"y" * 256 * 1024)
        reader.close_input()
        assert reader.readline() == "read\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("connector", ["openssh", "paramiko"])
def test_device_env_never_shows_in_a_command_line(
        connector: str, sshd_factory: SshdFactory, tmp_path: Path) -> None:
    """``edgefleet_env`` may carry tokens; command lines are world-readable (``ps``) on the
    controller (ssh's argv) and on the device (the login shell's ``-c``). Over real SSH, while
    the command runs, no process's command line holds the value, and the command has it.
    (Before: ``env API_TOKEN=...`` stayed in ssh's argv for the whole command; on the device
    the login shell execs at once, so over paramiko the leak was a short window.)"""
    from orchestrator.transport.base import Target
    from orchestrator.transport.hostkeys import keys_from_file
    from orchestrator.transport.openssh import OpenSshConnection
    from orchestrator.transport.ssh import SshConnection

    host = sshd_factory(1)[0]
    keys = keys_from_file(host.write_known_hosts(tmp_path / "known_hosts"))
    target = Target(host.name, "127.0.0.1", port=host.port, user=host.user,
                    key_file=str(host.key_file))
    secret = "tok-" + os.urandom(8).hex()
    conn = (OpenSshConnection(target, {k.get_name(): k.get_base64() for k in
                                       keys.lookup(f"[127.0.0.1]:{host.port}").values()}, 10.0)
            if connector == "openssh" else SshConnection(target, keys, 10.0))
    with conn:
        channel = conn.start(["sh", "-c", 'printf "%s\\n" "$API_TOKEN"; cat'],
                             env={"API_TOKEN": secret, "OTHER": "x\ny"}, timeout=10.0)
        assert channel.readline() == secret + "\n"  # running now: its shells are all started
        holders = [pid for pid in Path("/proc").iterdir() if pid.name.isdigit()
                   and secret.encode() in _cmdline(pid)]
        channel.write(b"after the env line\n")
        assert channel.readline() == "after the env line\n"
        code, _ = channel.finish()
    assert holders == []
    assert code == 0


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""  # exited while we looked
