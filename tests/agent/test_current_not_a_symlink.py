"""``current`` replaced by a real directory (or file) of the user's: commands that take the root
lock move it aside, whole, and put our symlink back; ``status``/``telemetry`` only say so.
Before, every command hit a raw IsADirectoryError."""

from __future__ import annotations

import os
from pathlib import Path

from agent_helpers import make_bundle, push, run_agent, upload

V1 = make_bundle("m", "1", {"model.onnx": b"one"})
V2 = make_bundle("m", "2", {"model.onnx": b"two"})


def occupy(root: Path) -> None:
    """What a user copying their own model folder to ``current`` leaves."""
    (root / "current").unlink()
    (root / "current").mkdir()
    (root / "current" / "model.onnx").write_bytes(b"the user's own model")


def backups(root: Path) -> list[Path]:
    return sorted(root.glob("current.moved-*"))


def test_readers_report_it_and_leave_it_alone(pyz: Path, root: Path) -> None:
    push(pyz, root, V1, plan=False)
    occupy(root)
    for command in ("status", "telemetry"):
        data = run_agent(pyz, root, command).data
        message = data["current_error"]
        assert f"{root / 'current'} is a directory" in message, message
        assert "moves it, with everything in it, to" in message and "Errno" not in message
        assert data["active"]["version"] == "1" and "state_error" not in data
    assert (root / "current" / "model.onnx").read_bytes() == b"the user's own model"
    assert backups(root) == []


def test_activate_and_rollback_move_it_aside_and_repair_current(pyz: Path, root: Path) -> None:
    push(pyz, root, V1, plan=False)
    occupy(root)
    upload(root, V2)
    run = run_agent(pyz, root, "activate", V2.request)
    (report,) = run.data["recovered"]
    (moved,) = backups(root)
    assert report["action"] == "moved_aside" and report["moved_to"] == str(moved)
    assert str(moved) in report["message"] and "nothing was deleted" in report["message"]
    assert (moved / "model.onnx").read_bytes() == b"the user's own model"
    assert run.data["active"]["version"] == "2"
    assert os.readlink(root / "current") == run.data["dir"]
    assert (root / "current" / "model.onnx").read_bytes() == b"two"

    occupy(root)
    (root / "current" / "model.onnx").write_bytes(b"a second copy")
    run = run_agent(pyz, root, "rollback")
    assert run.data["active"]["version"] == "1"
    assert run.data["recovered"][0]["action"] == "moved_aside"
    first, second = backups(root)  # a new name: the first backup is not overwritten
    assert {(first / "model.onnx").read_bytes(), (second / "model.onnx").read_bytes()} == {
        b"the user's own model", b"a second copy"}
    assert (root / "current" / "model.onnx").read_bytes() == b"one"
    assert run_agent(pyz, root, "status").data.get("current_error") is None


def test_a_file_at_current_is_moved_aside_too(pyz: Path, root: Path) -> None:
    push(pyz, root, V1, plan=False)
    (root / "current").unlink()
    (root / "current").write_text("not a link")
    run = run_agent(pyz, root, "rollback")  # nothing to roll back to: still repairs first
    assert run.error["code"] == "nothing_to_roll_back"
    (report,) = run.error["recovered"]
    assert "was a file" in report["message"]
    assert Path(report["moved_to"]).read_text() == "not a link"
    assert (root / "current" / "model.onnx").read_bytes() == b"one"
