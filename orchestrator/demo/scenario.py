"""``edgefleet demo``: the whole flow on a machine with no Pi and no sshd.

Three simulated Pis run as local devices (``ansible_connection: local``) with fake sensors
(orchestrator/demo/simulate.py); one runs hot without a cooler, one had a weak power supply.
Everything else is real: a first-crack classifier trained (in numpy, seeded) on synthetic
roaster audio, its INT8 variant, a labelled WAV eval set the model never saw, the real agent,
hashing, verification, activation, smoke tests, benchmarks and on-device evaluation.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from orchestrator.core.errors import EdgeFleetError
from orchestrator.demo.audio import write_eval_set
from orchestrator.demo.model import TRAINED_STREAMING_PROFILE, make_trained_classifier
from orchestrator.demo.simulate import SimulatedDevice, create_simulated_device

if TYPE_CHECKING:
    import onnx

DEMO_BUNDLE = "first-crack"
MARKER = ".edgefleet-demo"  # written into every demo home: what `demo --fresh` may delete
SLOWER_DIR = "first-crack-v2-slower"
# v2 computes its first layer this many times over: ~10x v1's latency. Why so much: the demo
# must show the change point on any machine it runs on, loaded ones included; on a 2-core VM
# shared with other test suites, 3x (12 passes) was once not found (a slow v1 run and a slow
# v2 run made the two levels' t-test miss p < 1e-4, on wall-clock p50s).
SLOWER_PASSES = 40
DEMO_DATASET = "roast-windows"


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
    eval_dir: Path
    profile: Path
    sims: dict[str, SimulatedDevice]


def is_demo_home(home: Path) -> bool:
    """Whether ``home`` is a directory ``edgefleet demo`` made (its marker; or, made before
    the marker, its inventory, devices and models): only such a home may ``--fresh`` delete."""
    if (home / MARKER).is_file():
        return True
    return ((home / "inventory.yml").is_file() and (home / "devices").is_dir()
            and (home / "models" / DEMO_BUNDLE).is_dir())


def reset(home: Path) -> None:
    """``demo --fresh``: delete the demo home, refusing any directory the demo did not make
    (``--fresh --home ~`` deleted the user's home)."""
    if not home.exists():
        return
    if home.is_dir() and (not any(home.iterdir()) or is_demo_home(home)):
        shutil.rmtree(home)
        return
    raise EdgeFleetError(f"--fresh deletes only a demo home, and {home} is not one (no "
                         f"{MARKER}): nothing was deleted. Give --home a new or empty "
                         "directory, or one an earlier `edgefleet demo` made")


def prepare(home: Path, model_cache: Path | None = None) -> DemoFiles:
    """Write the simulated devices, their inventory and the model folder (idempotent).

    ``model_cache``: where the trained model is kept between runs (default: ``home/cache``;
    tests share one across the session: training takes ~10 s)."""
    if home.exists() and not home.is_dir():
        raise EdgeFleetError(f"the demo home {home} is a file, not a directory: give --home a "
                             "directory (it is created if missing)")
    home.mkdir(parents=True, exist_ok=True)
    (home / MARKER).write_text("made by `edgefleet demo`: `edgefleet demo --fresh` may delete "
                               "this directory\n")
    sims: dict[str, SimulatedDevice] = {}
    groups: dict[str, dict[str, dict]] = {}
    for spec in DEVICES:
        device_dir = home / "devices" / spec.name
        sim = create_simulated_device(device_dir / "hw", model=spec.model, temp_c=spec.temp_c,
                                      throttled=spec.throttled,
                                      freq_mhz=1500.0 if spec.temp_c > 80 else 2400.0)
        sims[spec.name] = sim
        host_vars = sim.local_host_vars(device_dir / "root") | spec.labels
        groups.setdefault(spec.group, {})[spec.name] = host_vars
    inventory = {"all": {"vars": {"site": "demo"},
                         "children": {g: {"hosts": hosts} for g, hosts in groups.items()}}}
    inventory_path = home / "inventory.yml"
    inventory_path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    model_dir = make_trained_classifier(home / "models" / DEMO_BUNDLE,
                                        cache_dir=model_cache or home / "cache")
    eval_dir = home / "eval" / DEMO_DATASET
    if not eval_dir.is_dir():  # written once, whole or not at all (then hashed into a dataset)
        staging = eval_dir.with_name(f".{DEMO_DATASET}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        write_eval_set(staging)
        staging.rename(eval_dir)
    profile = home / "models" / f"{DEMO_BUNDLE}.profile.json"
    profile.write_text(json.dumps(TRAINED_STREAMING_PROFILE, indent=2) + "\n")
    return DemoFiles(home, inventory_path, model_dir, eval_dir, profile, sims)


def _repeated_first_layer(model: onnx.ModelProto, passes: int) -> onnx.ModelProto:
    """``model`` with its first MatMul (``input_values`` x ``w1``) computed ``passes`` times,
    each from its own copy of the weights (so no optimizer merges them), and averaged: the same
    outputs (up to float rounding) for several times the work."""
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto.FromString(model.SerializeToString())
    graph = out.graph
    (first,) = [n for n in graph.node if n.op_type == "MatMul"
                and list(n.input) == ["input_values", "w1"]]
    (w1,) = [i for i in graph.initializer if i.name == "w1"]
    weights = numpy_helper.to_array(w1)
    graph.initializer.remove(w1)
    copies, products = [], []
    for n in range(passes):
        graph.initializer.append(numpy_helper.from_array(weights.copy(), f"w1_pass{n}"))
        products.append(f"m1_pass{n}")
        copies.append(helper.make_node("MatMul", ["input_values", f"w1_pass{n}"],
                                       [products[-1]]))
    nodes = list(graph.node)
    at = nodes.index(first)
    del graph.node[:]
    graph.node.extend(nodes[:at] + copies + [helper.make_node("Mean", products, ["m1"])]
                      + nodes[at + 1:])
    onnx.checker.check_model(out)
    return out


def write_slower_version(home: Path, model_dir: Path) -> Path:
    """The demo's deliberately slower second version of the first-crack bundle: the same
    network and files, its first layer computed ``SLOWER_PASSES`` times over (the kind of cost
    an export change adds without changing a single prediction). Returns the folder."""
    import onnx

    folder = home / "models" / SLOWER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        if item.is_file() and item.name != "model.onnx":
            shutil.copyfile(item, folder / item.name)
    slower = _repeated_first_layer(onnx.load(str(model_dir / "model.onnx")), SLOWER_PASSES)
    (folder / "model.onnx").write_bytes(slower.SerializeToString(deterministic=True))
    return folder
