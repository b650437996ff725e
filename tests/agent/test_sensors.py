"""Sensor parsing on recorded outputs, and reading a fake sysfs tree + fake vcgencmd (DESIGN)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from agent_helpers import fake_sysfs, fake_vcgencmd, write

from agent.sensors import (
    SensorReader,
    decode_throttled,
    is_simulated,
    parse_khz_as_mhz,
    parse_measure_temp,
    parse_millidegrees,
    parse_throttled_hex,
    parse_vcgencmd_throttled,
    snapshot,
    sysfs_root,
)


def test_recorded_outputs() -> None:
    assert parse_millidegrees("48312\n") == 48.312
    assert parse_millidegrees("-5000\n") == -5.0
    assert parse_millidegrees("") is None and parse_millidegrees("n/a") is None
    assert parse_khz_as_mhz("1500000\n") == 1500.0
    assert parse_khz_as_mhz("600000") == 600.0
    assert parse_khz_as_mhz("0\n") is None and parse_khz_as_mhz("<unknown>") is None
    assert parse_measure_temp("temp=48.3'C\n") == 48.3
    assert parse_measure_temp("temp=61.0'C") == 61.0
    assert parse_measure_temp("error=1 error_msg=\"Command not registered\"") is None
    assert parse_vcgencmd_throttled("throttled=0x50000\n") == 0x50000
    assert parse_vcgencmd_throttled("throttled=0x0\n") == 0
    assert parse_vcgencmd_throttled("VCHI initialization failed\n") is None
    assert parse_throttled_hex("50005\n") == 0x50005
    assert parse_throttled_hex("0x80008\n") == 0x80008
    assert parse_throttled_hex("0\n") == 0
    assert parse_throttled_hex("\n") is None and parse_throttled_hex("zz") is None


@pytest.mark.parametrize(
    ("bits", "now", "since_boot"),
    [
        (0x0, [], []),
        (0x50000, [], ["under_voltage", "throttled"]),
        (0x50005, ["under_voltage", "throttled"], ["under_voltage", "throttled"]),
        (0xE0008, ["soft_temp_limit"], ["frequency_capped", "throttled", "soft_temp_limit"]),
        (0x2, ["frequency_capped"], []),
    ],
)
def test_decode_throttled(bits: int, now: list[str], since_boot: list[str]) -> None:
    assert decode_throttled(bits) == {"now": now, "since_boot": since_boot}


def test_fake_pi_with_vcgencmd(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, throttled_file="0\n")
    bindir = fake_vcgencmd(tmp_path)
    snap = snapshot(sysfs=str(sysfs), path=str(bindir))
    assert snap["temp_c"] == 61.5
    assert snap["freq_mhz_min"] == 600.0 and snap["freq_mhz_max"] == 1800.0
    assert snap["freq_mhz"] == 1350.0
    assert snap["throttled"] == 0x50005 and snap["throttled_hex"] == "0x50005"
    assert snap["throttle_flags"] == {"now": ["under_voltage", "throttled"],
                                      "since_boot": ["under_voltage", "throttled"]}
    assert snap["sources"]["throttled"] == "vcgencmd get_throttled"  # preferred over the file
    assert snap["sources"]["temp"].endswith("thermal_zone0/temp")
    assert snap["sources"]["freq"].startswith("4 cpufreq files")


def test_fallbacks_when_vcgencmd_fails_and_no_thermal_zone(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, temp=None, throttled_file="50000\n")
    bindir = fake_vcgencmd(tmp_path, fail=True)
    snap = snapshot(sysfs=str(sysfs), path=str(bindir))
    assert snap["throttled"] == 0x50000
    assert snap["sources"]["throttled"].endswith("soc:firmware/get_throttled")
    assert snap["temp_c"] is None and snap["sources"]["temp"] is None


def test_measure_temp_when_there_is_no_thermal_zone(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, temp=None)
    snap = snapshot(sysfs=str(sysfs), path=str(fake_vcgencmd(tmp_path, temp="48.3")))
    assert snap["temp_c"] == 48.3 and snap["sources"]["temp"] == "vcgencmd measure_temp"


def test_missing_sensors_are_null_never_zero(tmp_path: Path) -> None:
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    snap = snapshot(sysfs=str(tmp_path / "nothing"), path=str(empty_bin))
    assert {k: v for k, v in snap.items() if k != "sources"} == {
        "temp_c": None, "freq_mhz": None, "freq_mhz_min": None, "freq_mhz_max": None,
        "throttled": None, "throttled_hex": None, "throttle_flags": None,
    }
    assert snap["sources"] == {"temp": None, "freq": None, "throttled": None}


def test_reader_resolves_once_and_rereads_values(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, freqs=(1500000,))
    reader = SensorReader(sysfs=str(sysfs), path=str(fake_vcgencmd(tmp_path)))
    assert reader.read()["temp_c"] == 61.5
    write(sysfs / "class/thermal/thermal_zone0/temp", "80250\n")
    write(sysfs / "devices/system/cpu/cpu0/cpufreq/scaling_cur_freq", "1000000\n")
    second = reader.read()
    assert second["temp_c"] == 80.25 and second["freq_mhz"] == 1000.0


def test_sysfs_root_and_simulated() -> None:
    assert sysfs_root({}) == "/sys" and sysfs_root({"EDGEFLEET_SYSFS": ""}) == "/sys"
    assert sysfs_root({"EDGEFLEET_SYSFS": "/tmp/x"}) == "/tmp/x"
    assert not is_simulated({}) and not is_simulated({"EDGEFLEET_SYSFS": "/sys/"})
    assert is_simulated({"EDGEFLEET_SYSFS": os.sep + "tmp"})


def test_a_failing_vcgencmd_is_not_retried_by_the_same_reader(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, temp=None, throttled_file="4\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls.log"
    script = bindir / "vcgencmd"
    script.write_text(f'#!/bin/sh\necho "$1" >> "{calls}"\necho "VCHI initialization failed"'
                      " >&2\nexit 255\n")
    script.chmod(0o755)
    reader = SensorReader(sysfs=str(sysfs), path=str(bindir))
    first, second = reader.read(), reader.read()
    assert first["throttled"] == second["throttled"] == 4
    assert first["throttle_flags"]["now"] == ["throttled"]
    assert sorted(calls.read_text().split()) == ["get_throttled", "measure_temp"]  # once each


def test_a_number_no_sensor_reads_is_no_reading_not_a_crash() -> None:
    """A device's files are untrusted input: 4 KiB of digits overflowed the float division."""
    from agent.sensors import parse_khz_as_mhz, parse_millidegrees

    assert parse_millidegrees("9" * 4096) is None
    assert parse_khz_as_mhz("9" * 4096) is None
