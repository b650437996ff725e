"""JUnit XML from a measured comparison: parses back with the right cases, counts, messages."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.measure.junit import write_junit
from orchestrator.measure.pairing import compare_runs

HOSTILE = 'pi"<5>&\x1b[31m'


def result(device: str, threads: int, median_ms: float, seed: int, version: str,
           **overrides: Any) -> dict[str, Any]:
    latencies = list(np.random.default_rng(seed).lognormal(math.log(median_ms), 0.01, 30))
    out: dict[str, Any] = {
        "run_id": 1, "device": device, "bundle": {"name": "first-crack", "version": version},
        "precision": "int8", "threads": threads, "ok": True, "error": None,
        "latency_ms": {"p50": float(np.median(latencies))}, "latencies_ms": latencies,
        "telemetry": {"status": "clean"}, "valid": True, "flags": [], "simulated": False,
    }
    out.update(overrides)
    return out


def measured_rows() -> list[dict[str, Any]]:
    run_a = [result("pi5-a", 1, 10, 1, "1"), result("pi5-a", 2, 10, 2, "1"),
             result("pi5-a", 4, 10, 3, "1"), result(HOSTILE, 1, 10, 4, "1"),
             result("pi4-lab", 1, 20, 5, "1")]
    run_b = [result("pi5-a", 1, 10.4, 11, "2"),   # 4% slower: under a 5% bound
             result("pi5-a", 2, 12.0, 12, "2"),   # 20% slower: fails
             result("pi5-a", 4, 9.0, 13, "2"),    # faster
             result(HOSTILE, 1, 10, 14, "2", valid=False, flags=["under_voltage"],
                    telemetry={"status": "throttled"}),
             result("pi5-b", 1, 10, 15, "2")]     # only in B
    return compare_runs(run_a, run_b)


def test_junit_report(tmp_path: Path) -> None:
    path = tmp_path / "bench.xml"
    counts = write_junit(path, measured_rows(), 0.05)
    assert counts == {"tests": 6, "failures": 1, "errors": 0, "skipped": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["bench.xml"]  # no .part left behind

    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == "edgefleet.bench"
    for element in (root, suite):
        assert (element.get("tests"), element.get("failures"), element.get("skipped")) == (
            "6", "1", "3")
    cases = suite.findall("testcase")
    assert len(cases) == 6
    assert len(suite.findall("testcase/failure")) == 1
    assert len(suite.findall("testcase/skipped")) == 3
    assert {c.get("classname") for c in cases} == {"first-crack@1 vs first-crack@2"}

    by_name = {c.get("name"): c for c in cases}
    assert set(by_name) == {"pi5-a threads=1", "pi5-a threads=2", "pi5-a threads=4",
                            "pi4-lab threads=1", "pi5-b threads=1",
                            'pi"<5>&\ufffd[31m threads=1'}
    failure = by_name["pi5-a threads=2"].find("failure")
    message = failure.get("message")
    match = re.fullmatch(r"(\d+\.\d)% slower \(bound 5%\): B/A (\d\.\d{3}), "
                         r"95% CI (\d\.\d{3})–(\d\.\d{3}), p <0\.001: slower", message)
    assert match, message
    percent, ratio, low, high = map(float, match.groups())
    assert 1 < low < ratio < high and abs(ratio - 1.2) < 0.02
    assert abs(percent - (ratio - 1) * 100) <= 0.1
    assert "first-crack@1 -> " in failure.text and "(n = 30 / 30)" in failure.text
    assert by_name["pi5-a threads=1"].find("failure") is None  # 4% < 5%: passes
    assert "slower" in by_name["pi5-a threads=1"].findtext("system-out")
    assert "faster" in by_name["pi5-a threads=4"].findtext("system-out")
    skipped = {name: c.find("skipped").get("message") for name, c in by_name.items()
               if c.find("skipped") is not None}
    assert skipped == {"pi4-lab threads=1": "only in A", "pi5-b threads=1": "only in B",
                       'pi"<5>&\ufffd[31m threads=1': "B throttled (under_voltage)"}
    assert suite.find("properties/property").attrib == {"name": "max_regression",
                                                        "value": "5%"}


def test_a_looser_bound_passes_and_the_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "bench.xml"
    path.write_text("stale")
    rows = measured_rows()
    assert write_junit(path, rows, 0.25, suite_name="roastery")["failures"] == 0
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite.get("name") == "roastery" and suite.get("failures") == "0"
    assert suite.find("testcase/failure") is None


def test_empty_comparison(tmp_path: Path) -> None:
    path = tmp_path / "empty.xml"
    assert write_junit(path, [], 0.05)["tests"] == 0
    assert ET.parse(path).getroot().find("testsuite").get("tests") == "0"
