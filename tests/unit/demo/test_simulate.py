"""Simulated Pi sensors (orchestrator.demo.simulate) and the demo ONNX models."""

from __future__ import annotations

import os
import re
import subprocess
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from orchestrator.demo.model import make_demo_classifier, make_large_model
from orchestrator.demo.simulate import SimulatedDevice, create_simulated_device

PMIC_LINE = re.compile(r"^ *(\S+)_([AV]) (current|volt)\((\d+)\)=(\d+\.\d{8})([AV])$")


def vcgencmd(dev: SimulatedDevice, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the fake vcgencmd the way the agent will: found on PATH from ``dev.env``."""
    return subprocess.run(
        ["vcgencmd", *args], env={**os.environ, **dev.env}, capture_output=True, text=True
    )


def pmic(dev: SimulatedDevice) -> dict[str, float]:
    result = vcgencmd(dev, "pmic_read_adc")
    assert result.returncode == 0, result.stderr
    rails = {}
    for line in result.stdout.splitlines():
        m = PMIC_LINE.match(line)
        assert m, f"not a pmic_read_adc line: {line!r}"
        assert (m[2] == "A") == (m[3] == "current") and m[2] == m[6]
        rails[f"{m[1]}_{m[2]}"] = float(m[5])
    return rails


@pytest.fixture
def dev(tmp_path: Path) -> SimulatedDevice:
    return create_simulated_device(tmp_path / "a pi with spaces", throttled=0x50000)


def test_layout_and_initial_values(dev: SimulatedDevice) -> None:
    sysfs = dev.sysfs
    assert int((sysfs / "class/thermal/thermal_zone0/temp").read_text()) == 48000
    freqs = sorted((sysfs / "devices/system/cpu").glob("cpu*/cpufreq/scaling_cur_freq"))
    assert [int(f.read_text()) for f in freqs] == [2_400_000] * 4
    throttled = sysfs / "devices/platform/soc/soc:firmware/get_throttled"
    assert throttled.read_text().strip() == "50000"
    model = (sysfs / "firmware/devicetree/base/model").read_bytes()
    assert model == b"Raspberry Pi 5 Model B Rev 1.0\0"
    assert dev.env["EDGEFLEET_SYSFS"] == str(sysfs)
    assert dev.env["PATH"].split(":")[0] == str(dev.bin_dir)
    assert os.access(dev.bin_dir / "vcgencmd", os.X_OK)
    assert (dev.bin_dir / "vcgencmd").read_text().startswith("#!/bin/sh\n")


def test_get_throttled_follows_set_throttled(dev: SimulatedDevice) -> None:
    assert vcgencmd(dev, "get_throttled").stdout == "throttled=0x50000\n"
    dev.set_throttled(0b1111 | 0xF0000)
    assert vcgencmd(dev, "get_throttled").stdout == "throttled=0xf000f\n"
    dev.set_throttled(0)
    assert vcgencmd(dev, "get_throttled").stdout == "throttled=0x0\n"
    assert (dev.sysfs / "devices/platform/soc/soc:firmware/get_throttled").read_text() == "0\n"
    with pytest.raises(ValueError):
        dev.set_throttled(-1)


def test_measure_temp_follows_set_temp(dev: SimulatedDevice) -> None:
    assert vcgencmd(dev, "measure_temp").stdout == "temp=48.0'C\n"
    dev.set_temp(82.3)
    assert (dev.sysfs / "class/thermal/thermal_zone0/temp").read_text() == "82300\n"
    assert vcgencmd(dev, "measure_temp").stdout == "temp=82.3'C\n"


def test_set_freq_changes_every_cpu_and_the_core_rail(dev: SimulatedDevice) -> None:
    before = pmic(dev)
    dev.set_freq(1500)
    files = dev.cpu_freq_files
    assert len(files) == 4
    assert {f.read_text() for f in files} == {"1500000\n"}
    assert vcgencmd(dev, "measure_clock", "arm").stdout == "frequency(0)=1500000000\n"
    after = pmic(dev)
    assert after["VDD_CORE_A"] < before["VDD_CORE_A"]
    assert after["VDD_CORE_V"] < before["VDD_CORE_V"]


def test_pmic_read_adc_listing_is_pi5_shaped(dev: SimulatedDevice) -> None:
    rails = pmic(dev)
    assert len(rails) == 26
    assert rails["VDD_CORE_V"] == pytest.approx(0.88125)
    assert 4.75 < rails["EXT5V_V"] < 5.25
    listing = vcgencmd(dev, "pmic_read_adc").stdout
    # Real firmware right-aligns rail names in 12 columns: "  VDD_CORE_A current(7)=...".
    assert re.search(r"^  VDD_CORE_A current\(7\)=\d\.\d{8}A$", listing, re.MULTILINE)
    assert listing.splitlines()[-1] == "      BATT_V volt(25)=0.00000000V"
    dev.set_throttled(0x1)  # under-voltage now: the 5 V input sags
    assert pmic(dev)["EXT5V_V"] < 4.75


def test_unknown_command_and_no_pmic_on_a_pi4(tmp_path: Path, dev: SimulatedDevice) -> None:
    for args in (("bogus",), ()):
        result = vcgencmd(dev, *args)
        assert result.returncode == 1 and result.stdout == "" and "error" in result.stderr
    pi4 = create_simulated_device(
        tmp_path / "pi4", model="Raspberry Pi 4 Model B Rev 1.4", cores=2, throttled=0x5
    )
    assert len(pi4.cpu_freq_files) == 2
    assert vcgencmd(pi4, "pmic_read_adc").returncode == 1
    assert vcgencmd(pi4, "get_throttled").stdout == "throttled=0x5\n"


def test_writes_are_atomic_for_concurrent_readers(dev: SimulatedDevice) -> None:
    temp = dev.sysfs / "class/thermal/thermal_zone0/temp"
    done = threading.Event()
    seen: set[str] = set()

    def writer() -> None:
        for i in range(2000):
            dev.set_temp(40.0 if i % 2 else 85.0)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    while not done.is_set():
        seen.add(temp.read_text())
    thread.join()
    assert seen <= {"40000\n", "85000\n", "48000\n"}
    assert not list(temp.parent.glob(".*tmp")), "no temporary files left behind"


def test_colon_in_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="':'"):
        create_simulated_device(tmp_path / "a:b")


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_demo_classifier_runs_with_dynamic_batch(tmp_path: Path) -> None:
    path = make_demo_classifier(tmp_path / "clf.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    ops = [n.op_type for n in model.graph.node]
    assert ops[:3] == ["Conv", "Relu", "MaxPool"] and "GlobalAveragePool" in ops

    sess = _session(path)
    (inp,) = sess.get_inputs()
    assert (inp.name, inp.shape, inp.type) == ("log_mel", ["batch", 1, 98, 40], "tensor(float)")
    assert [o.name for o in sess.get_outputs()] == ["logits", "probabilities"]

    x = np.random.default_rng(7).standard_normal((3, 1, 98, 40)).astype(np.float32)
    logits, probs = sess.run(None, {"log_mel": x})
    assert logits.shape == probs.shape == (3, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-5)
    (single,) = sess.run(["logits"], {"log_mel": x[:1]})
    np.testing.assert_allclose(single, logits[:1], rtol=1e-4, atol=1e-6)


def test_demo_classifier_is_deterministic_per_seed(tmp_path: Path) -> None:
    a = make_demo_classifier(tmp_path / "a.onnx", seed=3).read_bytes()
    b = make_demo_classifier(tmp_path / "b.onnx", seed=3).read_bytes()
    c = make_demo_classifier(tmp_path / "c.onnx", seed=4).read_bytes()
    assert a == b
    assert a != c


def test_large_model_has_roughly_the_asked_size_and_runs(tmp_path: Path) -> None:
    path = make_large_model(tmp_path / "big.onnx", 3)
    assert path.stat().st_size == pytest.approx(3 * 1024 * 1024, rel=0.02)
    sess = _session(path)
    (inp,) = sess.get_inputs()
    (y,) = sess.run(None, {inp.name: np.ones((2, inp.shape[1]), dtype=np.float32)})
    assert y.shape == (2, 64) and np.isfinite(y).all()
    with pytest.raises(ValueError):
        make_large_model(tmp_path / "huge.onnx", 4096)
