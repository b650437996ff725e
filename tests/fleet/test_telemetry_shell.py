"""The telemetry poll starts no Python on the device (agent.shellpoll, issue 14) and answers
exactly as the agent's ``telemetry`` does; anything unusual is left to the agent.

Over a real sshd with simulated sensors (an under-voltage Pi at 77 °C) and an active bundle.
The device's Python is a wrapper that counts its starts, so "no Python" is observed on the
device, not inferred.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from orchestrator.core.config import get_settings
from orchestrator.core.db import session_scope
from orchestrator.fleet.agentclient import call_agent
from orchestrator.fleet.telemetry import read_telemetry
from orchestrator.inventory.devices import get_device, to_target
from orchestrator.transport import connect

from ..conftest import Cli
from .sshd import write_inventory
from .test_push_e2e import model_folder, setup_fleet

VOLATILE = {"load_1m", "load_5m", "load_15m", "mem_available_mb", "disk_free_bytes", "uptime_s"}


def counting_python(tmp_path: Path) -> tuple[Path, Path]:
    starts = tmp_path / "python-starts"
    wrapper = tmp_path / "python3-counting"
    wrapper.write_text(f"#!/bin/sh\necho start >> '{starts}'\nexec '{sys.executable}' \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper, starts


def started(starts: Path) -> int:
    return len(starts.read_text().splitlines()) if starts.exists() else 0


def test_poll_starts_no_python_and_answers_as_the_agent(cli: Cli, sshd_factory,
                                                        tmp_path: Path) -> None:
    (host,) = sshd_factory(1)
    host.sim.set_temp(77.0)
    host.sim.set_throttled(0x50000)
    wrapper, starts = counting_python(tmp_path)
    setup_fleet(cli, tmp_path, [host], **{host.name: {"edgefleet_python": str(wrapper)}})
    cli("bundle", "build", model_folder(tmp_path), "--name", "first-crack")
    assert cli("push", "first-crack", host.name, "--json").json[0]["state"] == "active"
    assert started(starts) > 0  # the wrapper is the device's Python

    before = started(starts)
    snap = cli("telemetry", host.name, "--json").json[0]
    assert started(starts) == before  # the poll started no Python on the device
    assert snap["temp_c"] == 77.0 and snap["throttled_hex"] == "0x50000"
    assert set(snap["throttle_since_boot"]) == {"under_voltage", "throttled"}
    shown = cli("devices", "show", host.name, "--json").json
    assert shown["active_bundle"] == "first-crack@1"

    settings = get_settings()
    with session_scope(settings) as session:
        target = to_target(get_device(session, host.name))
    with connect(target, settings) as conn:
        shell = read_telemetry(conn)
        assert started(starts) == before
        agent = call_agent(conn, "telemetry")
    assert started(starts) == before + 1
    assert set(shell) == set(agent)
    assert {k: v for k, v in shell.items() if k not in VOLATILE} == {
        k: v for k, v in agent.items() if k not in VOLATILE}
    assert shell["active"]["name"] == "first-crack" and shell["sensors"]["temp_c"] == 77.0

    # Something unusual on the device: `current` is a directory someone copied there. Only
    # the agent says what it is (current_error); the poll hands over to it.
    current = host.root / "current"
    target_dir = current.resolve()
    current.unlink()
    shutil.copytree(target_dir, current)
    before = started(starts)
    snap = cli("telemetry", host.name, "--json").json[0]
    assert started(starts) == before + 1
    assert "not the symlink to the active version" in snap["problem"]


def test_a_device_without_the_agent_gets_the_agents_error(cli: Cli, sshd_factory,
                                                          tmp_path: Path) -> None:
    """The poll needs no agent, but a device without one says so as before (run agent install),
    rather than answering as if it were set up."""
    (host,) = sshd_factory(1)
    setup_fleet(cli, tmp_path, [host])
    (host.root / "agent").rename(host.root / "agent-moved")
    failed = cli("telemetry", host.name, "--json", expect=1).json[0]
    assert failed["state"] == "failed" and "agent install" in failed["error"]


def kex_lines(host) -> list[str]:  # noqa: ANN001 - an SshdHost
    return [line.split("kex: algorithm: ", 1)[1].split()[0] for line in host.log_text().splitlines()
            if "kex: algorithm: " in line]


def test_a_poll_prefers_curve25519_and_a_push_keeps_the_default(cli: Cli, sshd_factory,
                                                                 tmp_path: Path) -> None:
    """The poll's key exchange is the classical Curve25519 (sshclient.poll_kex: ~60 ms less CPU
    on each side than OpenSSH 9's post-quantum default); a push keeps the default, and does
    not reuse a poll's persistent connection, nor a poll the push's (transport.sshpersist:
    the key exchange is part of the socket's name). Read from the device's sshd log (DEBUG1
    logs each connection's choice)."""
    (host,) = sshd_factory(1, log_level="DEBUG1")
    inventory = write_inventory(tmp_path / "inventory.yml", [host])
    cli("inventory", "sync", inventory)
    cli("devices", "trust", host.name)  # paramiko or ssh-keyscan: their own key exchanges
    before = len(kex_lines(host))
    cli("agent", "install", host.name)
    cli("bundle", "build", model_folder(tmp_path), "--name", "first-crack")
    assert cli("push", "first-crack", host.name, "--json").json[0]["state"] == "active"
    pushed = kex_lines(host)[before:]  # the install's, and the push's if it made its own
    assert pushed and all(k.startswith("sntrup761x25519") for k in pushed), pushed
    before = len(kex_lines(host))
    cli("telemetry", host.name, "--json")
    assert kex_lines(host)[before:] == ["curve25519-sha256"]


def test_a_device_offering_only_post_quantum_kex_is_still_polled(cli: Cli, sshd_factory,
                                                                 tmp_path: Path) -> None:
    """The device decides: a server without Curve25519 negotiates the next one offered. It
    offers nothing else, so `devices trust` cannot read its key through paramiko (no
    sntrup761) and asks ssh-keyscan instead, without paramiko's traceback on stderr."""
    (host,) = sshd_factory(1, kex="sntrup761x25519-sha512@openssh.com", log_level="DEBUG1")
    setup_fleet(cli, tmp_path, [host])  # trusted: the fingerprint is the host's own
    again = cli("devices", "trust", host.name, "--json")
    assert again.json[0]["state"] == "already trusted"
    assert "Traceback" not in again.stderr and "Incompatible" not in again.stderr, again.stderr
    snap = cli("telemetry", host.name, "--json").json[0]
    assert snap["state"] == "ok" and snap["temp_c"] is not None
    assert kex_lines(host)[-1] == "sntrup761x25519-sha512@openssh.com"
