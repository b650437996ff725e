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
from pathlib import Path
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



def _print_version(value: bool) -> None:
    if value:
        from orchestrator import __version__

        typer.echo(f"edgefleet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False) -> None:
    """Push hash-verified ONNX bundles to a fleet of Pis and watch them run."""


JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
Targets = Annotated[str, typer.Argument(help="Target pattern: names, groups, globs, a:b, !x, &y.")]
Forks = Annotated[int, typer.Option("--forks", "-f", help="Devices worked on at once.")]
def _check_timeout(value: float | None) -> float | None:
    """What the jobs refuse (a push, a bench), every command refuses: 0, negative, nan, inf
    (``telemetry --timeout -1`` failed each device with "no output for -1s")."""
    if value is not None and not 0 < value < float("inf"):
        raise typer.BadParameter(f"{value!r} is not a number of seconds above 0")
    return value


Timeout = Annotated[
    float | None, typer.Option("--timeout", callback=_check_timeout,
                               help="Per-host seconds of silence before giving up.")
]

F = TypeVar("F", bound=Callable[..., Any])


def handles_errors(func: F) -> F:
    """Show EdgeFleetError as one clear line (or JSON) and exit 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EdgeFleetError as exc:
            message = str(exc)
        except (BrokenPipeError, output.StdoutUnwritable):
            raise  # `| head` stopped reading / stdout is full: cli.main says so
        except OSError as exc:  # a full disk, a read-only or unwritable path: named, no traceback
            message = os_problem(exc)
        except UnicodeError as exc:  # a file name or a text file that is not UTF-8
            message = unicode_problem(exc)
        if kwargs.get("as_json"):
            output.print_json({"error": message})
        else:
            # A Text, not markup: the message carries user input ("[/red]" in a path must be
            # shown, not parsed). soft_wrap: no hard wrap at the console width (80 when piped),
            # which would split a path or file:line in two.
            output.stderr.print(Text.assemble(("error:", "red"), f" {message}"), soft_wrap=True)
        raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def os_problem(exc: OSError) -> str:
    """An OSError as one line: what failed, on which file, and what to do."""
    import errno

    where = f" ({exc.filename!a})" if exc.filename else ""
    what = exc.strerror or str(exc) or type(exc).__name__
    hint = {errno.ENOSPC: "free space on that disk (EDGEFLEET_HOME holds the blobs and the "
                          "database) and run the command again",
            errno.EDQUOT: "free space (a disk quota) and run the command again",
            errno.EROFS: "that file system is read-only: point EDGEFLEET_HOME or the path "
                         "elsewhere",
            errno.EACCES: "check its permissions for this user",
            errno.EPERM: "check its permissions for this user"}.get(exc.errno or 0,
                                                                   "check the path")
    if not exc.filename and hint == "check the path":
        return what  # no path to check: the message is all there is
    return f"{what}{where}: {hint}"


def unicode_problem(exc: UnicodeError) -> str:
    """A name or text that is not UTF-8, with the offending bytes written out."""
    part = getattr(exc, "object", None)
    start, end = getattr(exc, "start", 0), getattr(exc, "end", 0)
    near = f" near {part[max(0, start - 20):end + 20]!a}" if part else ""
    return (f"a file name or a text file is not valid UTF-8{near}: rename the file, or save "
            "the text as UTF-8")


def state_home() -> tuple[Path, bool]:
    """``EDGEFLEET_HOME`` as the settings read it (stdlib only), and whether it was set."""
    import os

    from orchestrator.core.dbfile import default_home

    env = {key.lower(): value for key, value in os.environ.items()}
    if "edgefleet_home" in env:
        return Path(env["edgefleet_home"]).expanduser(), True
    return default_home(), False


def demo_hint() -> str | None:
    """Where ``edgefleet demo`` left its fleet, if it ran with this home: the demo keeps its
    state in HOME/demo, so after it ``devices list`` in HOME finds nothing."""
    home, _ = state_home()
    demo = home / "demo"
    if not (demo / "edgefleet.db").is_file():
        return None
    return f"the demo's fleet is in {demo}: EDGEFLEET_HOME={demo} edgefleet devices list"


def home_problem() -> str | None:
    """What is wrong with ``EDGEFLEET_HOME`` (a file, not creatable, not writable), in words,
    or None. Checked before a command runs: deep inside SQLAlchemy or the blob store the same
    fault was a traceback. Stdlib only (every command's start-up runs it)."""
    import os

    home, given = state_home()
    name = f"EDGEFLEET_HOME={home}" if given else f"the state directory {home} " \
        "(EDGEFLEET_HOME is not set)"
    fix = "point EDGEFLEET_HOME at a directory this user can write (it is created if missing)"
    if home.exists() and not home.is_dir():
        return f"{name} is a file, not a directory: {fix}"
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"{name} cannot be created ({exc.strerror or exc}): {fix}"
    if not os.access(home, os.W_OK | os.X_OK):
        return f"{name} is not writable by this user: {fix}"
    return None


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
