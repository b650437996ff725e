"""A push records its outcome while it still holds the device's lease, and stops an early
session to a device another operation took meanwhile.

Before, the Deployment row and the device's active version were written after the lease was
released: a push of another version waiting for the device could then run and record first,
and the late write put the older version back as the device's active one (likely at forks
200, where writes queue for seconds). Real local-transport device, real agent and
onnxruntime, real DB; the check is made from inside the recording itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from orchestrator.artifacts.bundles import build_bundle
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Bundle, Device, DeviceLease
from orchestrator.demo.model import make_demo_classifier
from orchestrator.demo.simulate import create_simulated_device
from orchestrator.fleet import deploy
from orchestrator.fleet.agents import install_agents
from orchestrator.inventory.devices import all_devices, get_device, sync_inventory
from orchestrator.inventory.reader import load_inventory


def _lab(tmp_path: Path) -> tuple[Settings, list[Bundle], list[Device]]:
    """One simulated local device with its agent, and two versions of a bundle."""
    import sys

    sim = create_simulated_device(tmp_path / "sim")
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {
        "pi-a": sim.local_host_vars(tmp_path / "root", sys.executable)}}}))
    settings = Settings(home=tmp_path / "home", database_url=None)
    bundles = []
    with session_scope(settings) as session:
        sync_inventory(session, load_inventory(inventory))
        for seed in (0, 1):
            model = tmp_path / f"model{seed}"
            make_demo_classifier(model / "model.onnx", seed=seed)
            (model / "config.json").write_text(json.dumps({"id2label": {0: "a", 1: "b"}}))
            bundles.append(build_bundle(session, settings, model, "crack").bundle)
        devices = all_devices(session)
        session.expunge_all()
    assert all(o.ok for o in install_agents(settings, devices)[1])
    return settings, bundles, devices


def test_the_outcome_is_recorded_before_the_lease_is_released(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, bundles, devices = _lab(tmp_path)
    held_while_recording: list[bool] = []
    record = deploy._finish

    def finish_and_look(*args, **kwargs):  # type: ignore[no-untyped-def]
        with session_scope(settings) as session:
            held_while_recording.append(session.get(DeviceLease, "pi-a") is not None)
        return record(*args, **kwargs)

    monkeypatch.setattr(deploy, "_finish", finish_and_look)
    for bundle in bundles:
        (outcome,) = deploy.push(settings, bundle, devices)
        assert outcome.ok, outcome.error
    assert held_while_recording == [True, True]
    with session_scope(settings) as session:
        device = get_device(session, "pi-a")
        assert device.active_digest == bundles[1].digest
        assert session.get(DeviceLease, "pi-a") is None  # released after


def test_an_early_push_to_a_device_taken_meanwhile_stops_before_the_wait(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CLI push starts streaming early (fleet.early); before it adopts that session another
    operation takes the device. Before, the push kept streaming to the busy device for as
    long as it waited for it (up to EDGEFLEET_LEASE_WAIT_S, skewing a bench's numbers); now
    the early session is stopped before the wait, and the push starts afresh once it holds
    the device."""
    import threading

    from orchestrator.fleet import early, leases

    settings, bundles, devices = _lab(tmp_path)
    stopped: list[str] = []
    discard = early.EarlyPush.discard

    def record_discard(self: early.EarlyPush) -> None:
        stopped.append("early")
        discard(self)

    monkeypatch.setattr(early.EarlyPush, "discard", record_discard)
    monkeypatch.setattr(early, "_attempted", False)
    monkeypatch.setenv("EDGEFLEET_HOME", str(settings.home))  # where it reads the rows
    assert early.start(settings, "crack@1", "pi-a", forks=1, timeout=30) == 1
    leases.acquire(settings, "pi-a", "bench", "lab-b.example:4242:benching")
    waiting = threading.Event()

    def on_wait(device: str, text: str | None) -> None:
        if text is not None:
            stopped.append("waiting")
            waiting.set()

    policy = leases.Waiting(None, 60, on_wait, lambda device: None, poll_s=0.05)
    outcomes = []

    def push() -> None:
        with leases.waiting_as(policy):
            outcomes.extend(deploy.push(settings, bundles[0], devices))

    pushing = threading.Thread(target=push)
    pushing.start()
    try:
        assert waiting.wait(60), (stopped, outcomes)
        assert stopped == ["early", "waiting"]  # stopped first, then waited
    finally:
        leases.release(settings, "pi-a", "lab-b.example:4242:benching")
        pushing.join(120)
    (outcome,) = outcomes
    assert outcome.ok, outcome.error
