"""Energy and deployment verdicts on a real run over real SSH: a simulated Pi 5 measures board
power during the benchmark (vcgencmd pmic_read_adc), a simulated Pi 4 says it cannot, and
`edgefleet runs verdict` judges the measured latencies against streaming profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.demo.model import make_large_model

from ..conftest import Cli
from .test_bench import build_and_push
from .test_push_e2e import setup_fleet

PI4 = {"model": "Raspberry Pi 4 Model B Rev 1.4"}


def test_energy_on_pi5_only_and_verdicts_on_the_real_run(cli: Cli, sshd_factory,
                                                         tmp_path: Path) -> None:
    pi5 = sshd_factory(1)[0]
    pi4 = sshd_factory(1, sim_options=PI4)[0]
    setup_fleet(cli, tmp_path, [pi5, pi4])
    # Energy per inference comes from the timed loop's wall time (mean W x wall / runs); the
    # loop's own bookkeeping between inferences is a few us next to ~0.1 ms inferences, so it
    # must match mean W x mean latency closely (with slack for a busy shared test machine).
    build_and_push(cli, tmp_path, "m", lambda p: make_large_model(p, 4))
    out = cli("bench", "m", "pis", "--threads", "1,2", "--warmup", "2", "--runs", "20",
              "--min-seconds", "0.6", "--shape", "x=1x16384", "--json").json
    run_id = out["id"]
    by_device = {(r["device"], r["threads"]): r for r in out["results"]}
    assert set(by_device) == {(pi5.name, 1), (pi5.name, 2), (pi4.name, 1), (pi4.name, 2)}
    for threads in (1, 2):
        energy = by_device[(pi5.name, threads)]["energy"]
        latency = by_device[(pi5.name, threads)]["latency_ms"]
        assert energy["available"] is True and energy["samples"] >= 1
        assert 2.0 < energy["mean_w"] < 10.0 and energy["mj_per_inference"] > 0
        expected = energy["mean_w"] * latency["mean"]  # W x ms = mJ
        assert energy["mj_per_inference"] == pytest.approx(expected, rel=0.25)
        other = by_device[(pi4.name, threads)]["energy"]
        assert other["available"] is False and "Raspberry Pi 5" in other["reason"]
        assert "Raspberry Pi 4 Model B" in other["reason"]

    # stored: the same figures come back from the DB, and the raw samples carry the power
    raw = cli("runs", "show", str(run_id), "--json", "--raw").json["results"]
    stored = {(r["device"], r["threads"]): r for r in raw}
    for key, result in by_device.items():
        assert stored[key]["energy"] == result["energy"]
    samples = stored[(pi5.name, 1)]["telemetry"]["samples"]
    # power in the first and last sample, at most every POWER_INTERVAL_S in between
    assert all(len(s) == 5 for s in samples) and samples[0][4] > 2.0 and samples[-1][4] > 2.0
    assert all(s[4] is None or s[4] > 2.0 for s in samples)
    assert all(len(s) == 4 for s in stored[(pi4.name, 1)]["telemetry"]["samples"])
    table = cli("runs", "show", str(run_id)).stdout
    assert "mJ/inf" in table and "pmic_read_adc" in table

    # a generous hop: every thread count keeps up, and the fewest threads are recommended
    easy = cli("runs", "verdict", str(run_id), "--window", "10", "--hop", "5", "--json").json
    assert easy["profile"]["hop_s"] == 5.0 and easy["kind"] == "bench"
    for row in easy["rows"]:
        measured = by_device[(row["device"], row["threads"])]["latency_ms"]
        assert row["p50_ms"] == pytest.approx(measured["p50"])
        assert row["p99_ms"] == pytest.approx(measured["p99"])
        assert row["keeps_up"] is True and row["headroom_pct"] > 90.0
        assert row["basis"] == "inference only: preprocessing not measured (a benchmark)"
        assert row["worst_case_delay_s"] == pytest.approx(10 + 5 + measured["p99"] / 1000)
    for device in (pi5.name, pi4.name):
        rows = [r for r in easy["rows"] if r["device"] == device]
        qualifying = [r["threads"] for r in rows if r["keeps_up"] and r["valid"] is True
                      and r["headroom_pct"] >= 30]
        assert easy["recommended"][device]["threads"] == min(qualifying) == 1

    # a 1 us hop, shorter than any onnxruntime call: nobody keeps up, nothing is recommended
    tight = cli("runs", "verdict", str(run_id), "--window", "0.000002", "--hop", "0.000001",
                "--json").json
    assert all(row["p99_ms"] > 0.001 for row in tight["rows"])
    assert not any(row["keeps_up"] for row in tight["rows"])
    assert all(rec["threads"] is None and "1 thread falls behind (p99 " in rec["reason"]
               and " ms >= the 1e-06 s hop)" in rec["reason"]
               for rec in tight["recommended"].values())
    text = cli("runs", "verdict", str(run_id), "--window", "10", "--overlap", "0.5").stdout
    assert f"{pi5.name}: 1 thread — " in text and "mJ/window" in text
    assert "preprocessing not measured" in text
