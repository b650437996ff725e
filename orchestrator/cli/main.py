"""The ``edgefleet`` command: ``main`` (the console script) and ``get_app``. ``--json``
everywhere prints machine-readable output on stdout (usage errors included); exit status 1 when
any device failed, 2 on bad input. The app and what commands share are in ``cli.app``, the
commands in this package's other modules (``devices``: inventory, devices and agent;
``bundles``: bundles and push; ...).

Kept light on purpose: before typer, rich and pydantic are even imported, ``main`` lets a push
start its device work (``cli.quick``), so the ~0.5 s they take overlaps the transfer.
"""

from __future__ import annotations

import atexit
import gc
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer


def get_app() -> typer.Typer:
    """The app with every command registered (the command modules add theirs on import)."""
    from orchestrator.cli import (  # noqa: F401
        alerts,
        bundles,
        datasets,
        db,
        demo,
        devices,
        evaluate,
        jobs,
        keys,
        publish,
        regressions,
        runs,
        schedules,
        serve,
        tokens,
        verdicts,
        worker,
    )
    from orchestrator.cli.app import app

    return app


def _home_problem_exit(as_json: bool) -> None:
    """A bad EDGEFLEET_HOME (a file, under a file, not creatable) is one clear error, exit 2,
    not a traceback from the first command that writes there."""
    from orchestrator.cli.app import home_problem
    from orchestrator.present import output

    problem = home_problem()
    if problem is None:
        return
    if as_json:
        output.print_json({"error": problem})
    else:
        from rich.text import Text

        output.stderr.print(Text.assemble(("error:", "red"), f" {problem}"), soft_wrap=True)
    sys.exit(2)


def _run_json(args: list[str]) -> None:
    """--json: a usage error (missing argument, unknown option) is JSON on stdout too, so a
    script reading stdout always gets JSON; exit 2 as click's own usage errors do."""
    import typer

    from orchestrator.present import output

    # Typer raises its own copy of click's exceptions (vendored as typer._click in recent
    # releases, click itself in older ones): take the classes from its public BadParameter.
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    click_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    command = typer.main.get_command(get_app())
    try:
        code = command.main(args=args, prog_name="edgefleet", standalone_mode=False)
    except usage_error as exc:
        usage = exc.ctx.get_usage() if exc.ctx is not None else None
        output.print_json({"error": exc.format_message(), "usage": usage})
        sys.exit(exc.exit_code)
    except click_error as exc:
        output.print_json({"error": exc.format_message()})
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def main() -> None:
    # Exit at once: the interpreter's last collection would walk and free, one by one, every
    # object the command's imports made (~0.2 s after a push's SQLAlchemy, SQLModel and
    # paramiko here). Frozen, it skips them and the OS takes the memory back in one go; what
    # must be closed is closed explicitly (db disposes its engines at exit).
    atexit.register(gc.freeze)
    from orchestrator.present.output import GuardedStdout, StdoutUnwritable

    sys.stdout = GuardedStdout(sys.stdout)  # type: ignore[assignment]
    try:
        _main()
    except StdoutUnwritable as exc:
        _stdout_failed(exc)


def _stdout_failed(exc: OSError) -> None:
    """One line on stderr, exit 2; stdout is pointed at /dev/null first, or the interpreter's
    own flush at exit would fail again with a traceback."""
    import contextlib
    import os

    with contextlib.suppress(OSError, AttributeError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.__stdout__.fileno())
    sys.stderr.write(f"error: cannot write to standard output: {exc.strerror or exc} (where "
                     "stdout goes: a full disk, /dev/full?)\n")
    sys.exit(2)


def _main() -> None:
    from orchestrator.cli import quick

    args = sys.argv[1:]
    quick.start_push(args)
    as_json = "--json" in args
    if sorted(args) == ["--json", "--version"]:  # --json everywhere: the version too
        from orchestrator import __version__
        from orchestrator.present import output

        output.print_json({"version": __version__})
        return
    if args and not {"--help", "-h", "--version"} & set(args):
        _home_problem_exit(as_json)
    if not as_json:
        get_app()(prog_name="edgefleet")
        return
    _run_json(args)


if __name__ == "__main__":  # `python -m orchestrator.cli.main`
    main()
