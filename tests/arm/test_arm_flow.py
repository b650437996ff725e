"""The whole EdgeFleet flow on two emulated arm64 Pis at once (issue 16): Raspberry Pi OS
bookworm (Python 3.11, onnxruntime 1.32) and bullseye (Python 3.9, onnxruntime 1.19.2), each a
real Debian arm64 userland under qemu-user behind its own aarch64 sshd, host keys pinned.

Install with --with-deps (venv + pip on the device), facts, push of an FP32 bundle and its INT8
variants built on x86 whose on-device smoke tests pass against the x86 golden outputs (with the
default tolerances: the numbers behind them are in docs/arm.md), bench, eval with the features
computed on the device, rollback, verify.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.demo.audio import write_eval_set
from orchestrator.demo.model import make_trained_classifier
from tests.fleet.sshd import write_inventory

from ..conftest import Cli
from .device import ArmHost
from .models import demo_calibration, make_transformer
from .rootfs import SUITES

# Under qemu an agent command may stay silent for minutes (python + numpy + onnxruntime imports,
# pip); the default 30 s would call a working device dead.
SILENCE = ("--timeout", "900")
# Everything runs under qemu (~1000x slower), and a cold cache builds the rootfs (~25 min) in the
# fixture: far past the suite's 300 s default.
pytestmark = pytest.mark.timeout(3600)
EVAL_WINDOWS = 8  # ~1000x slower than native: enough to show the features work on the device


def _pushed(cli: Cli, ref: str) -> dict[str, dict]:
    out = cli("push", ref, "pis", *SILENCE, "--json").json
    by_device = {p["device"]: p for p in out}
    for name, p in by_device.items():
        assert p["state"] == "active", (name, ref, p)
        assert p["smoke"]["ok"] is True, (name, ref, p["smoke"])
    return by_device


def test_install_push_bench_eval_rollback_verify(cli: Cli, arm_hosts: dict[str, ArmHost],
                                                  tmp_path: Path, demo_model_cache: Path) -> None:
    hosts = list(arm_hosts.values())
    inventory = write_inventory(tmp_path / "inventory.yml", hosts)
    cli("inventory", "sync", inventory)
    trusted = cli("devices", "trust", "pis", *SILENCE, "--json").json
    assert [t["fingerprint"] for t in trusted] == [h.host_key_fingerprint for h in hosts]

    installed = {o["device"]: o for o in cli("agent", "install", "pis", "--with-deps",
                                             *SILENCE, "--json").json}
    for suite, host in arm_hosts.items():
        outcome = installed[host.name]
        assert outcome["state"] == "installed", outcome
        facts = outcome["facts"]
        assert facts["arch"] == "aarch64", facts
        assert facts["python"]["version"].startswith(SUITES[suite].python + "."), facts
        assert facts["python"]["executable"].endswith("/.edgefleet/venv/bin/python"), facts
        pins = dict(r.split("==") for r in SUITES[suite].requirements)
        assert facts["onnxruntime"]["version"] == pins["onnxruntime"], facts
        assert facts["numpy"] == pins["numpy"] or facts["numpy"].get("version") == pins["numpy"]
        # The simulated sensors are read inside the chroot (same path, bind-mounted).
        assert facts["sensors"]["temp_c"] == 48.0, facts["sensors"]
        assert facts["pi_model"].startswith("Raspberry Pi 5"), facts

    folder = make_trained_classifier(tmp_path / "first-crack", cache_dir=demo_model_cache)
    calibration = demo_calibration(folder, tmp_path / "calibration")
    built = cli("bundle", "build", folder, "--name", "first-crack", "--quantize", "int8",
                "--json").json
    assert built["variants"][0]["version"] == "1-int8"
    cli("bundle", "build", folder, "--name", "first-crack", "--quantize", "int8-static",
        "--calibration", calibration)
    transformer = make_transformer(tmp_path / "encoder")
    cli("bundle", "build", transformer, "--name", "encoder", "--quantize", "int8")

    # Each push is smoke-tested on the device against outputs computed here on x86.
    for ref in ("encoder@1", "encoder@1-int8", "first-crack@1", "first-crack@1-int8-static",
                "first-crack@1-int8"):
        _pushed(cli, ref)

    # One board runs hot: the sampler on the device reads it live through the fake sysfs.
    arm_hosts["bullseye"].sim.set_temp(82.5)
    bench = cli("bench", "first-crack@1-int8", "pis", "--threads", "1", "--warmup", "1",
                "--runs", "3", *SILENCE, "--json").json
    results = {r["device"]: r for r in bench["results"]}
    for host in hosts:
        assert results[host.name]["ok"], results[host.name]
        assert results[host.name]["latency_ms"]["p50"] > 0, results[host.name]
    assert results[arm_hosts["bookworm"].name]["valid"] is True, results
    assert "temp_over_80c" in results[arm_hosts["bullseye"].name]["flags"], results
    arm_hosts["bullseye"].sim.set_temp(48.0)

    write_eval_set(tmp_path / "eval", n=EVAL_WINDOWS)
    cli("dataset", "build", tmp_path / "eval", "--name", "roast", "--for", "first-crack@1-int8")
    out = cli("eval", "first-crack@1-int8", "roast", "pis", "--threads", "1", *SILENCE,
              "--json").json
    for r in out["results"]:
        assert r["ok"] and len(r["eval"]["samples"]) == EVAL_WINDOWS, r
    # Features computed on aarch64 numpy (2.0 and 2.4), model on two onnxruntimes: the same
    # answers.
    assert out["agreement"]["same_confusion"] is True, out["agreement"]

    rolled = {r["device"]: r for r in cli("rollback", "pis", *SILENCE, "--json").json}
    assert {r["state"] for r in rolled.values()} == {"rolled-back"}, rolled
    assert {r["active"] for r in rolled.values()} == {"first-crack@1-int8-static"}, rolled
    verified = cli("devices", "verify", "pis", *SILENCE, "--json").json
    assert [v["state"] for v in verified] == ["verified"] * len(hosts), verified
