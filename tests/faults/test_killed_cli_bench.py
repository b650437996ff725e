"""SIGKILL of ``edgefleet bench`` while a real sshd device measures its second thread count,
with ``--min-seconds`` deciding how long each measurement lasts.

Before: the progress read "timed 46378/300" (runs past their target while the seconds ran),
the thread count that had finished was lost with the process (rows were written when the
device's session ended), and the run stayed "running", its page offering a deployment verdict
for an unfinished run. Now the progress shows runs and seconds against their own totals, the
finished thread count is in the DB the moment it finished, and the next look at the run (CLI or
web) finds it interrupted, says the CLI process died, and gives no verdict.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlmodel import select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Job, Result
from orchestrator.present import progress_words
from tests.conftest import Cli
from tests.live_server import Server

from .procs import pushed_host, spawn_cli, wait_until

MIN_SECONDS = 4.0  # per thread count: the demo classifier does thousands of runs in that time
RUNS = 5


def _progress(settings: Settings, device: str) -> dict[str, Any]:
    with session_scope(settings) as session:
        job = session.exec(select(Job).where(Job.kind == "bench")).first()
        return dict(((job.progress if job else {}) or {}).get("devices", {}).get(device, {}))


def test_a_killed_cli_bench_is_interrupted_keeps_what_finished_and_gets_no_verdict(
        cli: Cli, home: Path, sshd_factory, tmp_path: Path,
        serve: Callable[..., Server]) -> None:
    host, ref = pushed_host(cli, sshd_factory, tmp_path)
    settings = Settings(home=home)
    log = tmp_path / "bench.log"
    bench = spawn_cli(home, "bench", ref, "pis", "--threads", "1,2", "--warmup", "1",
                      "--runs", str(RUNS), "--min-seconds", str(MIN_SECONDS),
                      "--shape", "log_mel=1x1x98x40", "--json", log=log)

    def second_count_past_its_runs() -> dict[str, Any] | None:
        entry = _progress(settings, host.name)
        return entry if (entry.get("step") == 2 and entry.get("phase") == "timed"
                         and (entry.get("done") or 0) > RUNS) else None

    entry = wait_until(second_count_past_its_runs, "threads=2 timing past its runs", 120,
                       proc=bench, log=log)
    # The agent reports the runs it did (past the target: the seconds decide) and the seconds;
    # what a person reads caps each at its own total.
    assert entry["min_seconds"] == MIN_SECONDS and 0 <= entry["seconds"] <= MIN_SECONDS + 1
    words = progress_words.counts(entry)
    assert words is not None and re.fullmatch(rf"{RUNS}/{RUNS} runs, [0-9.]+/4 s", words), words
    assert 0 <= progress_words.fraction(entry) < 1  # type: ignore[operator]

    with session_scope(settings) as session:  # stored when it finished, not at the end
        stored = session.exec(select(Result)).all()
        assert [(r.threads, r.ok) for r in stored] == [(1, True)]
        run_id = stored[0].run_id
    bench.kill()  # SIGKILL: no handler runs, nothing is finalized by the process itself
    assert bench.wait(30) == -9

    shown = cli("runs", "show", str(run_id), "--json").json  # finds the dead process first
    assert shown["state"] == "interrupted", shown
    reason = shown["state_reason"]
    assert f"the `edgefleet` command running it (pid {bench.pid}) died" in reason, reason
    assert [(r["threads"], r["ok"]) for r in shown["results"]] == [(1, True)]
    assert shown["results"][0]["latency_ms"]["n"] > RUNS
    table = cli("runs", "show", str(run_id)).stdout
    assert "(interrupted)" in table and "gets no verdict" in table
    refused = cli("runs", "verdict", str(run_id), "--window", "1", "--hop", "1", expect=2)
    assert "was interrupted" in refused.stderr and "gets no verdict" in refused.stderr

    server = serve()
    page = server.api("GET", f"/runs/{run_id}")
    assert page.status_code == 200, page.text
    html = page.text
    assert 'id="run-interrupted"' in html and "died" in html
    assert 'id="verdict-unfinished"' in html and 'id="verdict-table"' not in html
    api = server.get(f"/api/runs/{run_id}")
    assert api["state"] == "interrupted" and api["state_reason"] == reason
