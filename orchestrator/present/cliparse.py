"""Parsing of CLI values shared by several commands (row ids, thread lists, shapes,
constants)."""

from __future__ import annotations

import math
from typing import Any

import typer

from orchestrator.core.dbfile import MAX_ROW_ID
from orchestrator.core.errors import EdgeFleetError


def row_id(what: str, **argument: Any) -> Any:
    """A ``typer.Argument`` for the id of a ``what`` (run, token...): a whole number from 1 to
    2^63-1, the range of the DB's INTEGER keys. Anything else is a usage error (exit 2) that
    names the range, before the command runs: a larger number would otherwise reach the DB
    driver and end in an OverflowError traceback. ``argument``: metavar, help..."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not a {what} id (a whole number)") from None
        if not 1 <= value <= MAX_ROW_ID:
            raise typer.BadParameter(f"{what} id {value} is out of range: {what} ids are 1 to "
                                     f"{MAX_ROW_ID}")
        return value

    return typer.Argument(parser=parse, **argument)


def parse_threads(text: str) -> list[int]:
    try:
        threads = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise EdgeFleetError(f"--threads {text!r}: give a list like 1,2,4") from None
    if not threads or any(not 1 <= t <= 256 for t in threads):
        raise EdgeFleetError(f"--threads {text!r}: thread counts must be from 1 to 256")
    return threads


def parse_shapes(items: list[str]) -> dict[str, list[int]]:
    shapes = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            shapes[name.strip()] = [int(d) for d in dims.lower().split("x")] if dims else []
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise EdgeFleetError(f"--shape {item!r}: use NAME=1x1024x128")
    return shapes


def parse_constant(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            # nan "succeeded" on NaN inputs and was stored as null, which no one can replay
            raise EdgeFleetError(f"--input value {text!r} is not a finite number")
        return value
    raise EdgeFleetError(f"--input value {text!r} is not a number or true/false")


def parse_constants(items: list[str]) -> dict[str, Any]:
    constants = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise EdgeFleetError(f"--input {item!r}: use NAME=VALUE, e.g. sampling_rate=16000")
        constants[name.strip()] = parse_constant(value)
    return constants
