"""The typer app of the ``edgefleet`` command and what its command modules share: options,
error handling, settings, the fleet-operation tail (``finish``), device selection.

Why a module of its own: the command modules (``main`` and the others in this package) register
on ``app`` and ``main`` imports them all to build the full command; with ``app`` in ``main``
that would be an import circle. Light on purpose: every command's start-up imports it (no
pydantic, ORM or web stack at the top; tests/unit/cli/test_cli_startup.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.text import Text

from orchestrator.core.errors import EdgeFleetError
from orchestrator.fleet.fanout import Outcome
from orchestrator.present import output

if TYPE_CHECKING:
    from orchestrator.core.config import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Push hash-verified ONNX bundles to a fleet of Pis and watch them run.")
inventory_app = typer.Typer(no_args_is_help=True, help="Read inventory files into the DB.")
devices_app = typer.Typer(no_args_is_help=True, help="Devices: list, show, trust host keys.")
agent_app = typer.Typer(no_args_is_help=True, help="The on-device agent.")
bundle_app = typer.Typer(no_args_is_help=True, help="Build and inspect model bundles.")
app.add_typer(inventory_app, name="inventory")
app.add_typer(devices_app, name="devices")
app.add_typer(agent_app, name="agent")
app.add_typer(bundle_app, name="bundle")

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
Targets = Annotated[str, typer.Argument(help="Target pattern: names, groups, globs, a:b, !x, &y.")]
Forks = Annotated[int, typer.Option("--forks", "-f", help="Devices worked on at once.")]
Timeout = Annotated[
    float | None, typer.Option("--timeout", help="Per-host seconds of silence before giving up.")
]

F = TypeVar("F", bound=Callable[..., Any])


def handles_errors(func: F) -> F:
    """Show EdgeFleetError as one clear line (or JSON) and exit 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EdgeFleetError as exc:
            if kwargs.get("as_json"):
                output.print_json({"error": str(exc)})
            else:
                # A Text, not markup: the message carries user input ("[/red]" in a path must
                # be shown, not parsed). soft_wrap: no hard wrap at the console width (80 when
                # piped), which would split a path or file:line in two.
                output.stderr.print(Text.assemble(("error:", "red"), f" {exc}"), soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def settings() -> Settings:
    # Imported here: pydantic-settings is for the commands that use the ORM; `devices list` and
    # `bundle list` start without it (orchestrator.core.listings, issue 12).
    from orchestrator.core.config import get_settings

    return get_settings()


INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


def exit_if_interrupted(interrupted: bool) -> None:
    """After work a Ctrl-C cancelled (``jobs.tracker``): what finished is already printed and
    stored; say so and exit 130."""
    if interrupted:
        output.stderr.print("cancelled (Ctrl-C): what finished before is kept")
        raise typer.Exit(INTERRUPTED_EXIT)


def finish(outcomes: list[Outcome], title: str, as_json: bool, extra: tuple[str, ...] = (),
           payload: Callable[[Outcome], dict[str, Any]] | None = None,
           interrupted: bool = False) -> None:
    """The common tail of every fleet operation: table or JSON, summary, exit status."""
    if as_json:
        output.print_json([payload(o) if payload else o.as_dict() for o in outcomes])
    else:
        output.stdout.print(output.outcome_table(title, outcomes, extra))
        output.stdout.print(output.summary_line(outcomes))
    exit_if_interrupted(interrupted)
    if any(not o.ok for o in outcomes):
        raise typer.Exit(1)


def select(pattern: str) -> list[Any]:
    """The devices matching a target pattern (``devices.select_devices``), for commands."""
    from orchestrator.core.db import session_scope
    from orchestrator.inventory.devices import select_devices

    with session_scope(settings()) as session:
        return select_devices(session, pattern)


AGENT_COLUMNS = ("model", "python_version", "onnxruntime")


def agent_payload(o: Outcome) -> dict[str, Any]:
    """An agent install's JSON row, without the ``python`` block the table does not show."""
    data = o.as_dict()
    data.pop("python", None)
    return data
