"""What the ``edgefleet`` process starts before its CLI libraries load: a push's device work.

Why: typer, rich and pydantic take ~0.3-0.5 s of a fresh process, SQLAlchemy and the models
~0.5 s more, and a 90 MB push over a LAN takes about a second in all. ``main`` hands its
arguments here first; for ``edgefleet push REF TARGETS [--forks N] [--timeout S] [--json]``
the devices' sessions open and the blobs stream (``fleet.early``, from the standard library
alone) while the command loads, parses its arguments with typer as always, records its job and
takes the leases, then adopts them. What may happen before the job exists, and why that
changes nothing a device runs, is in ``fleet.early``.

Deliberately narrow: only that shape of command line is recognised here (options in any
order, ``--opt=value`` too); anything else (``--help``, an unknown option, a third argument,
``--``) starts nothing, and typer does everything as before. Whatever was started and not
adopted (typer refused the line, the bundle resolved differently) is discarded at exit.
"""

from __future__ import annotations

import atexit
import math
from collections.abc import Sequence

_VALUED = {"--forks": "forks", "-f": "forks", "--timeout": "timeout"}
MAX_FORKS = 1000  # jobs.params.HIGH["forks"] (tests/unit/cli/test_quick.py keeps them equal)


def parse_push(argv: Sequence[str]) -> tuple[str, str, int, float | None] | None:
    """(ref, targets, forks, timeout) of a plain ``push`` command line; None otherwise."""
    if not argv or argv[0] != "push":
        return None
    positional: list[str] = []
    values: dict[str, str] = {}
    args = list(argv[1:])
    while args:
        token = args.pop(0)
        if token == "--json":
            continue
        name, eq, value = token.partition("=")
        if name in _VALUED:
            if not eq:
                if not args:
                    return None
                value = args.pop(0)
            values[_VALUED[name]] = value
        elif token.startswith("-"):
            return None  # --help, --, a typo: typer's to handle
        else:
            positional.append(token)
    if len(positional) != 2:
        return None
    try:
        forks = int(values.get("forks", "10"))
        timeout = float(values["timeout"]) if "timeout" in values else None
    except ValueError:
        return None
    # What the push job will refuse starts nothing here either: `--forks 5000` was refused
    # after the early sessions had uploaded to (and pruned) every device it matched.
    if not 1 <= forks <= MAX_FORKS or (timeout is not None and not 0 < timeout < math.inf):
        return None
    return positional[0], positional[1], forks, timeout


def start_push(argv: Sequence[str]) -> int:
    """Start the push ``argv`` asks for, if it is one; how many devices were started."""
    parsed = parse_push(argv)
    if parsed is None:
        return 0
    from orchestrator.core.envsettings import from_env

    settings = from_env()
    if settings is None:
        return 0
    from orchestrator.fleet import early

    atexit.register(early.discard_all)
    ref, targets, forks, timeout = parsed
    return early.start(settings, ref, targets, forks, timeout)
