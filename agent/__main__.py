# -*- coding: utf-8 -*-
"""Entry point: ``python edgefleet-agent.pyz ...`` / ``python -m agent ...``.

Why this file is written in old syntax (no annotations, no f-strings, no
``from __future__ import annotations``): it is the first thing an old device
interpreter compiles. It must parse on Python 2.7 and 3.x < 3.9 so the user
gets a protocol error saying which Python was found, instead of a SyntaxError
traceback the control plane cannot parse. Everything else in the agent may
assume Python >= 3.9.
"""

import json
import sys

MIN_PYTHON = (3, 9)


def too_old_result(version_info, executable):
    """The protocol result for an interpreter older than MIN_PYTHON, or None if it is fine."""
    if tuple(version_info[:2]) >= MIN_PYTHON:
        return None
    try:
        from collections import OrderedDict as ordered
    except ImportError:  # pragma: no cover - Python 2.6
        ordered = dict
    version = ".".join(str(part) for part in tuple(version_info[:3]))
    message = (
        "EdgeFleet agent needs Python >= %d.%d, this is %s at %s: "
        "install python3.9+ or set edgefleet_python"
        % (MIN_PYTHON[0], MIN_PYTHON[1], version, executable or "?")
    )
    error = ordered([("code", "python_too_old"), ("message", message)])
    return ordered(
        [("v", 1), ("type", "result"), ("ok", False), ("command", "?"), ("error", error)]
    )


def main(argv=None):
    problem = too_old_result(sys.version_info, sys.executable)
    if problem is not None:
        sys.stdout.write(json.dumps(problem, separators=(",", ":")) + "\n")
        sys.stdout.flush()
        return 1
    from agent.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
