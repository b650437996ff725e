"""``edgefleet demo`` (the README's first command) works with no Pi and no sshd, and is
idempotent: a second run re-sends nothing."""

from __future__ import annotations

from pathlib import Path

from ..conftest import Cli


def test_demo_end_to_end_and_again(cli: Cli, tmp_path: Path) -> None:
    home = tmp_path / "demo"
    report = cli("demo", "--home", home, "--json").json
    assert report["bundle"]["created"] and report["bundle"]["name"] == "first-crack"
    assert report["bundle"]["model"]["inputs"][0]["shape"] == ["batch", 1, 98, 40]
    assert [p["state"] for p in report["push"]] == ["active"] * 3
    devices = {d["name"]: d for d in report["devices"]}
    assert set(devices) == {"pi5-roaster", "pi5-bench", "pi4-lab"}
    assert all(d["simulated"] and d["active_bundle"] == "first-crack@1"
               for d in devices.values())
    hot = devices["pi5-roaster"]
    assert hot["temp_c"] > 80 and "soft_temp_limit" in hot["throttle_flags"]["now"]
    assert devices["pi5-bench"]["throttle_flags"] == {"now": [], "since_boot": []}
    assert "under_voltage" in devices["pi4-lab"]["throttle_flags"]["since_boot"]
    for name in devices:
        assert (home / "devices" / name / "root" / "current" / "model.onnx").is_file()

    bench = {(r["device"], r["threads"]): r for r in report["bench"]["results"]}
    assert set(bench) == {(name, t) for name in devices for t in (1, 2)}
    assert all(r["ok"] and r["latency_ms"]["p50"] > 0 for r in bench.values())
    assert bench[("pi5-roaster", 1)]["valid"] is False
    assert {"soft_temp_limit", "temp_over_80c"} <= set(bench[("pi5-roaster", 2)]["flags"])
    assert bench[("pi5-bench", 1)]["valid"] is True
    # pi4-lab's under-voltage happened before the run (sticky bits only): noted, not flagged.
    assert bench[("pi4-lab", 1)]["valid"] is True

    again = cli("demo", "--home", home, "--json").json
    assert not again["bundle"]["created"]
    assert [(p["state"], p["bytes_sent"]) for p in again["push"]] == [("unchanged", 0)] * 3

    human = cli("demo", "--home", home).stdout
    assert "$ edgefleet push first-crack@1 all" in human and "pi5-roaster (sim)" in human
    assert "temp_over_80c" in human and "$ edgefleet bench first-crack@1 all" in human
