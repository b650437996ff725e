"""Units and wording on a real sshd fleet (issue 13 item 7): the under-voltage advice names the
supply of the board that under-volted (5V/3A for a Pi 4, 5V/5A for a Pi 5), ``devices show``
prints no Python reprs, one device is "1 device", a verdict speaks of milliseconds and agrees
its verbs ("1 thread keeps up"), the RTF reads in plain decimals, and CSV numbers keep the
digits that were measured and no more."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from ..conftest import Cli
from .models import make_multi_input_model
from .test_bench import build_and_push
from .test_push_e2e import setup_fleet

PI4 = "Raspberry Pi 4 Model B Rev 1.5"
PI5 = "Raspberry Pi 5 Model B Rev 1.0"
REPR = re.compile(r"\[\s*'|'\s*\]|\{'|': |\bTrue\b|\bFalse\b|\bNone\b")


def test_devices_show_advice_plurals_ms_and_csv(cli: Cli, sshd_factory, tmp_path: Path) -> None:
    (pi4,) = sshd_factory(1, sim_options={"model": PI4})
    (pi5,) = sshd_factory(1, sim_options={"model": PI5})
    setup_fleet(cli, tmp_path, [pi4, pi5])
    for host in (pi4, pi5):
        host.sim.set_throttled(0x50005)  # under-voltage now and since boot
    polled = cli("telemetry", "pis")
    assert "2 ok, 0 failed, 2 devices" in polled.stdout
    assert "1 ok, 0 failed, 1 device\n" in cli("telemetry", pi4.name).stdout

    shown = {h.name: cli("devices", "show", h.name).stdout for h in (pi4, pi5)}
    assert "use a 5V/3A supply (the official 15W USB-C supply)" in shown[pi4.name]
    assert "5V/5A" not in shown[pi4.name]
    assert "use a 5V/5A supply (the official 27W USB-C supply)" in shown[pi5.name]
    for text in shown.values():
        assert not REPR.search(text), REPR.search(text)
        assert "throttle_flags  now: under_voltage, throttled; since_boot: " in text
        assert re.search(r"python\s+version: 3\.\d+\.\d+; implementation: ", text)

    build_and_push(cli, tmp_path, "multi", make_multi_input_model)
    run = cli("bench", "multi", pi4.name, "--threads", "1,2", "--warmup", "1", "--runs", "20",
              "--shape", "audio=1x1600", "--input", "sr=16000", "--json").json
    verdict = cli("runs", "verdict", str(run["id"]), "--window", "2", "--hop", "1").stdout
    # A tiny model: p50 in hundredths of a ms, an RTF around 1e-5 shown in plain decimals.
    assert re.search(r"\s0\.0000\d{3,5}\s", verdict) and "e-0" not in verdict, verdict
    assert re.search(r"\d ms \(\d+%\)", verdict)  # headroom in ms, like every latency
    # The Pi 4 under-volted during the run: no recommendation, said with agreeing verbs.
    assert (f"{pi4.name}: no recommendation — no thread count qualifies: 1 thread keeps up "
            "with ") in verdict
    assert "; 2 threads keep up with " in verdict
    assert " s per window" not in verdict and "thread(s)" not in verdict
    pi4.sim.set_throttled(0)
    clean = cli("bench", "multi", pi4.name, "--threads", "1", "--warmup", "1", "--runs", "20",
                "--shape", "audio=1x1600", "--input", "sr=16000", "--json").json
    assert clean["results"][0]["valid"] is True, clean["results"][0]["reasons"]
    again = cli("runs", "verdict", str(clean["id"]), "--window", "2", "--hop", "1").stdout
    assert re.search(rf"{pi4.name}: 1 thread — fewest threads that keep up with >= 30% "
                     r"headroom on a valid run: p99 [0-9.]+ ms per window", again), again

    text = cli("runs", "show", str(run["id"]), "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2
    for row in rows:
        for key, decimals in (("p50_ms", 4), ("p95_ms", 4), ("load_ms", 3),
                              ("first_inference_ms", 4), ("peak_rss_mb", 2),
                              ("temp_c_max", 1)):
            value = row[key]
            assert value and len(value.split(".")[1]) <= decimals if "." in value else value, \
                (key, value)
        assert "e-" not in row["p50_ms"] and "99999" not in text and "00000" not in text
