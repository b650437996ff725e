"""x86 vs aarch64: how far apart the same ONNX model's outputs are (issue 16).

    python bench/arm_numerics.py            # needs root, qemu-user-static, debootstrap (~10 min)
    python bench/arm_numerics.py --json

Through the product's own path: the demo's trained first-crack detector and a transformer-style
encoder (tests/arm/models.py) are built here on x86 as bundles, FP32 plus INT8 dynamic and INT8
static (calibrated), so their golden outputs are x86 onnxruntime's; each is pushed to the two
emulated Pis of tests/arm (Debian bookworm arm64 with onnxruntime 1.32, bullseye arm64 with
1.19.2) whose on-device smoke test reports the largest absolute and relative difference from the
golden outputs (``agent/smoke.compare``: relative = |a - e| / max(|e|, 1e-12)). The bundles are
built with tolerances wide enough that nothing is refused, so every difference is measured,
not just "within the default". qemu-user executes the aarch64 instructions onnxruntime chose
for an ARMv8 CPU (NEON; the dot-product kernels where qemu's CPU model offers them), so these
are ARM kernels' results, not x86's. Prints one row per model x precision x device, and what
the default tolerances (orchestrator/artifacts/golden.py) leave as margin.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.artifacts.golden import DEFAULT_TOLERANCES  # noqa: E402
from orchestrator.demo.model import make_trained_classifier  # noqa: E402
from tests.arm.device import ArmHost  # noqa: E402
from tests.arm.models import demo_calibration, make_transformer  # noqa: E402
from tests.arm.rootfs import SUITES, arm_ready  # noqa: E402
from tests.fleet.sshd import generate_user_key, write_inventory  # noqa: E402

WIDE = "1000"  # golden tolerance for the measuring builds: measure, never refuse
SILENCE = ("--timeout", "900")  # qemu: an agent command can be silent for minutes


def edgefleet(home: Path, *args: object) -> Any:
    env = {**os.environ, "EDGEFLEET_HOME": str(home), "PYTHONPATH": str(REPO)}
    done = subprocess.run(  # noqa: S603 - our own CLI, argv from this script
        [sys.executable, "-c", "from orchestrator.cli.main import main; main()",
         *[str(a) for a in args], "--json"], env=env, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"edgefleet {' '.join(map(str, args))}: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def build(home: Path, folder: Path, name: str, calibration: Path) -> list[str]:
    wide = ["--golden-rtol", WIDE, "--golden-atol", WIDE]
    edgefleet(home, "bundle", "build", folder, "--name", name, "--quantize", "int8", *wide)
    edgefleet(home, "bundle", "build", folder, "--name", name, "--quantize", "int8-static",
              "--calibration", calibration, *wide)
    return [f"{name}@1", f"{name}@1-int8", f"{name}@1-int8-static"]


def measure(work: Path) -> list[dict[str, Any]]:
    home = work / "home"
    key = generate_user_key(work / "key")
    hosts = [ArmHost(f"pi-{suite}", suite, work / "devices", key) for suite in SUITES]
    try:
        edgefleet(home, "inventory", "sync", write_inventory(work / "inventory.yml", hosts))
        edgefleet(home, "devices", "trust", "pis", *SILENCE)
        installed = edgefleet(home, "agent", "install", "pis", "--with-deps", *SILENCE)
        versions = {o["device"]: (o["facts"]["python"]["version"],
                                  o["facts"]["onnxruntime"]["version"]) for o in installed}
        demo = make_trained_classifier(work / "first-crack")
        refs = build(home, demo, "first-crack", demo_calibration(demo, work / "demo-calib"))
        encoder = make_transformer(work / "encoder")
        refs += build(home, encoder, "encoder", work / "encoder-calibration")
        rows = []
        for ref in refs:
            for p in edgefleet(home, "push", ref, "pis", *SILENCE):
                smoke = p.get("smoke") or {}
                python, ort = versions[p["device"]]
                rows.append({"bundle": ref, "device": p["device"], "python": python,
                             "onnxruntime": ort, "state": p["state"],
                             "max_abs": smoke.get("max_abs"), "max_rel": smoke.get("max_rel"),
                             "outputs": smoke.get("outputs")})
        return rows
    finally:
        for host in hosts:
            host.stop()


def precision(ref: str) -> str:
    return "int8" if "-int8" in ref else "fp32"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rows", type=Path, help="print the table of rows saved by --json")
    args = parser.parse_args()
    if args.rows:
        print_table(json.loads(args.rows.read_text()))
        return 0
    if reason := arm_ready():
        print(f"cannot run emulated arm64 devices here: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="edgefleet-arm-numerics-") as tmp:
        rows = measure(Path(tmp))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print_table(rows)
    return 0


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def print_table(rows: list[dict[str, Any]]) -> None:
    import onnxruntime

    print(f"golden outputs: x86_64, onnxruntime {onnxruntime.__version__}")
    print("| bundle | device | Python | onnxruntime | max abs diff | max rel diff | "
          "default (rtol, atol) |")
    print("| --- | --- | --- | --- | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['bundle']} | {r['device']} | {r['python']} | {r['onnxruntime']} | "
              f"{fmt(r['max_abs'])} | {fmt(r['max_rel'])} | "
              f"{DEFAULT_TOLERANCES[precision(r['bundle'])]} |")
    for kind in ("fp32", "int8"):
        mine = [r for r in rows if precision(r["bundle"]) == kind]
        rtol, atol = DEFAULT_TOLERANCES[kind]
        worst_abs = max(r["max_abs"] or 0.0 for r in mine)
        worst_rel = max(r["max_rel"] or 0.0 for r in mine)
        print(f"{kind}: worst max abs {worst_abs:.3g} (default atol {atol:g}: "
              f"{atol / worst_abs if worst_abs else float('inf'):.3g}x), worst max rel "
              f"{worst_rel:.3g} (default rtol {rtol:g})")


if __name__ == "__main__":
    raise SystemExit(main())
