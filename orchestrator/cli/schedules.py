"""CLI: schedules (a nightly benchmark, a push at 3 a.m.): list, add, pause, resume, run now,
delete. The same services as ``/api/schedules`` and the Schedules page (``jobs.schedules``),
each audited there (``schedule.create`` ...) as the OS user; a server or worker fires them.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.text import Text

from orchestrator.cli.app import JsonOpt, app, handles_errors, settings
from orchestrator.core.errors import EdgeFleetError
from orchestrator.present import output
from orchestrator.present.cliparse import parse_threads, row_id

schedules_app = typer.Typer(
    no_args_is_help=True,
    help="Schedules (a nightly bench, a push at 3 a.m.): list, add, pause, resume, run, delete.")
app.add_typer(schedules_app, name="schedules")

ScheduleId = Annotated[int, row_id("schedule", metavar="SCHEDULE_ID",
                                   help="The schedule's number (`edgefleet schedules list`).")]


def _params(bundle: str | None, threads: str | None, pairs: list[str]) -> dict[str, Any]:
    """``--param KEY=VALUE``: VALUE as JSON when it parses (``runs=30``, ``threads=[1,2]``),
    else as text (``dataset=speech@2``); ``--bundle``/``--threads`` are the common ones."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise EdgeFleetError(f"--param {pair!r}: give KEY=VALUE, e.g. --param runs=30")
        try:
            params[key.strip()] = json.loads(text)
        except ValueError:
            params[key.strip()] = text
    if bundle is not None:
        params["bundle"] = bundle
    if threads is not None:
        params["threads"] = parse_threads(threads)
    return params


# What a row shows of a schedule's params (``--json`` has them all, defaults filled in).
GIST = ("bundle", "dataset", "threads", "runs", "rollout")


def _gist(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(params[k]) if isinstance(params[k], dict) else params[k]}"
                     for k in GIST if params.get(k) not in (None, {}, []))


def _print(rows: list[dict[str, Any]]) -> None:
    def when(value: str | None) -> str:
        return value[:16].replace("T", " ") if value else "–"

    output.stdout.print(output.table(
        None, ["id", "kind", "targets", "when", "next (UTC)", "state", "params", "last job"],
        [(s["id"], s["kind"], s["targets"], s["cron"] or f"once {when(s['run_at'])}",
          when(s["next_run_at"]), Text(s["state"], style="green" if s["state"] == "active"
                                       else "yellow"),
          _gist(s["params"]), s["last_job_id"] or "–")
         for s in rows]))


def _public(schedule: Any) -> dict[str, Any]:
    from orchestrator.jobs.schedules import schedule_public, schedule_state

    return schedule_public(schedule) | {"state": schedule_state(schedule)}


@schedules_app.command("list")
@handles_errors
def schedules_list(as_json: JsonOpt = False) -> None:
    """Every schedule: what it runs, on which devices, when next, active or paused."""
    from orchestrator.core.db import session_scope
    from orchestrator.jobs.schedules import list_schedules

    with session_scope(settings()) as session:
        rows = [_public(s) for s in list_schedules(session)]
    if as_json:
        output.print_json(rows)
    elif rows:
        _print(rows)
    else:
        output.stdout.print("No schedules. Add one: edgefleet schedules add bench pis "
                            "--cron '0 3 * * *' --bundle NAME")


@schedules_app.command("add")
@handles_errors
def schedules_add(
    kind: Annotated[str, typer.Argument(
        help="push, bench, eval, rollback, verify or telemetry.")],
    targets: Annotated[str, typer.Argument(help="Target pattern (default: all).")] = "",
    cron: Annotated[str | None, typer.Option(
        "--cron", help="Repeat, in UTC: a 5-field cron expression ('0 3 * * *').")] = None,
    at: Annotated[str | None, typer.Option(
        "--at", help="Once, at this time (ISO 8601; no zone means UTC).")] = None,
    bundle: Annotated[str | None, typer.Option("--bundle", help="N[@V] (push/bench/eval).")
                      ] = None,
    threads: Annotated[str | None, typer.Option("--threads", help="e.g. 1,2,4")] = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", help="KEY=VALUE, any job parameter (VALUE is JSON or text), repeatable: "
                        "--param runs=30 --param dataset=speech@1")] = None,
    as_json: JsonOpt = False,
) -> None:
    """A schedule, checked now like a job (a typo fails here, not at 3 a.m.)."""
    from orchestrator.access.audit import local_actor
    from orchestrator.jobs import schedules

    run_at = schedules.parse_future(at) if at is not None else None
    created = schedules.create(settings(), kind, _params(bundle, threads, param or []),
                               targets, actor=local_actor(), cron=cron, run_at=run_at)
    shown = _public(created)
    if as_json:
        output.print_json(shown)
    else:
        output.stdout.print(f"schedule {shown['id']} added: {kind} {shown['targets']}, next "
                            f"at {shown['next_run_at']} (a server or worker runs it).")


def _change(schedule_id: int, as_json: bool, what: str) -> None:
    from orchestrator.access.audit import local_actor
    from orchestrator.jobs import schedules

    actor = local_actor()
    if what == "delete":
        schedules.delete(settings(), schedule_id, actor=actor)
        shown: dict[str, Any] = {"id": schedule_id, "deleted": True}
        text = f"schedule {schedule_id} deleted (its past jobs stay)."
    elif what == "run":
        from orchestrator.jobs.queue import job_public

        shown = job_public(schedules.run_now(settings(), schedule_id, actor=actor))
        text = (f"job {shown['id']} queued from schedule {schedule_id} (a server or worker "
                f"runs it): edgefleet jobs show {shown['id']}")
    else:
        shown = _public(schedules.set_paused(settings(), schedule_id, what == "pause",
                                             actor=actor))
        text = f"schedule {schedule_id} is {shown['state']}."
    if as_json:
        output.print_json(shown)
    else:
        output.stdout.print(text)


@schedules_app.command("pause")
@handles_errors
def schedules_pause(schedule_id: ScheduleId, as_json: JsonOpt = False) -> None:
    """Stop firing it; it keeps its place (resume it later)."""
    _change(schedule_id, as_json, "pause")


@schedules_app.command("resume")
@handles_errors
def schedules_resume(schedule_id: ScheduleId, as_json: JsonOpt = False) -> None:
    """Fire it again from its next time after now (what it missed is not made up)."""
    _change(schedule_id, as_json, "resume")


@schedules_app.command("run")
@handles_errors
def schedules_run(schedule_id: ScheduleId, as_json: JsonOpt = False) -> None:
    """Queue its job now, without moving its next time."""
    _change(schedule_id, as_json, "run")


@schedules_app.command("delete")
@handles_errors
def schedules_delete(schedule_id: ScheduleId, as_json: JsonOpt = False) -> None:
    """Remove it; the jobs it created stay."""
    _change(schedule_id, as_json, "delete")
