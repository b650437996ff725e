"""Target patterns: the Ansible subset of the README's "Inventory format", evaluated in
Ansible's order."""

from __future__ import annotations

import re

import pytest

from orchestrator.core.patterns import PatternError, match, split_pattern

# The example inventory's shape, as (name, groups) rows — groups exclude "all", like the DB's.
HOSTS: list[tuple[str, tuple[str, ...]]] = [
    ("pi5-a", ("roaster_line_1", "roastery")),
    ("pi5-b", ("roaster_line_1", "roastery")),
    ("pi4-lab", ("lab", "roastery")),
    ("cam-1", ("cameras",)),
    ("Pi5-X", ("ungrouped",)),
]
ALL = [name for name, _ in HOSTS]


def sel(pattern: str, hosts: list[tuple[str, tuple[str, ...]]] = HOSTS) -> list[str]:
    return match(pattern, hosts)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("pi5-a", ["pi5-a"]),
        ("lab", ["pi4-lab"]),
        ("roastery", ["pi5-a", "pi5-b", "pi4-lab"]),
        ("all", ALL),
        ("*", ALL),
        ("ungrouped", ["Pi5-X"]),
        # globs, case-sensitive, on host names
        ("pi5-*", ["pi5-a", "pi5-b"]),
        ("pi?-*", ["pi5-a", "pi5-b", "pi4-lab"]),
        ("pi5-[ab]", ["pi5-a", "pi5-b"]),
        ("Pi*", ["Pi5-X"]),
        ("*-[!a]", ["pi5-b", "cam-1", "Pi5-X"]),
        # globs on group names select the groups' hosts
        ("roast*", ["pi5-a", "pi5-b", "pi4-lab"]),
        ("cam*", ["cam-1"]),
        ("*_line_*", ["pi5-a", "pi5-b"]),
        # union
        ("pi5-a,lab", ["pi5-a", "pi4-lab"]),
        ("pi5-a:lab", ["pi5-a", "pi4-lab"]),
        ("lab,pi5-a", ["pi5-a", "pi4-lab"]),  # result in input order, not pattern order
        ("roastery:roaster_line_1:pi5-a", ["pi5-a", "pi5-b", "pi4-lab"]),  # no duplicates
        # intersection
        ("roastery:&pi5*", ["pi5-a", "pi5-b"]),
        ("roastery:&lab", ["pi4-lab"]),
        ("roastery,cameras:&roaster_line_1", ["pi5-a", "pi5-b"]),
        # exclusion
        ("roastery:!lab", ["pi5-a", "pi5-b"]),
        ("all:!roastery:!Pi5-X", ["cam-1"]),
        # combination, in Ansible's order whatever the written order
        ("roastery:&pi5*:!pi5-b", ["pi5-a"]),
        ("!pi5-b:&pi5*:roastery", ["pi5-a"]),
        ("&pi5*,!pi5-b,roastery", ["pi5-a"]),
        ("lab:!lab:pi5-a", ["pi5-a"]),  # exclusion applies after the whole union
        # no plain term: start from all (as Ansible does)
        ("!pi4-lab", ["pi5-a", "pi5-b", "cam-1", "Pi5-X"]),
        ("!roastery:!cameras", ["Pi5-X"]),
        ("&roaster_line_1", ["pi5-a", "pi5-b"]),
        # whitespace and empty terms are tolerated
        ("  roastery : & pi5* , ! pi5-b ", ["pi5-a"]),
        ("lab,,", ["pi4-lab"]),
    ],
)
def test_patterns(pattern: str, expected: list[str]) -> None:
    assert sel(pattern) == expected


def test_split_keeps_brackets_whole() -> None:
    assert split_pattern("a,b:c") == ["a", "b", "c"]
    assert split_pattern("pi[a:b],x") == ["pi[a:b]", "x"]
    assert split_pattern(" , : ") == []


def test_glob_with_colon_in_brackets() -> None:
    assert match("h[:x]", [("h:", ()), ("hx", ()), ("hy", ())]) == ["h:", "hx"]


def test_name_that_is_both_host_and_group_selects_both() -> None:
    hosts = [("lab", ()), ("pi4", ("lab",)), ("pi5", ())]
    assert match("lab", hosts) == ["lab", "pi4"]


def test_rows_from_a_database_lists_and_duplicates() -> None:
    rows = [("b", ["g"]), ("a", ["g", "h"]), ("b", ["g"])]
    assert match("g", rows) == ["b", "a"]
    assert match("all", rows) == ["b", "a"]
    assert match("h,b", rows) == ["b", "a"]


def test_unknown_plain_term_names_it_and_lists_groups() -> None:
    with pytest.raises(PatternError) as caught:
        sel("roastry")
    message = str(caught.value)
    assert "'roastry' is neither a host nor a group" in message
    assert "Did you mean 'roastery'?" in message
    assert "Known groups: cameras, lab, roaster_line_1, roastery, ungrouped." in message
    assert caught.value.term == "roastry"


@pytest.mark.parametrize("pattern", ["lab:nope", "lab:&nope", "lab:!nope", "!nope", "PI5-A"])
def test_unknown_term_in_any_position_is_an_error(pattern: str) -> None:
    with pytest.raises(PatternError, match="is neither a host nor a group"):
        sel(pattern)


def test_known_group_list_is_truncated() -> None:
    hosts = [(f"h{i}", (f"g{i:02d}",)) for i in range(30)]
    with pytest.raises(PatternError, match=r"g19, \.\.\. \(10 more\)\.$"):
        match("nope", hosts)


def test_a_glob_that_matches_nothing_is_not_an_error_by_itself() -> None:
    assert sel("lab:zz*") == ["pi4-lab"]


@pytest.mark.parametrize(
    "pattern", ["zz*", "lab:&roaster_line_1", "roastery:!roastery", "!all", "lab:!pi4-lab"]
)
def test_empty_selection_is_an_error(pattern: str) -> None:
    with pytest.raises(PatternError, match="matched no devices"):
        sel(pattern)


def test_empty_group_known_but_without_hosts() -> None:
    with pytest.raises(PatternError, match="'spare' matched no devices"):
        match("spare", HOSTS, known_groups=["all", "spare"])
    assert match("spare,lab", HOSTS, known_groups=["spare"]) == ["pi4-lab"]


def test_no_hosts_at_all() -> None:
    with pytest.raises(PatternError, match="matched no devices"):
        match("all", [])


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "empty target pattern"),
        (" , ", "empty target pattern"),
        ("lab:!", "must be followed by"),
        ("&", "must be followed by"),
        ("~pi5.*", "regular-expression patterns"),
        ("roastery[0]", "subscript"),
        ("roastery[0:1]", "subscript"),
        ("pi[0-9]", "subscript"),
    ],
)
def test_malformed_patterns(pattern: str, message: str) -> None:
    with pytest.raises(PatternError, match=message):
        sel(pattern)


def test_pattern_error_is_a_value_error() -> None:
    assert issubclass(PatternError, ValueError)


@pytest.mark.parametrize("pattern,says", [
    ("a" + "[1" * 8000, "at most 255"),  # fnmatch took 6.9 s of CPU on these 16 KB
    ("pi5-[ab", "unclosed '['"),
    ("x" * 300, "at most 255"),
    (",".join(f"pi{n}*" for n in range(65)), "65 glob terms"),
    ("pi," * 30_000, "at most 65536"),
], ids=["unclosed-16k", "unclosed", "long-term", "many-globs", "long-pattern"])
def test_patterns_no_host_needs_are_refused_before_matching(pattern: str, says: str) -> None:
    with pytest.raises(PatternError, match=re.escape(says)):
        sel(pattern)


@pytest.mark.parametrize("pattern,expected", [
    ("pi5-[]ab]", ["pi5-a", "pi5-b"]),  # "]" first in a class is a member, as fnmatch reads
    ("pi5-[!b]", ["pi5-a"]),
    (",".join(["pi5-a"] * 5000), ["pi5-a"]),  # a long list of names is fine
], ids=["bracket-member", "negated", "long-list"])
def test_patterns_within_the_bounds_still_match(pattern: str, expected: list[str]) -> None:
    assert sel(pattern) == expected
