"""Energy on a Pi 5: parsing recorded ``vcgencmd pmic_read_adc`` output, reading it from a
simulated Pi 5 (and not asking a simulated Pi 4 at all), power in the sampler's samples, and the
energy summary of a timed phase."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.sampler import Sampler, energy_summary, summarize
from agent.sensors import SensorReader, parse_pmic_read_adc, pmic_power_w
from orchestrator.demo.simulate import create_simulated_device

# Text in the layout a Raspberry Pi 5 prints (right-aligned names, channel numbers, currents
# before volts; orchestrator/demo/simulate.py writes the same), a few rails with illustrative
# values,
# plus a voltage-only rail and a line of noise: neither may enter the power sum.
RECORDED = """\
   3V7_WL_SW_A current(0)=0.00390372A
     3V3_SYS_A current(1)=0.06246000A
    DDR_VDD2_A current(3)=0.01756674A
    VDD_CORE_A current(7)=1.76580000A
        HDMI_A current(22)=0.02342600A
   3V7_WL_SW_V volt(8)=3.71087600V
     3V3_SYS_V volt(9)=3.31298300V
    DDR_VDD2_V volt(11)=1.10769000V
    VDD_CORE_V volt(15)=0.77750980V
        HDMI_V volt(23)=5.14354000V
       EXT5V_V volt(24)=5.13622000V
VCHI initialization warning
"""


def test_parse_recorded_pmic_output() -> None:
    rails = parse_pmic_read_adc(RECORDED)
    assert rails["VDD_CORE"] == {"A": 1.7658, "V": 0.7775098}
    assert rails["EXT5V"] == {"V": 5.13622} and len(rails) == 6
    expected = (0.00390372 * 3.710876 + 0.06246 * 3.312983 + 0.01756674 * 1.10769
                + 1.7658 * 0.7775098 + 0.023426 * 5.14354)
    assert pmic_power_w(rails) == pytest.approx(expected, rel=1e-12)
    assert parse_pmic_read_adc('error=1 error_msg="Command not registered"') == {}
    assert pmic_power_w({"EXT5V": {"V": 5.1}}) is None and pmic_power_w({}) is None


def test_simulated_pi5_reports_power_that_follows_the_clock(tmp_path: Path) -> None:
    sim = create_simulated_device(tmp_path / "pi5", freq_mhz=2400.0)
    reader = SensorReader(str(sim.sysfs), str(sim.bin_dir))
    fast = reader.read_power()
    assert fast is not None and 2.0 < fast < 10.0 and reader.power_unavailable is None
    sim.set_freq(1200.0)  # the simulated VDD_CORE rail draws less at a lower clock
    slow = reader.read_power()
    assert slow is not None and slow < fast


def test_other_boards_are_not_asked(tmp_path: Path) -> None:
    sim = create_simulated_device(tmp_path / "pi4", model="Raspberry Pi 4 Model B Rev 1.4")
    log = tmp_path / "calls.log"
    wrapper = tmp_path / "bin" / "vcgencmd"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$1" >> "{log}"\nexec "{sim.bin_dir}/vcgencmd" "$@"\n')
    wrapper.chmod(0o755)
    reader = SensorReader(str(sim.sysfs), str(wrapper.parent))
    assert reader.read_power() is None and reader.read_power() is None
    assert "only a Raspberry Pi 5" in str(reader.power_unavailable)
    assert "Raspberry Pi 4 Model B" in str(reader.power_unavailable)
    assert not log.exists()  # decided from the device-tree model, no process spawned


def test_a_pi5_whose_vcgencmd_fails_is_asked_once(tmp_path: Path) -> None:
    sim = create_simulated_device(tmp_path / "pi5")
    log = tmp_path / "calls.log"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "vcgencmd").write_text(f'#!/bin/sh\necho "$1" >> "{log}"\nexit 1\n')
    (tmp_path / "bin" / "vcgencmd").chmod(0o755)
    reader = SensorReader(str(sim.sysfs), str(tmp_path / "bin"))
    assert [reader.read_power() for _ in range(3)] == [None] * 3
    assert reader.power_unavailable == "not available: vcgencmd pmic_read_adc failed"
    assert log.read_text().split() == ["pmic_read_adc"]


def run_sampler(reader: SensorReader) -> tuple[list, Sampler]:
    sampler = Sampler(reader, 20.0)
    sampler.start()
    sampler.mark("timed_start")
    return sampler.stop(), sampler


def test_sampler_records_power_on_a_pi5_only(tmp_path: Path) -> None:
    pi5 = create_simulated_device(tmp_path / "pi5")
    samples, sampler = run_sampler(SensorReader(str(pi5.sysfs), str(pi5.bin_dir)))
    assert len(samples) >= 2 and all(len(s) == 5 for s in samples)
    # Power is read in the first and the last sample always, at most every POWER_INTERVAL_S between.
    assert samples[0][4] > 0 and samples[-1][4] > 0
    assert all(s[4] is None or s[4] > 0 for s in samples)
    assert sampler.power is True and sampler.power_reason is None
    telemetry, flags, _ = summarize(samples, sampler.interval_s, 0.0)  # 5-wide samples are fine
    assert telemetry["status"] == "clean" and flags == []
    energy = energy_summary(samples, sampler.marks["timed_start"], 2.0, 100,
                            sampler.power_reason)
    powers = [s[4] for s in samples
              if s[0] >= sampler.marks["timed_start"] and s[4] is not None]
    mean_w = sum(powers) / len(powers)
    assert energy["available"] is True and energy["samples"] == len(powers)
    assert energy["mean_w"] == pytest.approx(mean_w, abs=1e-4)
    assert energy["mj_per_inference"] == pytest.approx(mean_w * 2.0 / 100 * 1000, rel=1e-4)

    pi4 = create_simulated_device(tmp_path / "pi4", model="Raspberry Pi 4 Model B Rev 1.4")
    samples, sampler = run_sampler(SensorReader(str(pi4.sysfs), str(pi4.bin_dir)))
    assert all(len(s) == 4 for s in samples) and sampler.power is False
    energy = energy_summary(samples, 0.0, 2.0, 100, sampler.power_reason)
    assert energy["available"] is False and "only a Raspberry Pi 5" in energy["reason"]


def test_energy_summary_uses_the_timed_phase_only() -> None:
    samples = [[0.0, 50.0, 2400.0, 0, 2.0], [0.25, 50.0, 2400.0, 0, 2.0],
               [0.5, 50.0, 2400.0, 0, 6.0], [0.75, 50.0, 2400.0, 0, 8.0]]
    energy = energy_summary(samples, 0.5, 1.5, 300)
    assert energy["mean_w"] == 7.0 and energy["mj_per_inference"] == 35.0
    assert energy_summary(samples, 0.5, None, None)["mj_per_inference"] is None
    assert energy_summary([[0.0, 50.0, 2400.0, 0]], 0.0, 1.0, 1) == {
        "available": False, "reason": "not available: no power reading during the timed runs"}


class CountingReader:
    """A Pi 5-like reader whose power readings are counted (no process is started)."""

    def __init__(self) -> None:
        self.power_reads = 0

    def read_temp(self) -> dict:
        return {"temp_c": 50.0}

    def read_freqs(self) -> list:
        return [2400.0]

    def read_throttled_cheap(self) -> int:
        return 0

    def read_power(self) -> float:
        self.power_reads += 1
        return 5.0


def test_power_is_read_once_per_interval_and_always_first_and_last(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fork+exec behind a Pi 5's power reading is the sampler's one costly read: at 4 Hz
    it would cost more CPU than a benchmark's whole overhead budget. (POWER_INTERVAL_S is
    set to 1 s here so the clock script stays short.)"""
    from agent import sampler as sampler_module

    monkeypatch.setattr(sampler_module, "POWER_INTERVAL_S", 1.0)
    reader = CountingReader()
    sampler = Sampler(reader, 4.0)
    clock = iter([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.1, 2.2])
    monkeypatch.setattr(sampler_module.time, "monotonic", lambda: next(clock))
    sampler._t0 = 0.0
    for _ in range(9):
        sampler._take()
    sampler._take(last=True)
    powers = [s[4] for s in sampler.samples]
    assert powers == [5.0, None, None, None, 5.0, None, None, None, 5.0, 5.0]
    assert reader.power_reads == 4
    energy = energy_summary(sampler.samples, 0.9, 1.0, 10)
    assert energy["samples"] == 3 and energy["mean_w"] == 5.0


def test_the_sampler_thread_runs_niced() -> None:
    """Its reads and the processes it starts yield to the threads being measured."""
    import os
    import threading

    from agent.sampler import SAMPLER_NICE, lower_priority

    seen: list[tuple[int, int]] = []

    def probe() -> None:
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        lower_priority()
        seen.append((before, os.getpriority(os.PRIO_PROCESS, tid)))

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    ((before, after),) = seen
    assert after == min(19, before + SAMPLER_NICE)
    assert os.getpriority(os.PRIO_PROCESS, 0) == before  # the rest of the process is untouched
