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
    # what the push job refuses (exit 2) must start nothing here either
    ["push", "m", "pis", "--forks", "5000"], ["push", "m", "pis", "--forks", "0"],
    ["push", "m", "pis", "--timeout", "0"], ["push", "m", "pis", "--timeout=-1"],
    ["push", "m", "pis", "--timeout", "nan"], ["push", "m", "pis", "--timeout", "inf"],
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


def test_the_bounds_are_the_push_jobs() -> None:
    from orchestrator.cli.quick import MAX_FORKS
    from orchestrator.jobs.params import HIGH

    assert HIGH["forks"] == MAX_FORKS


def test_a_refused_push_sends_nothing_to_any_device(cli, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`edgefleet push fc pis --forks 5000` was refused (exit 2) after its early sessions had
    sent the bundle's blobs to the device and pruned others there. The push command (not
    only ``quick``, before typer) starts nothing early for it: the early sessions raced the
    refusal, and on a clean CI machine they won (blobs, incoming/, sessions/ left behind)."""
    import yaml

    from orchestrator.fleet import early

    started: list[int] = []
    real_start = early.start
    monkeypatch.setattr(early, "start", lambda *a: started.append(a[3]) or real_start(*a))

    from orchestrator.demo.model import make_demo_classifier
    from orchestrator.demo.simulate import create_simulated_device

    sim = create_simulated_device(tmp_path / "sim")
    root = tmp_path / "root"
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {
        "pi-a": sim.local_host_vars(root)}}}))
    cli("inventory", "sync", inventory)
    assert cli("agent", "install", "all", "--json").json[0]["state"] == "installed"
    make_demo_classifier(tmp_path / "model" / "model.onnx")
    cli("bundle", "build", tmp_path / "model", "--name", "fc")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    for bad, said in ((["--forks", "5000"], "'forks' must be an integer from 1 to 1000"),
                      (["--timeout", "0"], "is not a number of seconds above 0")):
        refused = cli("push", "fc", "all", *bad, "--json", expect=2)
        assert said in refused.stdout + refused.stderr, refused
        assert started == []  # not even started (a race with the refusal otherwise)
        assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
