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

from agent_helpers import push
from test_bench import FakePi, model_bundle
from test_smoke import endless_model


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
