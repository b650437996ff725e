"""``edgefleet worker``: run jobs (pushes, benchmarks, evaluations, schedules, telemetry polls)
on this host, from the database every worker and server shares, until SIGINT/SIGTERM.

On PostgreSQL any number of hosts may run one (procrastinate, orchestrator.jobs.engine); on
SQLite one process per database file does (orchestrator.jobs.workers says why).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Annotated

import typer

from orchestrator.cli.app import JsonOpt, app, handles_errors, settings
from orchestrator.present import output


@app.command("worker")
@handles_errors
def worker_cmd(
    workers: Annotated[int, typer.Option(
        min=1, max=200, help="Jobs run at once by this process.")] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Run jobs from the shared database until stopped (Ctrl-C / SIGTERM: running jobs get 30 s
    to finish; jobs of a worker that dies are marked interrupted by the others)."""
    from orchestrator.core.db import get_engine
    from orchestrator.core.schema import redact
    from orchestrator.jobs import workers as job_workers

    cfg = settings()
    get_engine(cfg)  # migrate under the lock, or refuse a newer schema, before taking jobs
    job_workers.hold_sqlite_lock(cfg)
    runner = job_workers.make(cfg, workers)
    started = {"worker": runner.worker_id, "backend": job_workers.backend(cfg),
               "workers": workers, "database": redact(cfg.db_url)}
    if as_json:  # JSON lines: one object when it runs, one when it stopped
        _json_line(started | {"state": "running"})
    else:
        output.stderr.print(f"EdgeFleet worker {runner.worker_id}: {workers} job(s) at once on "
                            f"{started['database']} ({started['backend']}); Ctrl-C to stop")
    run = getattr(runner, "run", None)
    if run is not None:  # procrastinate: its loop in the foreground, stopped by the signals
        run()
    else:  # the threads: wait here for a signal
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        runner.start()
        stop.wait()
        runner.stop()
    if as_json:
        _json_line(started | {"state": "stopped"})


def _json_line(value: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()
