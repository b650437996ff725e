"""The telemetry verdict on recorded sample series, and the sampler on a fake sysfs tree."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import fake_sysfs, write

from agent.sampler import Sampler, summarize
from agent.sensors import SensorReader

THROTTLED = "devices/platform/soc/soc:firmware/get_throttled"


def series(*bits: int | None, temp: float | None = 55.0, freq: float | None = 2400.0) -> list:
    return [[i * 0.25, temp, freq, b] for i, b in enumerate(bits)]


def verdict(samples: list, timed_start: float | None = None) -> tuple[dict, list, list]:
    return summarize(samples, 0.25, timed_start)


def test_clean_run() -> None:
    telemetry, flags, reasons = verdict(series(0, 0, 0))
    assert flags == [] and reasons == []
    assert telemetry["status"] == "clean" and telemetry["throttled_bits"] == 0
    assert telemetry["throttle_flags"] == {"now": [], "new_since_start": []}
    assert telemetry["temp_c_min"] == telemetry["temp_c_max"] == 55.0
    assert telemetry["freq_mhz_min"] == telemetry["freq_mhz_max"] == 2400.0
    assert telemetry["interval_s"] == 0.25 and len(telemetry["samples"]) == 3


def test_under_voltage_now_bits_are_counted() -> None:
    telemetry, flags, reasons = verdict(series(0, 0x50005, 0x50005, 0x50000))
    assert flags == ["under_voltage", "throttled"]
    assert telemetry["status"] == "throttled" and telemetry["throttled_bits"] == 0x50005
    assert telemetry["throttle_flags"] == {"now": ["under_voltage", "throttled"],
                                           "new_since_start": ["under_voltage", "throttled"]}
    assert reasons == ["under-voltage seen in 2 of 4 samples (get_throttled 0x50005)",
                       "throttling seen in 2 of 4 samples (get_throttled 0x50005)"]


def test_under_voltage_going_on_since_before_the_start() -> None:
    telemetry, flags, reasons = verdict(series(0x50005, 0x50005))
    assert flags == ["under_voltage", "throttled"] and telemetry["throttled_bits"] == 0x5
    assert telemetry["throttle_flags"] == {"now": ["under_voltage", "throttled"],
                                           "new_since_start": []}
    assert reasons[0] == "under-voltage seen in 2 of 2 samples (get_throttled 0x50005)"


def test_a_dip_between_samples_shows_in_the_sticky_bits() -> None:
    telemetry, flags, reasons = verdict(series(0x0, 0x0, 0x80000))
    assert flags == ["soft_temp_limit"] and telemetry["throttled_bits"] == 0x80000
    assert telemetry["throttle_flags"] == {"now": [], "new_since_start": ["soft_temp_limit"]}
    assert reasons == ["soft temperature limit occurred between samples (has-occurred bit 19 "
                       "appeared: get_throttled 0x0 at the start, 0x80000 at the end)"]


def test_sticky_bits_from_before_the_run_are_not_held_against_it() -> None:
    telemetry, flags, reasons = verdict(series(0x50000, 0x50000, 0x50000))
    assert flags == [] and telemetry["status"] == "clean" and telemetry["throttled_bits"] == 0
    assert len(reasons) == 2 and all(r.startswith("note: ") for r in reasons)
    assert "under-voltage had already occurred since boot" in reasons[0]
    assert "0x50000" in reasons[0]


@pytest.mark.parametrize(("temp", "flagged"), [(79.9, False), (80.0, True), (85.2, True)])
def test_temperature_limit(temp: float, flagged: bool) -> None:
    samples = series(0, 0, 0)
    samples[-1][1] = temp
    telemetry, flags, reasons = verdict(samples)
    assert telemetry["temp_c_max"] == temp
    assert flags == (["temp_over_80c"] if flagged else [])
    assert bool(reasons) is flagged


@pytest.mark.parametrize(("freqs", "timed_start", "low"), [
    ([600, 600, 2400, 2400, 2400], 0.5, None),  # governor ramping up before the timed runs
    ([2400, 2400, 2400, 2100, 2100], 0.5, "2100"),  # 87.5 % while loaded: capped
    ([2400, 2400, 2400, 2200, 2200], 0.5, None),  # 91.7 %: within the governor's noise
    ([600, 2400, 2400, 2400, 2400], None, "600"),  # no timed window known: the whole run
])
def test_frequency_drop_only_counts_in_the_timed_window(
        freqs: list[float], timed_start: float | None, low: str | None) -> None:
    samples = series(*([0] * len(freqs)))
    # No zip(strict=): this file also runs under Python 3.9 (tests/arm/test_py39_agent.py).
    for i, freq in enumerate(freqs):
        samples[i][2] = freq
    _, flags, reasons = verdict(samples, timed_start)
    assert flags == (["frequency_drop"] if low else [])
    assert reasons == ([f"CPU frequency fell to {low} MHz during the timed runs, below 90% of "
                        "the 2400 MHz seen in this run (capping under load)"] if low else [])


def test_unknown_is_not_clean() -> None:
    telemetry, flags, reasons = verdict(series(None, None, temp=None, freq=None))
    assert flags == [] and telemetry["status"] == "unknown"
    for key in ("temp_c_min", "temp_c_max", "freq_mhz_min", "freq_mhz_max", "throttled_bits",
                "throttle_flags"):
        assert telemetry[key] is None, key
    assert reasons == ["sensors unknown: no temperature, CPU frequency or get_throttled reading, "
                       "so under-voltage and throttling could not be checked (unknown is not "
                       "clean)"]
    # a temperature alone cannot prove a run clean, but it can prove it hot
    telemetry, flags, _ = verdict(series(None, None, temp=50.0, freq=None))
    assert telemetry["status"] == "unknown" and telemetry["temp_c_max"] == 50.0
    telemetry, flags, _ = verdict(series(None, None, temp=81.0, freq=None))
    assert telemetry["status"] == "throttled" and flags == ["temp_over_80c"]


def counting_vcgencmd(base: Path, answer: str) -> tuple[Path, Path]:
    """A fake vcgencmd that logs each subcommand it is asked for."""
    bindir, calls = base / "bin", base / "calls.log"
    write(bindir / "vcgencmd", f'#!/bin/sh\necho "$1" >> "{calls}"\n'
          f'case "$1" in get_throttled) echo "throttled={answer}";; *) exit 1;; esac\n')
    (bindir / "vcgencmd").chmod(0o755)
    return bindir, calls


def run_sampler(reader: SensorReader, between: Any = None) -> tuple[list, Sampler]:
    sampler = Sampler(reader, 20.0)
    sampler.start()
    sampler.mark("timed_start")
    if between is not None:
        between()
    return sampler.stop(), sampler


def test_sampler_reads_the_sysfs_file_and_leaves_vcgencmd_alone(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, freqs=(1500000, 2400000), throttled_file="0\n")
    bindir, calls = counting_vcgencmd(tmp_path, "0x0")

    def flip() -> None:
        tmp = sysfs / (THROTTLED + ".tmp")
        write(tmp, "50005\n")
        os.replace(tmp, sysfs / THROTTLED)

    samples, sampler = run_sampler(SensorReader(str(sysfs), str(bindir)), flip)
    assert len(samples) >= 2
    assert samples[0] == [0.0, 61.5, 2400.0, 0]  # the fastest core
    assert samples[-1][3] == 0x50005  # the synchronous end sample sees the flip
    times = [s[0] for s in samples]
    assert times == sorted(times) and sampler.marks["timed_start"] >= 0.0
    assert not calls.exists()  # no process spawned while the model runs


def test_sampler_falls_back_to_vcgencmd_without_the_sysfs_file(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, temp=None, freqs=())
    bindir, calls = counting_vcgencmd(tmp_path, "0x50000")
    samples, _ = run_sampler(SensorReader(str(sysfs), str(bindir)))
    assert [s[1:] for s in samples[:2]] == [[None, None, 0x50000]] * 2
    log = calls.read_text().split()
    assert log.count("get_throttled") == len(samples)
    assert log.count("measure_temp") == 1  # failed once (exit 1): not retried


def test_sampler_without_sensors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    samples, sampler = run_sampler(SensorReader(str(empty), str(empty)))
    assert len(samples) >= 2 and all(s[1:] == [None, None, None] for s in samples)
    telemetry, flags, _ = summarize(samples, sampler.interval_s)
    assert telemetry["status"] == "unknown" and flags == []
