"""CLI: jobs, whoever started them (a server or worker, a schedule, another ``edgefleet``
command): list them, show one with its devices and rollout batches, cancel one.

Why in the CLI too: a push or bench run from the web, a schedule or another terminal is a job
like the CLI's own, and a user at a terminal (or a script, ``--json``) must be able to follow
and stop it without opening the browser. The same services as ``/api/jobs`` and the Jobs page
(``jobs.queue``); cancelling is audited there as ``job.cancel``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from orchestrator.cli.app import JsonOpt, app, handles_errors, settings
from orchestrator.present import output
from orchestrator.present.cliparse import row_id

jobs_app = typer.Typer(no_args_is_help=True,
                       help="Jobs (pushes, benchmarks, evals, ...): list, show, cancel.")
app.add_typer(jobs_app, name="jobs")

JobId = Annotated[int, row_id("job", metavar="JOB_ID",
                              help="The job's number (`edgefleet jobs list`).")]
STATE_STYLES = {"succeeded": "green", "failed": "red", "interrupted": "red", "running": "cyan",
                "cancelled": "yellow", "queued": ""}


def _when(value: str | None) -> str:
    return value[:19].replace("T", " ") if value else "–"


def _short(error: str | None, keep: int = 60) -> str:
    """A list row's error: its start (``jobs show`` has it whole)."""
    error = " ".join((error or "").split())
    return error if len(error) <= keep else error[:keep - 1] + "…"


def _state(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


@jobs_app.command("list")
@handles_errors
def jobs_list(
    state: Annotated[str | None, typer.Option(
        "--state", help="queued, running, succeeded, failed, cancelled or interrupted.")] = None,
    kind: Annotated[str | None, typer.Option(
        "--kind", help="push, bench, eval, rollback, verify or telemetry.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Recent jobs, newest first (the web's Jobs page)."""
    from orchestrator.core.db import session_scope
    from orchestrator.jobs.queue import job_public, list_jobs

    with session_scope(settings()) as session:
        rows = [job_public(j) for j in list_jobs(session, limit, state=state, kind=kind)]
    if as_json:
        output.print_json(rows)
        return
    if not rows:
        output.stdout.print("No jobs.")
        return
    output.stdout.print(output.table(
        None, ["id", "kind", "state", "targets", "by", "created", "finished", "error"],
        [(j["id"], j["kind"], _state(j["state"]), j["targets"],
          f"{j['created_by']} ({j['origin']})", _when(j["created_at"]),
          _when(j["finished_at"]), _short(j["error"])) for j in rows]))


def _show(job: dict[str, Any]) -> None:
    from orchestrator.present.progress_words import device_rows, rollout_of

    head = Text.assemble((f"job {job['id']}", "bold"), f" {job['kind']} {job['targets']}: ",
                         _state(job["state"]))
    if job["cancel_requested"] and job["state"] in ("queued", "running"):
        head.append(" (cancelling)", style="yellow")
    output.stdout.print(head)
    started = f"started {_when(job['started_at'])}" if job["started_at"] else "not started"
    where = f" on {job['worker']}" if job["worker"] else ""
    output.stdout.print(Text(f"by {job['created_by']} ({job['origin']}), created "
                             f"{_when(job['created_at'])}, {started}{where}, finished "
                             f"{_when(job['finished_at'])}"))
    if job["error"]:
        output.stdout.print(Text.assemble(("error:", "red"), f" {job['error']}"),
                            soft_wrap=True)
    rollout = rollout_of(job)
    if rollout:
        output.stdout.print(output.table(
            "rollout", ["batch", "devices", "state", "note"],
            [("canary" if b.get("kind") == "canary" else b.get("index"),
              ", ".join(b.get("devices") or []), _state(str(b.get("state"))), b.get("note"))
             for b in rollout.get("batches") or []]))
    devices = device_rows(job["progress"], job["kind"])
    if devices:
        output.stdout.print(output.table(
            "devices", ["device", "state", "done", "error"],
            [(d["device"], _state(str(d.get("state") or "waiting")),
              f"{d['percent']:.0f}%" if d["is_bytes"] and d["percent"] is not None
              else d["counts"], d.get("error")) for d in devices]))
    for run in (job["result"] or {}).get("runs") or ([{"id": job["run_id"]}]
                                                      if job["run_id"] else []):
        output.stdout.print(f"results: edgefleet runs show {run['id']}")


@jobs_app.command("show")
@handles_errors
def jobs_show(job_id: JobId, as_json: JsonOpt = False) -> None:
    """One job: its state, who started it where, each device's progress, a rollout's
    batches, its error, and the run holding its results."""
    from orchestrator.core.db import session_scope
    from orchestrator.jobs.queue import get_job, job_public

    with session_scope(settings()) as session:
        job = job_public(get_job(session, job_id))
    if as_json:
        output.print_json(job)
    else:
        _show(job)


@jobs_app.command("cancel")
@handles_errors
def jobs_cancel(job_id: JobId, as_json: JsonOpt = False) -> None:
    """Cancel a job: a queued one at once; a running one stops at its next safe boundary
    (devices done stay done), wherever it runs. Exit 2 if it already finished."""
    from orchestrator.access.audit import local_actor
    from orchestrator.jobs.queue import cancel, job_public

    job = job_public(cancel(settings(), job_id, actor=local_actor()))
    if as_json:
        output.print_json(job)
    elif job["state"] == "cancelled":
        output.stdout.print(f"job {job_id} cancelled.")
    else:
        output.stdout.print(f"job {job_id} ({job['state']}) asked to stop: it stops at its "
                            f"next safe boundary; `edgefleet jobs show {job_id}` follows it.")
