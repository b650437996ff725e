"""A small real fleet in an EDGEFLEET_HOME for page-by-page browser checks, made the way
``edgefleet demo`` makes its own: three simulated local Pis (real agent, real onnxruntime,
simulated sensors only: one hot without a cooler, one clean, one with a weak supply), two
versions of a real ONNX bundle pushed and benchmarked at 1 and 2 threads, telemetry read
three times, a telemetry job and a cron schedule. ``make_fleet`` returns what pages to visit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.artifacts.bundles import build_bundle
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.demo.model import make_demo_classifier
from orchestrator.demo.simulate import SimulatedDevice, create_simulated_device
from orchestrator.fleet.agents import install_agents
from orchestrator.fleet.deploy import push
from orchestrator.fleet.telemetry import take_snapshots
from orchestrator.inventory.devices import all_devices, sync_inventory
from orchestrator.inventory.reader import load_inventory
from orchestrator.jobs import queue, schedules
from orchestrator.measure.runs import BenchParams, bench

HOT, COOL, WEAK = "pi5-hot", "pi5-cool", "pi4-weak"
SPECS = {  # name: (group, Pi model, temp C, freq MHz, get_throttled bits, labels)
    HOT: ("roastery", "Raspberry Pi 5 Model B Rev 1.0", 82.5, 1500.0, 0xE0008,
          {"cooler": "none"}),
    COOL: ("roastery", "Raspberry Pi 5 Model B Rev 1.0", 51.0, 2400.0, 0x0,
           {"cooler": "active"}),
    WEAK: ("lab", "Raspberry Pi 4 Model B Rev 1.5", 58.0, 1800.0, 0x50000,
           {"psu": "phone charger"}),
}
SHAPES = {"log_mel": [1, 1, 98, 40]}


@dataclass
class Fleet:
    settings: Settings
    refs: list[str]  # first-crack@1, first-crack@2
    runs: list[int]  # one bench run per version
    job_id: int
    schedule_id: int
    sims: dict[str, SimulatedDevice] = field(default_factory=dict)

    def pages(self) -> dict[str, str]:
        """Every page a viewer or admin can open, by a short name."""
        a, b = self.runs
        return {
            "fleet": "/", "device": f"/devices/{HOT}", "bundles": "/bundles",
            "bundle": f"/bundles/{self.refs[-1]}", "runs": "/runs", "run": f"/runs/{b}",
            "compare": f"/runs/compare?a={a}&b={b}", "compare-home": "/runs/compare",
            "jobs": "/jobs", "job": f"/jobs/{self.job_id}", "benchmarks": "/benchmarks",
            "trends": "/trends", "audit": "/audit", "inventory": "/fleet/inventory",
            "schedule": f"/benchmarks/schedules/{self.schedule_id}/edit",
        }


def make_fleet(home: Path, work: Path) -> Fleet:
    settings = Settings(home=home, database_url=None)
    groups: dict[str, dict[str, Any]] = {}
    sims = {}
    for name, (group, model, temp, freq, bits, labels) in SPECS.items():
        sims[name] = create_simulated_device(work / "hw" / name, model=model, temp_c=temp,
                                             freq_mhz=freq, throttled=bits)
        groups.setdefault(group, {})[name] = sims[name].local_host_vars(
            work / "root" / name) | labels
    inventory = work / "inventory.yml"
    inventory.write_text(yaml.safe_dump(
        {"all": {"children": {g: {"hosts": h} for g, h in groups.items()}}}))
    with session_scope(settings) as session:
        sync_inventory(session, load_inventory(inventory))
        devices = all_devices(session)
        session.expunge_all()
    assert all(o.ok for o in install_agents(settings, devices)[1])
    refs, runs = [], []
    for seed in (0, 1):
        model_dir = work / f"model{seed}"
        model_dir.mkdir()
        make_demo_classifier(model_dir / "model.onnx", seed=seed)
        with session_scope(settings) as session:
            bundle = build_bundle(session, settings, model_dir, "first-crack",
                                  input_shapes=SHAPES).bundle
            session.expunge_all()
        assert all(o.ok for o in push(settings, bundle, devices))
        (run,), outcomes = bench(settings, [bundle], devices,
                                 BenchParams(threads=[1, 2], runs=5, warmup=1), "all")
        assert all(o.ok for o in outcomes)
        refs.append(f"{bundle.name}@{bundle.version}")
        runs.append(int(run.id))  # type: ignore[arg-type]
        take_snapshots(settings, devices)
    sims[HOT].set_temp(84.0)
    take_snapshots(settings, devices)
    job = queue.submit(settings, "telemetry", {}, "all", actor="tester")
    schedule = schedules.create(settings, "bench", {"bundle": refs[-1], "threads": [1, 2]},
                                "roastery", actor="tester", cron="0 3 * * *")
    return Fleet(settings, refs, runs, int(job.id), int(schedule.id),  # type: ignore[arg-type]
                 sims)
