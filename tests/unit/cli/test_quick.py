"""cli.quick recognises only a plain push command line; anything else is typer's alone."""

from __future__ import annotations

import pytest

from orchestrator.cli.quick import parse_push


@pytest.mark.parametrize(("argv", "parsed"), [
    (["push", "m", "pis"], ("m", "pis", 10, None)),
    (["push", "m@2", "pi1,pi2", "--json"], ("m@2", "pi1,pi2", 10, None)),
    (["push", "--forks", "3", "m", "all", "--timeout=7.5"], ("m", "all", 3, 7.5)),
    (["push", "m", "-f", "2", "pis", "--json", "--forks=4"], ("m", "pis", 4, None)),
])
def test_plain_push_lines(argv: list[str], parsed: tuple[object, ...]) -> None:
    assert parse_push(argv) == parsed


@pytest.mark.parametrize("argv", [
    [], ["push"], ["push", "m"], ["push", "m", "pis", "extra"], ["push", "m", "pis", "--help"],
    ["push", "m", "pis", "--forks"], ["push", "m", "pis", "--forks", "many"],
    ["push", "m", "pis", "--timeout", "soon"], ["push", "--", "m", "pis"],
    ["push", "m", "pis", "--jsn"], ["rollback", "pis"], ["bench", "m", "pis"],
    ["--json", "push", "m", "pis"],
])
def test_anything_else_starts_nothing(argv: list[str]) -> None:
    assert parse_push(argv) is None


@pytest.mark.parametrize("option", [
    ["--canary", "pi1"], ["--canary=pi1"], ["--batch", "2"], ["--batch=25%"],
    ["--max-fail", "10"], ["--health-bench"], ["--rollback-on-fail"],
])
def test_a_staged_rollout_is_not_started_early(option: list[str]) -> None:
    """A rollout's batches decide which devices go first (a canary alone): push_cmd's ordinary
    path does it all, and push_cmd itself starts nothing early for one either."""
    assert parse_push(["push", "m", "pis", *option]) is None
    assert parse_push(["push", "m", "pis", "--json", *option, "--forks", "2"]) is None
