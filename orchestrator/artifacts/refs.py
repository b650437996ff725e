"""Names, versions and ``NAME[@VERSION]`` references shared by bundles and datasets.

Why one place: both are versioned by name with the same rules (names and versions reach file
names, URLs and shell-free agent requests), the same auto-incrementing numeric versions, and the
same "no such version, these exist" errors; two copies would drift.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from sqlmodel import Session, select

from orchestrator.core.errors import EdgeFleetError, NotFoundError

# Checked with ``fullmatch``: ``match`` with ``$`` also accepts a trailing newline ("x\n"),
# which would then reach file names, URLs and agent requests.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")

Row = TypeVar("Row")


def check_name(name: str, what: str, error: type[EdgeFleetError]) -> str:
    if not NAME_RE.fullmatch(name):
        raise error(f"{what} name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' "
                    "or '-', starting with a letter or digit")
    return name


def check_version(version: str, what: str, error: type[EdgeFleetError]) -> str:
    if not VERSION_RE.fullmatch(version):
        raise error(f"{what} version {version!r} is not allowed: use letters, digits, '.', '_', "
                    "'+', '-'")
    return version


def parse_ref(ref: str, what: str, error: type[EdgeFleetError]) -> tuple[str, str | None]:
    """``name`` or ``name@version``."""
    name, at, version = ref.partition("@")
    check_name(name, what, error)
    if at and not version:  # `push "fc@$V"` with V unset must not mean the latest
        raise error(f"{what} reference {ref!r} ends in '@' with no version: give NAME@VERSION, "
                    "or NAME alone for the latest")
    if version:
        check_version(version, what, error)
    return name, version or None


def next_version(session: Session, table: Any, name: str) -> str:
    """One more than the highest numeric version of ``name`` (explicit versions like
    ``2.1-rc`` are skipped)."""
    versions = session.exec(select(table.version).where(table.name == name)).all()
    return str(max((int(v) for v in versions if v.isdigit()), default=0) + 1)


def get_by_ref(session: Session, table: Any, ref: str, what: str,
               error: type[EdgeFleetError], latest: Callable[[Session, str], Row | None],
               build_hint: str) -> Row:
    """The row ``ref`` names (no version: ``latest``); NotFoundError listing the versions that
    exist, or how to build one."""
    name, version = parse_ref(ref, what, error)
    if version is None:
        row = latest(session, name)
    else:
        row = session.exec(select(table).where(table.name == name,
                                               table.version == version)).first()
    if row is None:
        known = session.exec(select(table.version).where(table.name == name)).all()
        hint = f" (versions: {', '.join(known)})" if known else f"; build it with `{build_hint}`"
        raise NotFoundError(f"no {what} {ref}{hint}")
    return row
