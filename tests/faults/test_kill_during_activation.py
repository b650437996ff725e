"""SIGKILL of the agent during an activation or a rollback, at every step of the journal.

Each device runs the real agent over real OpenSSH with ``EDGEFLEET_AGENT_CRASH_AT=<point>`` in
its environment: at that point the agent sends itself SIGKILL (agent.journal.crash_point), so
nothing of it runs after, as with the OOM killer or a power cut. After each kill ``current`` and
state.json must obey the journal's invariant; the next command (here a telemetry poll) must
revert what was not committed and say so; the control plane must then record what the device
reports: its active version and a ``recover`` deployment row.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.inventory.devices import get_device
from tests.conftest import Cli
from tests.fleet.sshd import SshdHost
from tests.fleet.test_push_e2e import model_folder, setup_fleet

SHAPE = ("--shape", "log_mel=1x1x98x40")  # the demo model's batch dim is dynamic
CRASH_ENV = "EDGEFLEET_AGENT_CRASH_AT"

# point -> (where current points right after the kill, the phase left pending)
PUSH_POINTS: dict[str, tuple[str, str | None]] = {
    "staged": ("v1", None),  # version dir built, intent not recorded yet
    "pending": ("v1", "pending"),  # intent recorded, smoke test not started
    "smoke": ("v1", "pending"),  # the smoke child has its spec: killed during the test
    "smoke_tested": ("v1", "smoke_tested"),  # passed and recorded, not swapped
    "swapped": ("v2", "smoke_tested"),  # between the swap and the commit record
    "committed": ("v2", None),  # committed, the result never reached the control plane
}


def set_crash(host: SshdHost, point: str | None) -> None:
    """The device's environment (as inventory's edgefleet_env would set it), with or without
    the crash point."""
    with session_scope(Settings()) as session:
        device = get_device(session, host.name)
        device.env = dict(host.sim.env, **({CRASH_ENV: point} if point else {}))
        session.add(device)


def device_state(host: SshdHost) -> tuple[dict[str, Any], str | None]:
    state = json.loads((host.root / "state.json").read_text())
    current = host.root / "current"
    return state, os.readlink(current) if current.is_symlink() else None


def assert_consistent(host: SshdHost) -> tuple[dict[str, Any], str | None]:
    """The journal's invariant: with nothing pending ``current`` is the last committed version;
    with a change pending it is that version or the pending one. Nothing else, ever."""
    state, current = device_state(host)
    committed = state["history"][-1]["dir"] if state["history"] else None
    pending = state.get("pending")
    allowed = {committed} | ({pending["entry"]["dir"]} if pending else set())
    assert current in allowed, (host.name, current, state)
    assert current is None or (host.root / current).is_dir(), (host.name, current)
    return state, current


def assert_settled(host: SshdHost, version: str, only_kept_dirs: bool = True) -> None:
    """Nothing pending, ``current`` is the committed ``version``; no version dir outside the
    history left (a rollback keeps the one it left until the next activation's prune)."""
    state, current = assert_consistent(host)
    assert state["pending"] is None, (host.name, state)
    assert state["history"][-1]["version"] == version and current == state["history"][-1]["dir"]
    kept = {e["dir"].split("/")[1] for e in state["history"]}
    if only_kept_dirs:
        assert {p.name for p in (host.root / "versions").iterdir()} == kept, host.name


def deployments(cli: Cli, host: SshdHost) -> list[dict[str, Any]]:
    return cli("devices", "show", host.name, "--json").json["deployments"]


def test_a_push_killed_at_each_step_is_reverted_or_kept_and_the_db_follows(
        cli: Cli, sshd_factory, tmp_path: Path) -> None:
    hosts = sshd_factory(len(PUSH_POINTS))
    by_point = dict(zip(PUSH_POINTS, hosts, strict=True))
    setup_fleet(cli, tmp_path, hosts)
    cli("bundle", "build", model_folder(tmp_path, 0), "--name", "m", *SHAPE)
    cli("bundle", "build", model_folder(tmp_path, 1), "--name", "m", *SHAPE)
    assert [p["state"] for p in cli("push", "m@1", "pis", "--json").json] == ["active"] * 6
    v1_dirs = {h.name: device_state(h)[1] for h in hosts}

    for point, host in by_point.items():
        set_crash(host, point)
    failed = {p["device"]: p for p in cli("push", "m@2", "pis", "--json", expect=1).json}
    for point, host in by_point.items():
        outcome = failed[host.name]
        assert outcome["state"] == "failed" and "agent session ended" in outcome["error"], point
        state, current = assert_consistent(host)
        where, phase = PUSH_POINTS[point]
        assert (current == v1_dirs[host.name]) is (where == "v1"), (point, current)
        pending = state.get("pending")
        assert (pending and pending["phase"]) == phase, (point, state)
        if pending:
            assert pending["op"] == "activate" and pending["entry"]["version"] == "2"
            assert (host.root / pending["entry"]["dir"]).is_dir()
    listed = {d["name"]: d["active_bundle"] for d in cli("devices", "list", "--json").json}
    assert set(listed.values()) == {"m@1"}  # the push failed everywhere, as far as it knows

    # The next contact: a telemetry poll. On the "swapped" device the poll's own agent is
    # killed in the middle of putting `current` back: the one after that finishes the job.
    for host in hosts:
        set_crash(host, None)
    set_crash(by_point["swapped"], "revert_swapped")
    polled = {o["device"]: o for o in cli("telemetry", "pis", "--json", expect=1).json}
    assert polled[by_point["swapped"].name]["state"] == "failed"
    state, current = assert_consistent(by_point["swapped"])
    assert current == v1_dirs[by_point["swapped"].name] and state["pending"] is not None
    set_crash(by_point["swapped"], None)
    again = cli("telemetry", by_point["swapped"].name, "--json").json[0]
    polled[by_point["swapped"].name] = again

    reverted = {"pending": "before it was smoke-tested and committed",
                "smoke": "before it was smoke-tested and committed",
                "smoke_tested": "after its smoke test passed, before it was committed",
                "swapped": "after its smoke test passed, before it was committed"}
    listed = {d["name"]: d for d in cli("devices", "list", "--json").json}
    for point, host in by_point.items():
        report = polled[host.name].get("recovered")
        if point in reverted:
            assert report and len(report) == 1, (point, polled[host.name])
            assert "an activation of m@2 was interrupted " + reverted[point] in report[0]
            assert report[0].endswith("was reverted: m@1 is active")
            assert_settled(host, "1")
            assert listed[host.name]["active_bundle"] == "m@1"
            row = deployments(cli, host)[0]
            assert (row["operation"], row["state"], row["bundle_version"]) == (
                "recover", "reverted", "2")
            assert row["error"] == report[0]
        else:
            assert "recovered" not in polled[host.name], (point, polled[host.name])
            assert deployments(cli, host)[0]["operation"] == "push"
    # Committed before the kill: the device runs v2, and its report corrects the DB.
    assert listed[by_point["committed"].name]["active_bundle"] == "m@2"
    assert_settled(by_point["committed"], "2")
    # Killed before the intent was recorded: nothing to revert, v1 was never left.
    staged = by_point["staged"]
    assert listed[staged.name]["active_bundle"] == "m@1"
    state, current = assert_consistent(staged)
    assert state["pending"] is None and current == v1_dirs[staged.name]
    orphans = {p.name for p in (staged.root / "versions").iterdir()} - {
        e["dir"].split("/")[1] for e in state["history"]}
    assert len(orphans) == 1  # its staged dir: the next activation's prune removes it

    pushed = {p["device"]: p for p in cli("push", "m@2", "pis", "--json").json}
    assert {p["state"] for p in pushed.values()} == {"active", "unchanged"}
    assert pushed[by_point["committed"].name]["state"] == "unchanged"
    for host in hosts:
        assert_settled(host, "2")
    assert {d["active_bundle"] for d in cli("devices", "list", "--json").json} == {"m@2"}


def test_a_rollback_killed_before_its_commit_is_reverted(cli: Cli, sshd_factory,
                                                         tmp_path: Path) -> None:
    points = {"rollback_pending": "v2", "rollback_swapped": "v1"}  # current right after
    hosts = sshd_factory(len(points))
    by_point = dict(zip(points, hosts, strict=True))
    setup_fleet(cli, tmp_path, hosts)
    for seed in (0, 1):
        cli("bundle", "build", model_folder(tmp_path, seed), "--name", "m", *SHAPE)
    cli("push", "m@1", "pis")
    dirs = {h.name: {"v1": device_state(h)[1]} for h in hosts}
    cli("push", "m@2", "pis")
    for host in hosts:
        dirs[host.name]["v2"] = device_state(host)[1]

    for point, host in by_point.items():
        set_crash(host, point)
    rolled = cli("rollback", "pis", "--json", expect=1).json
    assert [r["state"] for r in rolled] == ["failed"] * 2
    for point, host in by_point.items():
        state, current = assert_consistent(host)
        assert current == dirs[host.name][points[point]], point
        assert state["pending"]["op"] == "rollback"
        assert state["pending"]["entry"]["dir"] == dirs[host.name]["v1"]
        set_crash(host, None)

    polled = {o["device"]: o for o in cli("telemetry", "pis", "--json").json}
    for host in hosts:
        (message,) = polled[host.name]["recovered"]
        assert message.startswith("a rollback to m@1 was interrupted before it was committed")
        assert message.endswith("was reverted: m@2 is active")
        assert_settled(host, "2")
        assert {e["version"] for e in device_state(host)[0]["history"]} == {"1", "2"}
        row = deployments(cli, host)[0]
        assert (row["operation"], row["state"]) == ("recover", "reverted")

    # The rollback itself still works, and its target's dir was never deleted.
    assert [r["state"] for r in cli("rollback", "pis", "--json").json] == ["rolled-back"] * 2
    for host in hosts:
        assert_settled(host, "1", only_kept_dirs=False)
    assert {d["active_bundle"] for d in cli("devices", "list", "--json").json} == {"m@1"}
