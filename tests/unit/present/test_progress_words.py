"""Progress never shows a count past its total (issue 13 item 4): the job page's "6089 / 6"
and the CLI's "timed 46378/300" came from ``--min-seconds`` deciding the timed loop's length.
The rule (orchestrator.present.progress_words) as the CLI bar and the web rows use it."""

from __future__ import annotations

from io import StringIO

import pytest
from rich.console import Console

from orchestrator.present import output, progress_words
from orchestrator.present.progress_words import device_rows


def test_runs_and_seconds_each_against_their_own_total() -> None:
    past = {"phase": "timed", "done": 6089, "total": 6, "seconds": 3.14, "min_seconds": 10}
    assert progress_words.counts(past) == "6/6 runs, 3.1/10 s"
    assert progress_words.fraction(past) == 0.314  # the loop ends when the seconds do
    done = past | {"seconds": 10.02}
    assert progress_words.counts(done) == "6/6 runs, 10/10 s"
    assert progress_words.fraction(done) == 1.0
    runs_left = {"phase": "timed", "done": 12, "total": 300, "seconds": 45.0, "min_seconds": 30}
    assert progress_words.counts(runs_left) == "12/300 runs, 30/30 s"
    assert progress_words.fraction(runs_left) == 0.04
    # Without --min-seconds (or from an agent too old to say): runs alone, capped all the same.
    assert progress_words.counts({"phase": "timed", "done": 46378, "total": 300}) == \
        "300/300 runs"
    assert progress_words.counts({"phase": "warmup", "done": 2, "total": 5}) == "2/5 runs"
    load = {"phase": "load", "done": 1, "total": 1}
    assert progress_words.counts(load, progress_words.unit_of(load)) == "1/1"
    samples = {"phase": "samples", "done": 40, "total": 64}  # "samples 40/64": said once
    assert progress_words.counts(samples, progress_words.unit_of(samples, "eval")) == "40/64"
    assert progress_words.counts({"phase": "timed"}) is None
    assert progress_words.fraction({"phase": "timed"}) is None


def test_web_rows_and_cli_bar_say_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    progress = {"devices": {
        "pi-a": {"state": "running", "threads": 2, "phase": "timed", "done": 6089, "total": 6,
                 "seconds": 2.5, "min_seconds": 10, "step": 2, "steps": 2},
        "pi-b": {"state": "transferring", "bytes": 500, "total": 2000}}}
    a, b = device_rows(progress)
    assert (a["counts"], round(a["percent"], 1), a["is_bytes"]) == ("6/6 runs, 2.5/10 s", 25.0,
                                                                    False)
    assert (b["counts"], b["percent"], b["is_bytes"]) == (None, 25.0, True)

    buffer = StringIO()
    monkeypatch.setattr(output, "stderr", Console(file=buffer, width=120, force_terminal=False))
    bars = output.MeasureProgress()
    with bars:
        bars.event("pi-a", {"event": "bench", "threads": 1, "phase": "timed", "done": 46378,
                            "total": 300, "seconds": 12.0, "min_seconds": 60})
    text = buffer.getvalue()
    assert "1 thread, timed 300/300 runs, 12/60 s" in text and "46378" not in text
