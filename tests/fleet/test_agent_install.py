"""``edgefleet agent install`` over real SSH: facts, missing dependencies, --with-deps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..conftest import Cli
from .sshd import write_inventory

FACT_KEYS = {"pi_model", "arch", "cores", "ram_mb", "os", "kernel", "python", "onnxruntime",
             "numpy", "disk_free_bytes", "agent_version", "sensors"}


def test_install_records_facts(cli: Cli, sshd_factory, tmp_path: Path) -> None:
    host = sshd_factory(1, sim_options={"model": "Raspberry Pi 4 Model B Rev 1.5"})[0]
    cli("inventory", "sync", write_inventory(tmp_path / "inv.yml", [host]))
    cli("devices", "trust", "all")
    out = cli("agent", "install", "all", "--json").json[0]
    assert out["state"] == "installed" and out["model"] == "Raspberry Pi 4 Model B Rev 1.5"
    assert (host.root / "agent" / "edgefleet-agent.pyz").is_file()
    facts = cli("devices", "show", host.name, "--json").json["facts"]
    assert set(facts) >= FACT_KEYS
    assert facts["pi_model"] == "Raspberry Pi 4 Model B Rev 1.5"
    assert facts["onnxruntime"]["version"] and "CPUExecutionProvider" in facts[
        "onnxruntime"]["providers"]
    assert facts["simulated"] is True and facts["sensors"]["temp_c"] == 48.0
    # Installing again is harmless and replaces the zipapp atomically.
    assert cli("agent", "install", "all", "--json").json[0]["state"] == "installed"


def test_missing_deps_then_with_deps(cli: Cli, sshd_factory, tmp_path: Path) -> None:
    """A Python without numpy/onnxruntime is named with the fix; --with-deps makes a venv
    (with system site packages, so pip finds them already installed and needs no network)."""
    host = sshd_factory(1)[0]
    bare = tmp_path / "bare-python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    inventory = write_inventory(tmp_path / "inv.yml", [host],
                                extra_host_vars={host.name: {
                                    "edgefleet_python": str(bare / "bin" / "python")}})
    cli("inventory", "sync", inventory)
    cli("devices", "trust", "all")
    failed = cli("agent", "install", "all", "--json", expect=1).json[0]
    assert failed["state"] == "missing-deps"
    assert "numpy, onnxruntime" in failed["error"] and "--with-deps" in failed["error"]
    assert str(bare / "bin" / "python") in failed["error"]

    fixed = cli("agent", "install", "all", "--with-deps", "--json").json[0]
    assert fixed["state"] == "installed", fixed
    venv_python = host.root / "venv" / "bin" / "python"
    assert venv_python.exists()
    # Later agent commands use the venv's interpreter: a push works.
    from .test_push_e2e import model_folder

    cli("bundle", "build", model_folder(tmp_path), "--name", "m")
    assert cli("push", "m", "all", "--json").json[0]["state"] == "active"


def test_missing_interpreter_is_named(cli: Cli, sshd_factory, tmp_path: Path) -> None:
    host = sshd_factory(1)[0]
    inventory = write_inventory(tmp_path / "inv.yml", [host], extra_host_vars={
        host.name: {"edgefleet_python": "/opt/nowhere/python3"}})
    cli("inventory", "sync", inventory)
    cli("devices", "trust", "all")
    failed = cli("agent", "install", "all", "--json", expect=1).json[0]
    assert failed["state"] == "failed"
    assert "/opt/nowhere/python3" in failed["error"]


def test_trusting_keys_and_installing_agents_are_audited(cli: Cli, home: Path, sshd_factory,
                                                        tmp_path: Path) -> None:
    """The two steps that decide what EdgeFleet trusts and what code runs on a device leave an
    event naming who did it: a replaced host key with both fingerprints, the agent's sha256."""
    from orchestrator.access.audit import list_events, local_actor
    from orchestrator.core.config import Settings
    from orchestrator.core.db import session_scope

    host = sshd_factory(1)[0]
    cli("inventory", "sync", write_inventory(tmp_path / "inv.yml", [host]))
    cli("devices", "trust", "all")
    old = host.host_key_fingerprint
    new = host.regenerate_host_key()
    cli("devices", "trust", "all", expect=1)  # a changed key is refused ...
    cli("devices", "trust", "all", "--replace")  # ... until the user says it is expected
    installed = cli("agent", "install", "all", "--json").json[0]
    with session_scope(Settings(home=home)) as session:
        made = [e for e in reversed(list_events(session))
                if e.action in ("devices.trust", "agent.install")]
    assert [(e.action, e.target, e.actor) for e in made] == [
        ("devices.trust", "devices:all", local_actor())] * 3 + [
        ("agent.install", "devices:all", local_actor())]
    first, refused, replaced, install = (e.detail for e in made)
    assert first["devices"][0] | {"name": host.name} == {
        "name": host.name, "status": "added", "key_type": "ssh-ed25519", "fingerprint": old,
        "previous_fingerprint": None}
    assert refused["devices"][0]["status"] == "failed"
    assert (replaced["replace"], replaced["devices"][0]["status"]) == (True, "replaced")
    assert (replaced["devices"][0]["fingerprint"],
            replaced["devices"][0]["previous_fingerprint"]) == (new, old)
    assert install["devices"] == [host.name] and install["with_deps"] is False
    assert len(install["sha256"]) == 64 and installed["state"] == "installed"
