"""Ansible-style target patterns: which devices a command acts on.

Works on plain ``(host name, groups)`` pairs so the same code serves an inventory file and the
device rows in the database. The supported subset of Ansible's patterns (README, "Inventory
format"):

* a host name, a group name, ``all`` (or ``*``);
* shell globs (``*``, ``?``, ``[ab]``; case-sensitive) matched against host names *and* group
  names; a glob that matches a group selects that group's hosts;
* ``a,b`` or ``a:b`` union, ``&a`` intersection, ``!a`` exclusion.

Evaluation follows Ansible, whatever the order the terms are written in: first the union of all
plain terms, then each intersection, then each exclusion. Like Ansible, a pattern with no plain
term starts from ``all``: ``!pi4-lab`` means every device except pi4-lab, which is what a user
typing it means.

Stricter than Ansible, because a typo here sends a model to the wrong devices: a plain name that
is neither a host nor a group is an error (Ansible only warns), so is a pattern that selects
nothing. Ansible's ``~regex`` and ``group[0]`` subscripts are refused with a clear error rather
than being misread as names or globs.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable, Sequence
from fnmatch import fnmatchcase

from orchestrator.core.errors import EdgeFleetError

__all__ = ["PatternError", "match"]

GLOB_CHARS = frozenset("*?[")
# Ansible reads a trailing [N], [N:M] or [N-M] as a subscript into a group's host list.
_SUBSCRIPT_RE = re.compile(r"(.+)\[(?:-?[0-9]+|[0-9]*\s*[-:]\s*[0-9]*)\]")
_MAX_LISTED = 20
# Bounds on what a pattern may ask for (an API caller's, a page's, a device list): fnmatch's
# translation is quadratic in a term's unclosed "[" (16 KB of "a[1[1..." cost 6.9 s of CPU per
# request, holding the GIL of the server and its job threads), and each glob term is matched
# against every host and group name. A host name is at most 253 characters (DNS).
MAX_PATTERN_CHARS = 65_536
MAX_TERM_CHARS = 255
MAX_GLOB_TERMS = 64


class PatternError(EdgeFleetError, ValueError):
    """A target pattern that is malformed, names something unknown, or selects nothing."""

    def __init__(self, message: str, term: str | None = None) -> None:
        super().__init__(message)
        self.term = term


def match(
    pattern: str,
    hosts: Sequence[tuple[str, Collection[str]]],
    known_groups: Iterable[str] = (),
) -> list[str]:
    """Host names selected by ``pattern``, in the order of ``hosts``, without duplicates.

    Plain terms are united, then ``&`` terms intersect, then ``!`` terms exclude; with no plain
    term the selection starts from ``all``, so ``!pi4-lab`` means "everything but pi4-lab".
    ``hosts`` holds (name, groups) pairs; ``all`` need not be among the groups. ``known_groups``
    lists groups that may have no hosts, so naming one gives "matched no devices" rather than
    "unknown group".
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternError(f"target pattern of {len(pattern)} characters; at most "
                           f"{MAX_PATTERN_CHARS} (name a group instead of listing its hosts)")
    terms = split_pattern(pattern)
    if not terms:
        raise PatternError("empty target pattern; give a host, a group or 'all'")
    _check_terms(terms)
    order: list[str] = []
    members: dict[str, set[str]] = {}
    for name, groups in hosts:
        if name not in members.get("all", ()):
            order.append(name)
        for group in {"all", *groups}:
            members.setdefault(group, set()).add(name)
    members.setdefault("all", set())
    for group in known_groups:
        members.setdefault(group, set())
    host_names = members["all"]

    positive = [t for t in terms if t[0] not in "!&"]
    intersect = [t[1:].strip() for t in terms if t[0] == "&"]
    exclude = [t[1:].strip() for t in terms if t[0] == "!"]

    selected: set[str] = set()
    for term in positive or ["all"]:
        selected |= _resolve(term, host_names, members)
    for term in intersect:
        selected &= _resolve(term, host_names, members)
    for term in exclude:
        selected -= _resolve(term, host_names, members)

    result = [name for name in order if name in selected]
    if not result:
        raise PatternError(f"target pattern {pattern.strip()!r} matched no devices")
    return result


def split_pattern(pattern: str) -> list[str]:
    """Split on ``,`` and ``:`` (outside ``[...]``), strip whitespace, drop empty terms."""
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for char in pattern:
        if char == "[":
            depth += 1
        elif char == "]" and depth:
            depth -= 1
        if char in ",:" and not depth:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return [t.strip() for t in terms if t.strip()]


def _check_terms(terms: Sequence[str]) -> None:
    """Refuse, before any matching, terms no host could need (``MAX_*``): what a term costs
    is then bounded whoever sent it."""
    globs = 0
    for term in terms:
        bare = term.lstrip("!&").strip()
        shown = bare[:40] + ("..." if len(bare) > 40 else "")
        if len(bare) > MAX_TERM_CHARS:
            raise PatternError(f"target pattern term {shown!r} has {len(bare)} characters; a "
                               f"host, group or glob has at most {MAX_TERM_CHARS}", shown)
        if GLOB_CHARS & set(bare):
            globs += 1
            if _unclosed_class(bare):
                raise PatternError(f"target pattern term {shown!r} has an unclosed '[' (a "
                                   "letter class is written [ab])", shown)
    if globs > MAX_GLOB_TERMS:
        raise PatternError(f"target pattern has {globs} glob terms; at most {MAX_GLOB_TERMS}")


def _unclosed_class(glob: str) -> bool:
    """Whether a ``[`` of ``glob`` has no ``]`` closing it, as fnmatch reads classes (a ``]``
    right after ``[`` or ``[!`` is a member). Linear, unlike fnmatch's own scan."""
    i = 0
    while (i := glob.find("[", i)) >= 0:
        j = i + 1
        j += glob.startswith("!", j)
        j += glob.startswith("]", j)
        if (close := glob.find("]", j)) < 0:
            return True
        i = close + 1
    return False


def _resolve(term: str, host_names: set[str], members: dict[str, set[str]]) -> set[str]:
    """Hosts one term (without its ! or & prefix) stands for."""
    if not term:
        raise PatternError("'!' and '&' must be followed by a host, group or glob", term)
    if term.startswith("~"):
        raise PatternError(
            f"regular-expression patterns like {term!r} are not supported; use a shell glob "
            "such as 'pi5-*'",
            term,
        )
    if _SUBSCRIPT_RE.fullmatch(term):
        raise PatternError(
            f"{term!r} reads as an Ansible subscript (the N-th hosts of a group), which is not "
            "supported; name the hosts, or use '?' or a letter class like [ab] to glob",
            term,
        )
    if term == "all":
        return set(host_names)
    if GLOB_CHARS & set(term):
        found = {h for h in host_names if fnmatchcase(h, term)}
        for group, names in members.items():
            if fnmatchcase(group, term):
                found |= names
        return found
    if term in host_names or term in members:
        return host_names & {term} | members.get(term, set())
    raise PatternError(_unknown(term, host_names, members), term)


def _unknown(term: str, host_names: set[str], members: dict[str, set[str]]) -> str:
    groups = sorted(g for g in members if g != "all")
    close = difflib.get_close_matches(term, sorted(host_names | set(groups)), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    listed = ", ".join(groups[:_MAX_LISTED])
    if len(groups) > _MAX_LISTED:
        listed += f", ... ({len(groups) - _MAX_LISTED} more)"
    known = f" Known groups: {listed}." if groups else " The inventory has no groups."
    return f"{term!r} is neither a host nor a group.{hint}{known}"
