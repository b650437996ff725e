"""The device's ``current`` symlink replaced by a real directory (a user copied their own model
folder there), over real sshd.

Before: every command that looked at it (telemetry, bench, push, rollback) failed with a raw
``IsADirectoryError``. Now telemetry, which only observes, leaves it where it is and says what
is wrong and what will happen; a command that takes the device's lock (bench, push, rollback)
moves it, whole, to ``current.moved-<time>`` next to it, says so (the device's report is
recorded as a ``recover`` deployment row), and puts the symlink back. Nothing is deleted.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlmodel import select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Deployment
from tests.conftest import Cli, CliResult
from tests.fleet.sshd import SshdHost
from tests.fleet.test_push_e2e import active_manifest, model_folder, setup_fleet

SHAPE = ("--shape", "log_mel=1x1x98x40")  # the demo model's batch dim is dynamic
RAW = ("IsADirectoryError", "Is a directory", "Errno", "Traceback")


def occupy(host: SshdHost, note: str) -> None:
    """Replace ``current`` by a real directory holding the user's own files."""
    current = host.root / "current"
    current.unlink()
    current.mkdir()
    (current / "model.onnx").write_bytes(b"my hand-copied model")
    (current / "notes.txt").write_text(note)


def clean(result: CliResult) -> CliResult:
    for raw in RAW:
        assert raw not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


def moved_aside(host: SshdHost) -> dict[str, str]:
    """note -> backup dir, for every ``current.moved-*`` on the device (each must be whole)."""
    found = {}
    for backup in sorted(host.root.glob("current.moved-*")):
        assert (backup / "model.onnx").read_bytes() == b"my hand-copied model"
        found[(backup / "notes.txt").read_text()] = str(backup)
    return found


def symlinked(host: SshdHost) -> bool:
    return (host.root / "current").is_symlink()


def test_current_as_a_directory_is_reported_then_moved_aside_never_deleted(
        cli: Cli, home: Path, sshd_factory, tmp_path: Path) -> None:
    (host,) = sshd_factory(1)
    setup_fleet(cli, tmp_path, [host])
    for seed in (0, 1):
        cli("bundle", "build", model_folder(tmp_path, seed), "--name", "m", *SHAPE, "--json")
    cli("push", "m@1", host.name)
    cli("push", "m@2", host.name)

    # telemetry observes: the snapshot is taken, the problem named, the directory left alone
    occupy(host, "before telemetry")
    (row,) = clean(cli("telemetry", host.name, "--json")).json
    assert row["state"] == "ok"
    assert f"{host.root / 'current'} is a directory" in row["problem"]
    assert "moves it, with everything in it" in row["problem"]
    assert not symlinked(host) and moved_aside(host) == {}

    # bench takes the device's lock: the directory goes aside, the benchmark runs
    bench = clean(cli("bench", "m@2", host.name, "--threads", "1", "--runs", "3", *SHAPE,
                      "--json")).json
    assert [r["ok"] for r in bench["results"]] == [True]
    assert list(moved_aside(host)) == ["before telemetry"] and symlinked(host)

    # push repairs it and activates
    occupy(host, "before push")
    (pushed,) = clean(cli("push", "m@1", host.name, "--json")).json
    assert pushed["state"] == "active"
    backups = moved_aside(host)
    (message,) = pushed["recovered"]
    assert f"to {backups['before push']} (nothing was deleted)" in message
    assert symlinked(host) and active_manifest(host)["version"] == "1"

    # rollback too
    occupy(host, "before rollback")
    (rolled,) = clean(cli("rollback", host.name, "--json")).json
    assert rolled["state"] == "rolled-back" and active_manifest(host)["version"] == "2"
    assert sorted(moved_aside(host)) == ["before push", "before rollback", "before telemetry"]
    assert symlinked(host)
    assert cli("devices", "show", host.name, "--json").json["active_bundle"] == "m@2"

    # each move is on the record, naming where the files went
    with session_scope(Settings(home=home)) as session:
        rows = session.exec(select(Deployment).where(Deployment.operation == "recover")).all()
        recorded = [(r.state, r.error) for r in rows]
    backups = moved_aside(host)
    assert len(recorded) == 3 and {state for state, _ in recorded} == {"moved_aside"}
    for note in backups:  # "to <path> (": one name may begin another (-2 within a second)
        assert sum(f"to {backups[note]} (" in (error or "") for _, error in recorded) == 1
    assert json.loads((host.root / "state.json").read_text())["pending"] is None
