"""A damaged state.json (one flipped digit in the active entry's dir name: still a valid name,
naming nothing). Before, the next command's repair pointed ``current`` at the missing dir (the
device had nothing to run) and the next push's prune deleted the dir ``current`` had pointed
at, as outside the history. Now nothing is changed and the error says what to do."""

from __future__ import annotations

import json
from pathlib import Path

from agent_helpers import make_bundle, push, read_state, run_agent, upload

V1 = make_bundle("m", "1", {"model.onnx": b"one"})
V2 = make_bundle("m", "2", {"model.onnx": b"two"})
V3 = make_bundle("m", "3", {"model.onnx": b"three"})


def test_an_active_entry_naming_a_missing_dir_changes_nothing(pyz: Path, root: Path) -> None:
    push(pyz, root, V1, plan=False)
    push(pyz, root, V2, plan=False)
    live = (root / "current").resolve()
    state = read_state(root)
    real = state["history"][-1]["dir"]
    last = real[-1]
    state["history"][-1]["dir"] = real[:-1] + ("1" if last != "1" else "2")  # a flipped digit
    (root / "state.json").write_text(json.dumps(state))

    status = run_agent(pyz, root, "status").data
    assert "does not exist" in status["state_error"] and "nothing was changed" in \
        status["state_error"]
    assert (root / "current").resolve() == live and live.is_dir()

    upload(root, V3)
    refused = run_agent(pyz, root, "activate", V3.request).error
    assert "does not exist" in refused["message"] and "move it away" in refused["message"]
    assert (root / "current").resolve() == live and live.is_dir()  # not pruned
    assert (live / "model.onnx").read_bytes() == b"two"
