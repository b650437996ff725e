"""The ``edgefleet`` command: ``main`` (the console script) and ``get_app``. ``--json``
everywhere prints machine-readable output on stdout; exit status 1 when any device failed, 2 on
bad input. The app and what commands share are in ``cli.app``, the commands in this package's
other modules (``devices``: inventory, devices and agent; ``bundles``: bundles and push; ...).

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
        keys,
        regressions,
        runs,
        serve,
        tokens,
        verdicts,
    )
    from orchestrator.cli.app import app

    return app


def main() -> None:
    # Exit at once: the interpreter's last collection would walk and free, one by one, every
    # object the command's imports made (~0.2 s after a push's SQLAlchemy, SQLModel and
    # paramiko here). Frozen, it skips them and the OS takes the memory back in one go; what
    # must be closed is closed explicitly (db disposes its engines at exit).
    atexit.register(gc.freeze)
    from orchestrator.cli import quick

    quick.start_push(sys.argv[1:])
    get_app()()


if __name__ == "__main__":  # `python -m orchestrator.cli.main`
    main()
