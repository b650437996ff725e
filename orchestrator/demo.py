"""``edgefleet demo``: the whole flow on a machine with no Pi and no sshd.

Three simulated Pis run as local devices (``ansible_connection: local``) with fake sensors per
DESIGN.md; one runs hot without a cooler, one had a weak power supply. Everything else is real:
a real ONNX classifier, the real agent, real hashing, verification and activation.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from orchestrator.demo_model import make_demo_classifier
from orchestrator.simulate import SimulatedDevice, create_simulated_device

DEMO_BUNDLE = "first-crack"
LABELS = {"0": "no_first_crack", "1": "first_crack"}
INPUT_SHAPES = {"log_mel": [1, 1, 98, 40]}  # one ~1 s window of 40 log-mel bins


@dataclass(frozen=True)
class DemoDevice:
    name: str
    group: str
    model: str
    temp_c: float
    throttled: int
    labels: dict[str, str]


DEVICES = (
    DemoDevice("pi5-roaster", "roastery", "Raspberry Pi 5 Model B Rev 1.0", 82.5, 0xE0008,
               {"cooler": "none", "psu": "official 27W", "location": "roaster"}),
    DemoDevice("pi5-bench", "roastery", "Raspberry Pi 5 Model B Rev 1.0", 51.0, 0x0,
               {"cooler": "active", "psu": "official 27W", "location": "bench"}),
    DemoDevice("pi4-lab", "lab", "Raspberry Pi 4 Model B Rev 1.5", 58.0, 0x50000,
               {"cooler": "heatsink", "psu": "phone charger", "location": "lab"}),
)


@dataclass
class DemoFiles:
    home: Path
    inventory: Path
    model_dir: Path
    sims: dict[str, SimulatedDevice]


def prepare(home: Path) -> DemoFiles:
    """Write the simulated devices, their inventory and the model folder (idempotent)."""
    home.mkdir(parents=True, exist_ok=True)
    sims: dict[str, SimulatedDevice] = {}
    groups: dict[str, dict[str, dict]] = {}
    for spec in DEVICES:
        device_dir = home / "devices" / spec.name
        sim = create_simulated_device(device_dir / "hw", model=spec.model, temp_c=spec.temp_c,
                                      throttled=spec.throttled,
                                      freq_mhz=1500.0 if spec.temp_c > 80 else 2400.0)
        sims[spec.name] = sim
        host_vars = {
            "ansible_connection": "local",
            "edgefleet_root": str(device_dir / "root"),
            "edgefleet_python": sys.executable,
            "edgefleet_env": dict(sim.env),
            **spec.labels,
        }
        groups.setdefault(spec.group, {})[spec.name] = host_vars
    inventory = {"all": {"vars": {"site": "demo"},
                         "children": {g: {"hosts": hosts} for g, hosts in groups.items()}}}
    inventory_path = home / "inventory.yml"
    inventory_path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    model_dir = home / "models" / DEMO_BUNDLE
    model_dir.mkdir(parents=True, exist_ok=True)
    make_demo_classifier(model_dir / "model.onnx", seed=0)
    (model_dir / "config.json").write_text(json.dumps({"id2label": LABELS}, indent=2) + "\n")
    return DemoFiles(home, inventory_path, model_dir, sims)
