"""Streaming profiles, deployment verdicts and thread recommendations on constructed latencies
(the seed's numbers), stored runs in a real migrated SQLite DB, and `edgefleet runs verdict`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.core.config import get_settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Bundle, Result, Run
from orchestrator.measure.reports import to_csv, to_markdown
from orchestrator.measure.rounds import merge_energy
from orchestrator.measure.runs import pack_floats
from orchestrator.measure.verdicts import (
    ProfileError,
    StreamingProfile,
    load_profile,
    load_profile_file,
    recommend_threads,
    verdicts_for_run,
    window_verdict,
)
from tests.conftest import Cli

SEED = StreamingProfile(window_s=10.0, hop_s=7.0, threshold=0.9, min_positive=3,
                        confirm_windows=5)
SEED_YAML = """\
# configs/default.yaml
pi_inference:
  window_size: 10.0
  overlap: 0.3           # 30% -> 7s hop, comfortable margin for 2-thread latency
  threshold: 0.90        # precision=0.952, recall=0.909, F1=0.930
  min_pops: 3            # 3 positive windows required within the confirmation window
  confirmation_window: 30.0  # seconds
  onnx_threads: 2        # leaves 2 cores free for MCP server + agent UI
"""


def spread(center_ms: float, n: int = 30) -> list[float]:
    """n latencies around ``center_ms`` (+-1%), p50 = center."""
    return list(np.linspace(center_ms * 0.99, center_ms * 1.01, n))


def test_seed_profile_keeps_up_at_two_threads_not_at_one() -> None:
    two = window_verdict(SEED, [2450.0] * 30, True, 2)
    assert two["keeps_up"] is True and two["p50_ms"] == two["p99_ms"] == 2450.0
    assert two["headroom_s"] == pytest.approx(4.55) and round(two["headroom_pct"]) == 65
    assert two["rtf"] == pytest.approx(0.245)
    assert two["worst_case_delay_s"] == pytest.approx(10 + 3 * 7 + 2.45)
    one = window_verdict(SEED, spread(9412.0), True, 1)
    assert one["keeps_up"] is False and one["headroom_s"] < 0
    assert one["p50_ms"] == pytest.approx(9412.0) and one["p99_ms"] > 9412.0
    rec = recommend_threads([one | {"ok": True}, two | {"ok": True}])
    assert rec["threads"] == 2 and "65%" in rec["reason"]


def test_p99_decides_not_the_median() -> None:
    latencies = [2000.0] * 95 + [7500.0] * 5  # median fine, the slow tail falls behind
    verdict = window_verdict(SEED, latencies, True, 1)
    assert verdict["p50_ms"] == 2000.0 and verdict["keeps_up"] is False


def row(threads: int, p99_s: float, valid: bool | None = True, ok: bool = True,
        flags: tuple[str, ...] = ()) -> dict[str, Any]:
    if not ok:
        return {"threads": threads, "ok": False, "error": "killed by signal 9"}
    return window_verdict(SEED, [p99_s * 1000] * 10, valid, threads) | {"ok": True,
                                                                        "flags": list(flags)}


def test_recommendation_rules() -> None:
    # 1 thread keeps up with only ~14% headroom; 2 threads is the fewest with >= 30%
    assert recommend_threads([row(1, 6.0), row(2, 3.0), row(4, 2.0)])["threads"] == 2
    # 2 threads was throttled: 4 threads is the fewest valid one
    rec = recommend_threads([row(1, 9.4), row(2, 3.0, False, flags=("under_voltage",)),
                             row(4, 2.0)])
    assert rec["threads"] == 4
    none = recommend_threads([row(1, 9.4), row(2, 6.0), row(4, 3.0, False,
                                                            flags=("soft_temp_limit",)),
                              row(8, 0, ok=False)])
    assert none["threads"] is None
    assert none["reason"] == (
        "no thread count qualifies: 1 thread falls behind (p99 9400 ms >= the 7 s hop); "
        "2 threads keep up with only 14% headroom (< 30%); 4 threads keep up with 57% "
        "headroom but the result is not valid (soft_temp_limit): re-measure without "
        "throttling; 8 threads failed (killed by signal 9)")
    assert recommend_threads([])["threads"] is None


@pytest.mark.parametrize(("doc", "message"), [
    ({"window_s": 10, "hop_s": 12}, "longer than the 10 s window"),
    ({"window_s": 10, "overlap": 1.0}, "overlap must be in [0, 1)"),
    ({"window_s": 10, "overlap": -0.1}, "overlap must be in [0, 1)"),
    ({"window_s": 10, "hop_s": 5, "overlap": 0.3}, "disagree (that overlap gives a 7 s hop)"),
    ({"window_s": 10}, "give hop_s"),
    ({"hop_s": 5}, "window_s (seconds of audio per window) is missing"),
    ({"window_s": 0, "hop_s": 0}, "window_s must be > 0"),
    ({"window_s": 10, "hop_s": 0}, "hop_s must be > 0"),
    ({"window_s": "ten", "hop_s": 5}, "window_s must be a number, got 'ten'"),
    ({"window_s": 10, "hop_s": 5, "threshold": 1.5}, "threshold must be a probability"),
    ({"window_s": 10, "hop_s": 5, "min_positive": 0}, "min_positive must be >= 1"),
    ({"window_s": 10, "hop_s": 5, "min_positive": 1.5}, "min_positive must be an integer"),
    ({"window_s": 10, "hop_s": 5, "min_positive": 3, "confirm_windows": 2},
     "confirm_windows (2) must be >= min_positive (3)"),
    ({"window_s": 10, "hop_s": 5, "hop": 5}, "unknown key(s) hop"),
])
def test_bad_profiles_say_what_is_wrong(doc: dict, message: str) -> None:
    with pytest.raises(ProfileError, match="^my.yml: ") as info:
        load_profile(doc, "my.yml")
    assert message in str(info.value)


def test_profile_shapes_and_files(tmp_path: Path) -> None:
    ours = load_profile({"window_s": 10, "overlap": 0.3, "threshold": 0.9, "min_positive": 3,
                         "confirm_windows": 5})
    assert ours == SEED and ours.overlap == pytest.approx(0.3)
    assert load_profile({"streaming": {"window_s": 1, "hop_s": 0.5}}) == StreamingProfile(1, 0.5)
    assert load_profile(ours.to_dict()) == ours  # to_dict round-trips (hop and overlap agree)
    seed_file = tmp_path / "default.yaml"
    seed_file.write_text(SEED_YAML)
    assert load_profile_file(seed_file) == SEED  # 30 s span, 7 s hop: 5 windows
    json_file = tmp_path / "profile.json"
    json_file.write_text(json.dumps({"window_s": 2, "hop_s": 1, "positive": "first_crack"}))
    assert load_profile_file(json_file) == StreamingProfile(2.0, 1.0, positive="first_crack")
    broken = tmp_path / "broken.yaml"
    broken.write_text("window_s: 10\nhop_s: [1,\n")
    with pytest.raises(ProfileError, match=r"broken\.yaml:\d+: not valid YAML"):
        load_profile_file(broken)
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile_file(tmp_path / "missing.yaml")


# -- stored runs ---------------------------------------------------------------------------
ENERGY = {"available": True, "mean_w": 6.5, "mj_per_inference": 15925.0, "samples": 40,
          "source": "vcgencmd pmic_read_adc"}
NO_ENERGY = {"available": False, "reason": "not available: only a Raspberry Pi 5 has it"}


def insert(kind: str, results: list[dict[str, Any]], params: dict | None = None,
           streaming: dict | None = None) -> int:
    with session_scope(get_settings()) as session:
        digest = f"{len(results)}{kind}".ljust(64, "0")
        if session.get(Bundle, 1) is None or streaming is not None:
            manifest = {"name": "first-crack", "streaming": streaming} if streaming else {}
            session.add(Bundle(name="first-crack", version=f"v{kind}{len(results)}",
                               digest=digest, size_bytes=1, manifest_json=json.dumps(manifest)))
        run = Run(kind=kind, bundle_name="first-crack", bundle_version="3-int8",
                  bundle_digest=digest, targets="pis", params=params or {}, created_by="test",
                  state="succeeded")
        session.add(run)
        session.flush()
        for fields in results:
            infer = fields.pop("infer")
            detail = {"energy": fields.pop("energy", None)}
            if "pre" in fields:
                detail["preprocessing_ms"] = fields.pop("pre")
            session.add(Result(run_id=run.id, simulated=True, latencies=pack_floats(infer),
                               detail=detail, **{"ok": True, "valid": True} | fields))
        assert run.id is not None
        return run.id


def eval_run(params: dict | None = None, streaming: dict | None = None) -> int:
    return insert("eval", [
        {"device_name": "pi5", "threads": 1, "pre": [400.0] * 20, "infer": spread(9000.0, 20),
         "energy": ENERGY},
        {"device_name": "pi5", "threads": 2, "pre": [300.0] * 20, "infer": [2150.0] * 20,
         "energy": ENERGY},
        {"device_name": "pi4", "threads": 1, "infer": [], "ok": False, "valid": None,
         "error": "measurement process for 1 thread was killed by signal 9 (SIGKILL)"},
        {"device_name": "pi4", "threads": 2, "pre": [500.0] * 20, "infer": [2000.0] * 20,
         "valid": False, "flags": ["under_voltage"], "energy": NO_ENERGY},
    ], params, streaming)


def test_verdicts_for_an_eval_run_add_preprocessing(home: Path) -> None:
    run_id = eval_run(params={"profile": {"window_s": 10, "overlap": 0.3, "threshold": 0.9,
                                          "min_positive": 3, "confirm_windows": 5}})
    with session_scope(get_settings()) as session:
        report = verdicts_for_run(session, run_id)
    assert report["profile_source"] == f"run {run_id} (params.profile)"
    assert report["profile"]["hop_s"] == pytest.approx(7.0)
    rows = {(r["device"], r["threads"]): r for r in report["rows"]}
    two = rows[("pi5", 2)]
    assert two["p50_ms"] == 2450.0 and two["keeps_up"] and round(two["headroom_pct"]) == 65
    assert two["basis"] == "preprocessing + inference" and two["energy"] == ENERGY
    assert rows[("pi5", 1)]["keeps_up"] is False
    assert rows[("pi4", 1)]["ok"] is False and "SIGKILL" in rows[("pi4", 1)]["error"]
    assert rows[("pi4", 2)]["keeps_up"] and rows[("pi4", 2)]["valid"] is False
    assert report["recommended"]["pi5"]["threads"] == 2
    assert report["recommended"]["pi4"]["threads"] is None
    assert "under_voltage" in report["recommended"]["pi4"]["reason"]
    # a profile given explicitly wins over the stored one
    with session_scope(get_settings()) as session:
        tight = verdicts_for_run(session, run_id, StreamingProfile(10.0, 2.0))
    assert tight["profile_source"] == "given"
    assert not any(r.get("keeps_up") for r in tight["rows"])


def test_bench_runs_say_preprocessing_was_not_measured_and_bundle_profile_is_used(
        home: Path) -> None:
    run_id = insert("bench", [{"device_name": "pi5", "threads": 4, "infer": [2090.0] * 30}],
                    streaming={"window_s": 10, "hop_s": 3})
    with session_scope(get_settings()) as session:
        report = verdicts_for_run(session, run_id)
    assert report["profile_source"].startswith("bundle first-crack@") and \
        report["profile_source"].endswith("(manifest streaming)")
    (only,) = report["rows"]
    assert only["basis"] == "inference only: preprocessing not measured (a benchmark)"
    assert only["keeps_up"] and round(only["headroom_pct"]) == 30 and only["energy"] is None


def test_runs_verdict_cli(cli: Cli) -> None:
    run_id = eval_run()
    missing = cli("runs", "verdict", str(run_id), expect=2)
    assert f"run {run_id} has no streaming profile" in missing.stderr
    assert f"edgefleet runs verdict {run_id} --window 10 --overlap 0.3" in missing.stderr
    out = cli("runs", "verdict", str(run_id), "--window", "10", "--overlap", "0.3",
              "--min-positive", "3", "--confirm-windows", "5", "--json").json
    assert out["profile"]["hop_s"] == pytest.approx(7.0) and out["profile"]["min_positive"] == 3
    assert out["profile_source"] == "the command line"
    assert out["recommended"]["pi5"]["threads"] == 2
    table = cli("runs", "verdict", str(run_id), "--window", "10", "--hop", "7").stdout
    for heading in ("p99 window ms", "keeps up", "headroom", "RTF", "worst-case delay s",
                    "mJ/window", "valid"):
        assert heading in table
    assert "4550 ms (65%)" in table and "15925" in table and "6.50" in table
    assert "pi5: 2 threads — " in table and "pi4: no recommendation" in table
    assert "p99 2450 ms per window" in table  # latencies in ms, in the sentence too
    assert " s per window" not in table
    assert "no: under_voltage" in table and "failed: measurement process" in table
    bad = cli("runs", "verdict", str(run_id), "--window", "10", "--hop", "12", "--json",
              expect=2)
    assert "longer than the 10 s window" in bad.json["error"]
    assert "no run 999" in cli("runs", "verdict", "999", "--window", "1", "--hop", "1",
                               expect=2).stderr


def test_overrides_apply_on_top_of_the_stored_profile(cli: Cli, tmp_path: Path) -> None:
    run_id = eval_run(params={"profile": {"pi_inference": {
        "window_size": 10.0, "overlap": 0.3, "threshold": 0.9, "min_pops": 3,
        "confirmation_window": 30.0}}})
    out = cli("runs", "verdict", str(run_id), "--hop", "2", "--json").json
    assert out["profile"]["window_s"] == 10 and out["profile"]["hop_s"] == 2
    assert out["profile"]["min_positive"] == 3 and out["profile"]["threshold"] == 0.9
    assert out["profile_source"] == (f"run {run_id} (params.profile) with hop_s from the "
                                     "command line")
    assert not any(r.get("keeps_up") for r in out["rows"])
    assert {d: r["threads"] for d, r in out["recommended"].items()} == {"pi5": None, "pi4": None}


def test_energy_columns_only_when_measured() -> None:
    base = {"device": "pi5", "bundle": {"name": "m", "version": "1"}, "threads": 2, "ok": True,
            "valid": True, "latency_ms": {"p50": 10.0, "p95": 12.0},
            "telemetry": {"status": "clean"}}
    plain = to_markdown([base])
    assert "mJ/inf" not in plain and " W " not in plain
    with_energy = to_markdown([base | {"energy": ENERGY}, base | {"device": "pi4",
                                                                  "energy": NO_ENERGY}])
    assert "| W | mJ/inf |" in with_energy and "| 6.50 | 15925 |" in with_energy
    assert "| pi4 |" in with_energy and "| - | - |" in with_energy
    csv_text = to_csv([base | {"energy": ENERGY}])
    assert csv_text.splitlines()[0].endswith(",mean_w,mj_per_inference")
    assert csv_text.splitlines()[1].endswith(",6.5,15925.0")
    assert "mean_w" not in to_csv([base])


def test_energy_of_gate_rounds_is_merged() -> None:
    def entry(mean_w: float, wall_s: float, runs: int) -> dict[str, Any]:
        return {"wall_s": wall_s, "runs": runs, "energy": {
            "available": True, "mean_w": mean_w, "mj_per_inference": mean_w * wall_s / runs * 1e3,
            "samples": 4, "source": "vcgencmd pmic_read_adc"}}

    merged = merge_energy([entry(4.0, 1.0, 10), entry(6.0, 3.0, 10)])
    assert merged is not None and merged["available"] is True
    assert merged["mean_w"] == pytest.approx(5.5)  # weighted by time
    assert merged["mj_per_inference"] == pytest.approx((400.0 * 10 + 1800.0 * 10) / 20)
    assert merged["samples"] == 8
    # equal to energy over the pooled rounds: total J / total inferences
    assert merged["mj_per_inference"] == pytest.approx((4.0 * 1.0 + 6.0 * 3.0) / 20 * 1e3)
    missing = merge_energy([entry(4.0, 1.0, 10), {"wall_s": 1.0, "runs": 10,
                                                  "energy": NO_ENERGY}])
    assert missing == NO_ENERGY
    assert merge_energy([{"wall_s": 1.0, "runs": 1}]) is None
