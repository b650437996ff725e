"""Version lifecycle through the real zipapp: prune, rollback, odd roots, failures, locking."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from agent_helpers import REPO, agent_env, make_bundle, push, read_state, run_agent, upload

from agent.protocol import parse_lines


def version(n: int, shared: bytes = b"shared tokenizer"):
    return make_bundle("kws", f"{n}.0", {"model.onnx": b"model %d" % n, "tok.txt": shared})


def test_prune_keeps_current_and_three_previous_distinct_versions(pyz: Path, root: Path) -> None:
    bundles = [version(n) for n in range(1, 7)]
    stale = root / "versions" / ".staging-0123456789abcdef"  # left by a crashed activation
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "half.bin").write_bytes(b"half")
    dirs = []
    for bundle in bundles[:4]:
        run = push(pyz, root, bundle, plan=False)
        assert run.data["pruned"] == []
        dirs.append(run.data["dir"])
    assert not stale.exists()
    fifth = push(pyz, root, bundles[4], plan=False).data
    assert fifth["pruned"] == [dirs[0]]
    sixth = push(pyz, root, bundles[5], plan=False).data
    assert sixth["pruned"] == [dirs[1]]

    history = read_state(root)["history"]
    assert [e["version"] for e in history] == ["3.0", "4.0", "5.0", "6.0"]
    assert sorted(p.name for p in (root / "versions").iterdir()) == sorted(
        e["dir"].split("/")[1] for e in history
    )
    kept_blobs = {b.sha_of("model.onnx") for b in bundles[2:]} | {bundles[0].sha_of("tok.txt")}
    assert {p.name for p in (root / "blobs").iterdir()} == kept_blobs

    # re-activating an older version keeps history distinct: its old entry and dir go away
    again = push(pyz, root, bundles[3], plan=False).data
    assert again["changed"] is True and again["pruned"] == [history[1]["dir"]]
    assert [e["version"] for e in read_state(root)["history"]] == ["3.0", "5.0", "6.0", "4.0"]
    assert len(list((root / "versions").iterdir())) == 4


def test_rollback_walks_back_and_then_refuses(pyz: Path, root: Path) -> None:
    v1, v2 = version(1), version(2)
    first = push(pyz, root, v1, plan=False).data
    push(pyz, root, v2, plan=False)
    data = run_agent(pyz, root, "rollback").data
    assert data["active"]["digest"] == v1.digest and data["previous"]["digest"] == v2.digest
    assert os.readlink(root / "current") == first["dir"]
    assert (root / "current" / "model.onnx").read_bytes() == b"model 1"
    assert [e["digest"] for e in read_state(root)["history"]] == [v1.digest]
    assert run_agent(pyz, root, "status").data["active"]["digest"] == v1.digest

    state_before = (root / "state.json").read_bytes()
    error = run_agent(pyz, root, "rollback", {}).error
    assert error["code"] == "nothing_to_roll_back"
    assert "only one version" in error["message"]
    assert (root / "state.json").read_bytes() == state_before
    assert os.readlink(root / "current") == first["dir"]


def test_rollback_skips_a_version_that_no_longer_verifies(pyz: Path, root: Path) -> None:
    v1, v2, v3 = version(1), version(2), version(3)
    first = push(pyz, root, v1, plan=False).data
    second = push(pyz, root, v2, plan=False).data
    push(pyz, root, v3, plan=False)
    broken = root / second["dir"] / "model.onnx"
    broken.chmod(0o644)
    broken.write_bytes(b"model X")  # same size, other bytes
    data = run_agent(pyz, root, "rollback").data
    assert data["active"]["digest"] == v1.digest
    assert [s["digest"] for s in data["skipped"]] == [v2.digest]
    assert "model.onnx" in data["skipped"][0]["problem"]
    assert os.readlink(root / "current") == first["dir"]
    assert [e["digest"] for e in read_state(root)["history"]] == [v1.digest]


def test_rollback_on_a_fresh_device(pyz: Path, root: Path) -> None:
    error = run_agent(pyz, root, "rollback").error
    assert error["code"] == "nothing_to_roll_back" and str(root) in error["message"]
    assert not root.exists()


def test_hostile_root_is_used_literally(pyz: Path, tmp_path: Path) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    root = tmp_path / "we ird \"q\" 's' $(touch pwned) `touch pwned2` ; touch pwned3"
    bundle = make_bundle("x", "1", {"m.onnx": b"m"})
    push(pyz, root, bundle, cwd=work)
    assert root.is_dir() and (root / "current" / "m.onnx").read_bytes() == b"m"
    assert run_agent(pyz, root, "status", cwd=work).data["root"] == str(root)
    assert not [p for p in tmp_path.rglob("pwned*")]


def test_hostile_bundle_names_never_reach_the_filesystem(pyz: Path, root: Path) -> None:
    bundle = make_bundle("../../evil $(touch pwned)", "1.0/../../x", {"m.onnx": b"m"})
    data = push(pyz, root, bundle, plan=False).data
    assert data["active"]["name"] == "../../evil $(touch pwned)"
    assert data["dir"] == "versions/" + os.listdir(root / "versions")[0]
    assert re.fullmatch(r"versions/[0-9a-f]{16}-[0-9]+", data["dir"])
    assert sorted(os.listdir(root)) == [
        ".lock", "blobs", "cache", "current", "incoming", "state.json", "versions"]
    assert not list(root.parent.rglob("*pwned*")) and not list(root.parent.rglob("evil*"))
    assert read_state(root)["history"][0]["version"] == "1.0/../../x"


def test_tilde_root_is_expanded_on_the_device(pyz: Path, tmp_path: Path) -> None:
    env = agent_env(HOME=str(tmp_path))
    data = run_agent(pyz, "~/edge fleet", "status", env=env).data
    assert data["root"] == str(tmp_path / "edge fleet")
    bundle = make_bundle("x", "1", {"m.onnx": b"m"})
    upload(tmp_path / "edge fleet", bundle)
    data = run_agent(pyz, "~/edge fleet", "activate", bundle.request, env=env).data
    assert data["changed"] is True
    assert (tmp_path / "edge fleet" / "current" / "m.onnx").exists()
    assert not (tmp_path / "~").exists()


def test_unexpected_failure_is_an_internal_result_and_changes_nothing(
    pyz: Path, root: Path
) -> None:
    v1, v2 = version(1), version(2)
    push(pyz, root, v1, plan=False)
    # sabotage: a directory squats on the path of v2's model blob, so moving the verified
    # upload into blobs/ fails with an OSError nobody anticipated (a real directory at
    # `current` used to serve here; it is now moved aside: test_current_not_a_symlink.py)
    (root / "blobs" / v2.sha_of("model.onnx")).mkdir()
    state_before = (root / "state.json").read_bytes()
    versions_before = sorted(p.name for p in (root / "versions").iterdir())
    upload(root, v2)
    run = run_agent(pyz, root, "activate", v2.request)
    assert run.error["code"] == "internal"
    assert "IsADirectoryError" in run.error["message"]
    assert "Traceback" in run.stderr  # the traceback goes to stderr, never stdout
    assert (root / "state.json").read_bytes() == state_before
    assert sorted(p.name for p in (root / "versions").iterdir()) == versions_before


def test_second_writer_waits_for_the_lock(pyz: Path, root: Path) -> None:
    bundle = make_bundle("x", "1", {"m.onnx": b"m"})
    upload(root, bundle)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.Popen(
            [sys.executable, str(pyz), "--root", str(root), "activate"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=agent_env(),
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(bundle.request).encode())
        proc.stdin.close()
        first = json.loads(proc.stdout.readline())  # blocks until the agent reports waiting
        assert first["event"] == "waiting_for_lock"
        assert not (root / "current").exists()
    rest = parse_lines(proc.stdout.read().decode().splitlines())
    assert proc.wait(timeout=30) == 0
    assert rest[-1]["ok"] is True and (root / "current" / "m.onnx").exists()


def test_sigterm_while_waiting_ends_with_one_error_result(pyz: Path, root: Path) -> None:
    bundle = make_bundle("x", "1", {"m.onnx": b"m"})
    upload(root, bundle)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.Popen(
            [sys.executable, str(pyz), "--root", str(root), "activate"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=agent_env(),
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(bundle.request).encode())
        proc.stdin.close()
        assert json.loads(proc.stdout.readline())["event"] == "waiting_for_lock"
        proc.send_signal(signal.SIGTERM)
        rest = parse_lines(proc.stdout.read().decode().splitlines())
        assert proc.wait(timeout=30) == 1
    assert [line["type"] for line in rest] == ["result"]
    assert rest[0]["error"]["code"] == "internal"
    assert "signal 15" in rest[0]["error"]["message"]
    assert not (root / "current").exists() and not (root / "state.json").exists()


def test_python_dash_m_agent_from_the_repo(root: Path) -> None:
    run = run_agent(Path("unused"), root, "status",
                    argv=[sys.executable, "-m", "agent", "--root", str(root), "status"],
                    cwd=REPO)
    assert run.data == {"active": None, "history": [], "root": str(root)}


def test_unknown_command_and_bad_arguments(pyz: Path, root: Path) -> None:
    run = run_agent(pyz, root, "explode")
    assert run.result["command"] == "?" and run.error["code"] == "bad_input"
    assert "explode" in run.error["message"]
    run = run_agent(pyz, root, "status", argv=[sys.executable, str(pyz)])
    assert run.error["code"] == "bad_input"


def test_current_that_disagrees_with_the_state_is_put_back_and_reported(
        pyz: Path, root: Path) -> None:
    """What an older agent killed between its swap and its state write left behind: state.json
    is the record, so ``current`` follows it, and the command says what it found."""
    v1, v2 = version(1), version(2)
    first = push(pyz, root, v1, plan=False).data
    second = push(pyz, root, v2, plan=False).data
    state = read_state(root)
    state["history"].pop()  # as if v2's commit had never been written
    (root / "state.json").write_text(json.dumps(state))
    status = run_agent(pyz, root, "status").data
    (report,) = status["recovered"]
    assert report["action"] == "repaired" and report["current_was"] == second["dir"]
    assert report["active"]["digest"] == v1.digest
    assert f"current pointed at {second['dir']}" in report["message"]
    assert os.readlink(root / "current") == first["dir"]
    assert status["active"]["digest"] == v1.digest
    assert "recovered" not in run_agent(pyz, root, "status").data  # reported once


def test_a_pending_activation_is_left_alone_while_its_process_holds_the_lock(
        pyz: Path, root: Path) -> None:
    v1, v2 = version(1), version(2)
    first = push(pyz, root, v1, plan=False).data
    upload(root, v2)
    killed = subprocess.run([sys.executable, str(pyz), "--root", str(root), "activate"],
                            input=json.dumps(v2.request).encode(), capture_output=True,
                            env=agent_env(EDGEFLEET_AGENT_CRASH_AT="pending"), check=False)
    assert killed.returncode == -signal.SIGKILL
    assert all(line["type"] == "progress"
               for line in parse_lines(killed.stdout.decode().splitlines()))
    pending = read_state(root)["pending"]
    assert (pending["op"], pending["phase"]) == ("activate", "pending")
    assert os.readlink(root / "current") == first["dir"]  # the new version never went live

    with open(root / ".lock", "w") as lock:  # as the activation's own process would
        fcntl.flock(lock, fcntl.LOCK_EX)
        busy = run_agent(pyz, root, "status").data
        assert busy["pending"] == pending and "recovered" not in busy
        assert (root / pending["entry"]["dir"]).is_dir()

    error = run_agent(pyz, root, "rollback").error  # the lock is free: the first command reverts
    assert error["code"] == "nothing_to_roll_back"
    (report,) = error["recovered"]
    assert (report["action"], report["op"], report["phase"]) == ("reverted", "activate",
                                                                 "pending")
    assert report["abandoned"]["digest"] == v2.digest
    assert report["active"]["digest"] == v1.digest
    assert "before it was smoke-tested and committed" in report["message"]
    assert read_state(root)["pending"] is None
    assert not (root / pending["entry"]["dir"]).exists()
    assert os.readlink(root / "current") == first["dir"]
