"""An agent killed mid-measurement takes its measuring child with it (agent.children.
die_with_parent). Before, a child inside a long inference (9 s a run for the AST on one Pi
core; here a model whose first run lasts minutes) went on until its next progress line found
the pipe broken, and the next bench on the device was measured beside it without a flag."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

from agent_helpers import agent_env, push, read_state, upload
from test_bench import FakePi, model_bundle
from test_smoke import endless_model, golden_bundle


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Whether ``pid`` (not our child) exits within ``timeout`` s: its pidfd becomes
    readable when it does."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def test_the_child_dies_with_a_killed_agent(pyz: Path, root: Path, tmp_path: Path) -> None:
    bundle = model_bundle("endless", endless_model())
    push(pyz, root, bundle, plan=False)
    request = {"digest": bundle.digest, "threads": [1], "warmup": 0, "runs": 1}
    agent = subprocess.Popen([sys.executable, str(pyz), "--root", str(root), "bench"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=FakePi(tmp_path).env)
    assert agent.stdin is not None and agent.stdout is not None
    agent.stdin.write(json.dumps(request).encode())
    agent.stdin.close()
    child = None
    for raw in agent.stdout:
        event = json.loads(raw)
        if event.get("event") == "bench" and event.get("phase") == "load":
            child = event["pid"]  # loading, then a first inference of minutes, silent
            break
    assert child is not None
    agent.kill()
    agent.wait()
    try:
        assert wait_for_exit(child, 30), "the measuring child outlived its agent"
    finally:
        if not wait_for_exit(child, 0):
            os.kill(child, signal.SIGKILL)


def measure_children_of(agent_pid: int) -> list[int]:
    """Live processes that an agent with this pid started as measurement or smoke-test
    children (agent.children.child_env marks them), wherever they were reparented."""
    marker = f"EDGEFLEET_MEASURE_PARENT={agent_pid}\0".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_the_smoke_child_dies_with_an_agent_killed_during_the_smoke_test(
        pyz: Path, root: Path, tmp_path: Path) -> None:
    """The smoke test's time limit lives in the agent: a child left behind by an agent killed
    during the test (crash point ``smoke``: the child has its spec) ran a hanging model for
    ever, with its heap reserve and the model in memory, beside the retried push's own."""
    push(pyz, root, golden_bundle(tmp_path, "1"), plan=False)
    hanging = golden_bundle(tmp_path, "2", device_model=endless_model())
    upload(root, hanging)
    agent = subprocess.Popen([sys.executable, str(pyz), "--root", str(root), "activate"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL,
                             env=agent_env(EDGEFLEET_AGENT_CRASH_AT="smoke"))
    agent.communicate(json.dumps(hanging.request).encode(), timeout=60)
    assert agent.returncode == -signal.SIGKILL  # killed at the crash point, child running
    left = measure_children_of(agent.pid)
    try:
        assert all(wait_for_exit(pid, 30) for pid in left), "the smoke child outlived its agent"
    finally:
        for pid in left:
            if not wait_for_exit(pid, 0):
                os.kill(pid, signal.SIGKILL)
    assert read_state(root)["history"][-1]["version"] == "1"
