"""A device whose agent answers well-formed JSON of the wrong shape: numbers as strings, an
``active`` that is not an object. Real local-transport device, real DB, real pages; the
device's interpreter is a wrapper that runs the real agent for everything but the command
under test, which it answers itself, as a compromised or broken device could.

Before: a ``"temp_c": "95"`` stored by the minute's telemetry poll made the Fleet page and
/metrics answer 500 for everyone (a str compared with a float), and a rollback answered with
``"active": "x"`` died in a TypeError that left its Deployment row pending forever."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml
from fastapi.testclient import TestClient
from sqlmodel import select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Deployment, Device
from orchestrator.demo.simulate import create_simulated_device
from orchestrator.fleet import deploy
from orchestrator.fleet.agents import install_agents
from orchestrator.fleet.telemetry import take_snapshots
from orchestrator.inventory.devices import all_devices, sync_inventory
from orchestrator.inventory.reader import load_inventory
from web.app import create_app

# The device's "python": the real one, but ``COMMAND`` gets ``ANSWER`` (one result line).
WRAPPER = """
import json, os, sys
if sys.argv[-1] == os.environ["HOSTILE_COMMAND"]:
    sys.stdin.read()
    print(json.dumps({"v": 1, "type": "result", "ok": True,
                      "command": sys.argv[-1], "data": json.loads(os.environ["HOSTILE_DATA"])}))
    sys.exit(0)
os.execv({python!r}, [{python!r}, *sys.argv[1:]])
"""
HOT_STRINGS = {"sensors": {"temp_c": "95", "throttled": "0x50000", "freq_mhz": [1],
                           "throttle_flags": {"now": [1, {"x": 2}], "since_boot": "all"}},
               "load_1m": "9", "disk_free_bytes": -5, "cores": True, "mem_total_mb": 1e400}


def hostile_device(tmp_path: Path, home: Path, command: str, data: object) -> Settings:
    wrapper = tmp_path / "hostile-python"
    wrapper.write_text(f"#!{sys.executable}\n" + WRAPPER.replace("{python!r}",
                                                                  repr(sys.executable)))
    wrapper.chmod(0o755)
    sim = create_simulated_device(tmp_path / "sim")
    host = sim.local_host_vars(tmp_path / "root", str(wrapper))
    host["edgefleet_env"] = {**host["edgefleet_env"], "HOSTILE_COMMAND": command,
                             "HOSTILE_DATA": json.dumps(data)}
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"pi-evil": host}}}))
    settings = Settings(home=home)
    with session_scope(settings) as session:
        sync_inventory(session, load_inventory(inventory))
        devices = all_devices(session)
    _, installed = install_agents(settings, devices)
    assert installed[0].ok, installed[0].error
    return settings


def devices_of(settings: Settings) -> list[Device]:
    with session_scope(settings) as session:
        return all_devices(session)


def test_strings_for_numbers_in_telemetry_break_no_page(home: Path, tmp_path: Path) -> None:
    settings = hostile_device(tmp_path, home, "telemetry", HOT_STRINGS)
    (tmp_path / "root" / "current").write_text("not a symlink")  # so the agent must answer
    (outcome,) = take_snapshots(settings, devices_of(settings))
    assert outcome.ok, outcome.error
    assert outcome.data["temp_c"] is None and outcome.data["disk_free_bytes"] is None
    (device,) = devices_of(settings)
    sensors = device.facts["sensors"]
    assert sensors["temp_c"] is None and sensors["throttled"] is None
    assert sensors["throttle_flags"] is None and sensors["freq_mhz"] is None
    client = TestClient(create_app(settings, run_jobs=False), base_url="http://127.0.0.1")
    for path in ("/", "/?sort=temp", "/metrics", "/devices/pi-evil", "/api/devices"):
        assert client.get(path).status_code == 200, path


def test_a_non_object_active_closes_the_deployment_row(home: Path, tmp_path: Path) -> None:
    settings = hostile_device(tmp_path, home, "rollback", {"active": "x", "recovered": "y"})
    (outcome,) = deploy.rollback(settings, devices_of(settings))
    assert not outcome.ok and "rollback answer names no active version" in outcome.error
    with session_scope(settings) as session:
        (row,) = session.exec(select(Deployment)).all()
    assert (row.operation, row.state) == ("rollback", "failed") and row.finished_at is not None


def test_data_that_is_not_an_object_is_refused_naming_the_device(home: Path,
                                                                 tmp_path: Path) -> None:
    settings = hostile_device(tmp_path, home, "rollback", [1, 2, 3])
    (outcome,) = deploy.rollback(settings, devices_of(settings))
    assert not outcome.ok and outcome.error.startswith(
        "pi-evil: the agent answered a result that is not a JSON object (list)")
    with session_scope(settings) as session:
        (row,) = session.exec(select(Deployment)).all()
    assert row.state == "failed" and row.finished_at is not None
    assert os.environ.get("HOSTILE_COMMAND") is None  # the device's env only


def test_rows_stored_before_answers_were_checked_break_no_page(home: Path,
                                                               tmp_path: Path) -> None:
    """A device row written by an older version from a hostile answer (as it was stored)."""
    settings = hostile_device(tmp_path, home, "none", {})
    with session_scope(settings) as session:
        (device,) = all_devices(session)
        device.facts = {"sensors": {"temp_c": "95", "throttled": "0x50000",
                                    "throttle_flags": "all", "throttled_hex": 5},
                        "onnxruntime": "1.2"}
        session.add(device)
    client = TestClient(create_app(settings, run_jobs=False), base_url="http://127.0.0.1")
    for path in ("/", "/?sort=temp", "/metrics", "/devices/pi-evil", "/api/devices"):
        assert client.get(path).status_code == 200, path
    with session_scope(settings) as session:
        session.exec(select(Device)).one().facts = {"sensors": ["not", "an", "object"]}
    for path in ("/", "/metrics", "/api/devices"):
        assert client.get(path).status_code == 200, path


def test_facts_of_the_wrong_types_are_stored_typed(home: Path, tmp_path: Path) -> None:
    """The install's ``facts`` answered with every field of the wrong type: the install says
    what is missing, and what is stored (and shown, and sorted on) has its types."""
    hostile = {"agent_version": {"x": 1}, "python": "3", "onnxruntime": ["1.2"], "numpy": 5,
               "cores": "4", "ram_mb": -1, "pi_model": 7, "pinned_keys": "all",
               "sensors": {"temp_c": "95"}, "disk_free_bytes": "lots", "os": ["x"]}
    settings = hostile_device(tmp_path, home, "none", {})
    wrapper_env = {"HOSTILE_COMMAND": "facts", "HOSTILE_DATA": json.dumps(hostile)}
    with session_scope(settings) as session:
        (device,) = all_devices(session)
        device.env = {**device.env, **wrapper_env}
        session.add(device)
    (outcome,) = install_agents(settings, devices_of(settings))[1]
    assert outcome.state == "missing-deps" and "numpy" in outcome.error, outcome
    (device,) = devices_of(settings)
    assert device.agent_version is None
    facts = device.facts
    assert facts["cores"] is None and facts["python"] is None and facts["numpy"] is None
    assert facts["sensors"]["temp_c"] is None and facts["pinned_keys"] is None
    client = TestClient(create_app(settings, run_jobs=False), base_url="http://127.0.0.1")
    for path in ("/", "/?sort=temp", "/metrics", "/devices/pi-evil", "/api/devices"):
        assert client.get(path).status_code == 200, path
