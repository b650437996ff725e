"""``edgefleet demo`` (the README's first command) works with no Pi and no sshd, and is
idempotent: a second run re-sends nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cli


# The whole demo three times (JSON, again, human): ~3 min a run at load 13 on the shared 2-core
# VM, where the suite-wide 300 s timeout cut it off (2026-12-02); ~1 min a run when quiet.
@pytest.mark.timeout(1200)
def test_demo_end_to_end_and_again(cli: Cli, tmp_path: Path) -> None:
    home = tmp_path / "demo"
    report = cli("demo", "--home", home, "--json").json
    assert report["bundle"]["created"] and report["bundle"]["name"] == "first-crack"
    assert report["bundle"]["model"]["inputs"][0]["shape"] == ["batch", 198, 64]
    # built without --shape: the dimension named batch is assumed 1, and says so
    assert report["bundle"]["input_shapes"] == {"input_values": [1, 198, 64]}
    assert "batch" in str(report["bundle"]["shape_defaults"]["input_values"])
    assert report["bundle"]["labels"] == ["no_first_crack", "first_crack"]
    assert report["bundle"]["streaming"]["hop_s"] == 1.0
    variant = report["variant"]
    assert variant["version"] == "1-int8" and variant["precision"] == "int8"
    assert variant["parent"]["digest"] == report["bundle"]["digest"]
    assert variant["golden"] and variant["streaming"] == report["bundle"]["streaming"]
    assert [p["bundle"] for p in report["push"]] == ["first-crack@1", "first-crack@1-int8"]
    for pushed in report["push"]:
        assert [o["state"] for o in pushed["outcomes"]] == ["active"] * 3
        assert all(o["smoke"].startswith("passed") for o in pushed["outcomes"])
    devices = {d["name"]: d for d in report["devices"]}
    assert set(devices) == {"pi5-roaster", "pi5-bench", "pi4-lab"}
    assert all(d["simulated"] and d["active_bundle"] == "first-crack@1-int8"
               for d in devices.values())
    hot = devices["pi5-roaster"]
    assert hot["temp_c"] > 80 and "soft_temp_limit" in hot["throttle_flags"]["now"]
    assert devices["pi5-bench"]["throttle_flags"] == {"now": [], "since_boot": []}
    assert "under_voltage" in devices["pi4-lab"]["throttle_flags"]["since_boot"]
    for name in devices:
        assert (home / "devices" / name / "root" / "current" / "model.onnx").is_file()

    assert [b["bundle"] for b in report["bench"]] == ["first-crack@1", "first-crack@1-int8"]
    for run in report["bench"]:
        bench = {(r["device"], r["threads"]): r for r in run["results"]}
        assert set(bench) == {(name, t) for name in devices for t in (1, 2)}
        assert all(r["ok"] and r["latency_ms"]["p50"] > 0 for r in bench.values())
        assert bench[("pi5-roaster", 1)]["valid"] is False
        assert {"soft_temp_limit", "temp_over_80c"} <= set(bench[("pi5-roaster", 2)]["flags"])
        assert bench[("pi5-bench", 1)]["valid"] is True
        # pi4-lab's under-voltage happened before the run (sticky bits only): noted, not flagged.
        assert bench[("pi4-lab", 1)]["valid"] is True
        assert bench[("pi5-bench", 1)]["energy"]["available"] is True
        assert bench[("pi4-lab", 1)]["energy"]["available"] is False

    # Eval: the trained model on 64 unseen WAV windows, the same on every device.
    assert report["dataset"]["samples"] == 64
    assert report["dataset"]["per_label"]["first_crack"] == 16
    results = report["eval"]["results"]
    assert len(results) == 6 and all(r["ok"] for r in results)
    accuracies = {r["eval"]["metrics"]["accuracy"] for r in results}
    assert len(accuracies) == 1 and 0.85 <= accuracies.pop() < 1.0
    assert report["eval"]["agreement"]["same_confusion"] is True
    verdict = report["verdict"]
    assert {row["device"] for row in verdict["rows"]} == set(devices)
    assert verdict["recommended"]["pi5-roaster"]["threads"] is None  # throttled: no advice
    assert verdict["recommended"]["pi5-bench"]["threads"] in (1, 2)

    # Nightly-style runs of v1 on the clean Pi, then of a deliberately slower v2: the detector
    # finds one change point, at v2's first run, and none in v1's noise; the Pi is rolled back.
    nightly = report["nightly"]
    assert [n["bundle"] for n in nightly] == ["first-crack@1"] * 5 + ["first-crack@2"] * 4
    assert report["slower"] == {"bundle": "first-crack@2", "created": True}
    (change,) = report["regressions"]["change_points"]
    assert (change["device"], change["bundle"], change["precision"], change["threads"]) == \
        ("pi5-bench", "first-crack", "fp32", 1)
    assert change["run_id"] == nightly[5]["run_id"] and change["version"] == "2"
    assert change["direction"] == "slower" and change["ratio"] > 3  # ~10x the work
    assert change["metric"] == "cpu"  # the agent's CPU p50s: steadier than wall time
    assert change["ci_low"] > 1 and change["p_value"] < report["regressions"]["detector"][
        "max_pvalue"]
    assert (change["points_before"], change["points_after"]) == (6, 4)
    assert [o["state"] for o in report["rollback"]] == ["rolled-back"]

    again = cli("demo", "--home", home, "--json").json
    assert not again["bundle"]["created"] and not again["variant"]["created"]
    assert not again["dataset"]["created"]
    assert all(o["bytes_sent"] == 0 for p in again["push"] for o in p["outcomes"])

    human = cli("demo", "--home", home).stdout
    assert "$ edgefleet push first-crack@1-int8 all" in human and "pi5-roaster (sim)" in human
    assert "temp_over_80c" in human and "$ edgefleet bench first-crack@1 all" in human
    assert "confusion matrix: all 6 results" in human and "recommended threshold" in human
    assert "per-class report: all 6 results" in human and "support" in human
    assert "$ edgefleet runs verdict" in human and "keeps up" in human
    assert "$ edgefleet runs regressions --bundle first-crack" in human
    assert "--shape" not in human  # the batch dimension is 1 by default: no flag needed
    assert "change point(s) in 8 series" in human and "1 -> 2" in " ".join(human.split())


def test_fresh_deletes_only_a_demo_home(cli: Cli, tmp_path: Path) -> None:
    """`demo --fresh --home DIR` ran rmtree(DIR) whatever DIR was (`--home ~` deleted the
    user's home). It now deletes only a directory a demo made (its marker, or an older demo's
    layout) or an empty one, and refuses anything else before touching it."""
    from orchestrator.demo import scenario

    precious = tmp_path / "precious"
    (precious / "sub").mkdir(parents=True)
    (precious / "important.txt").write_text("keep me")
    refused = cli("demo", "--fresh", "--home", precious, "--json", expect=2).json
    assert "--fresh deletes only a demo home" in refused["error"]
    assert str(precious) in refused["error"] and "nothing was deleted" in refused["error"]
    assert (precious / "important.txt").read_text() == "keep me" and (precious / "sub").is_dir()

    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "is a file, not a directory" in cli("demo", "--home", afile, "--json",
                                               expect=2).json["error"]
    assert afile.read_text() == "x"

    made = tmp_path / "made"  # what a demo leaves: its marker, and whatever it wrote
    (made / "devices").mkdir(parents=True)
    (made / scenario.MARKER).write_text("")
    scenario.reset(made)
    assert not made.exists()
    older = tmp_path / "older"  # made before the marker existed
    (older / "devices").mkdir(parents=True)
    (older / "models" / scenario.DEMO_BUNDLE).mkdir(parents=True)
    (older / "inventory.yml").write_text("all: {}\n")
    scenario.reset(older)
    assert not older.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    scenario.reset(empty)
    assert not empty.exists()
