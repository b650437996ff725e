"""``facts`` and interpreter compatibility, through the real zipapp.

Old interpreters (2.7, 3.6-3.8) and 3.9 are used when this machine has them (pyenv, /usr/bin);
the guard is also tested directly so the contract is checked everywhere.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from agent_helpers import agent_env, fake_sysfs, fake_vcgencmd, make_bundle, push, run_agent

import agent
from agent.__main__ import too_old_result


@cache
def interpreters() -> dict[tuple[int, int], str]:
    """Other Pythons on this machine, by (major, minor)."""
    candidates = set(glob.glob(os.path.expanduser("~/.pyenv/versions/*/bin/python")))
    candidates |= set(glob.glob("/usr/bin/python[23].[0-9]"))
    candidates |= {p for p in (shutil.which(f"python3.{m}") for m in range(6, 10)) if p}
    found: dict[tuple[int, int], str] = {}
    for exe in sorted(candidates):
        probe = subprocess.run([exe, "-c", "import sys; print(sys.version_info[0]); "
                                "print(sys.version_info[1])"],
                               capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            major, minor = (int(x) for x in probe.stdout.split())
            found.setdefault((major, minor), exe)
    return found


def test_facts_on_a_simulated_pi(pyz: Path, tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, throttled_file="0\n")
    (sysfs / "firmware/devicetree/base").mkdir(parents=True)
    (sysfs / "firmware/devicetree/base/model").write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\0")
    bindir = fake_vcgencmd(tmp_path, throttled="0x50000")
    env = agent_env(EDGEFLEET_SYSFS=str(sysfs), PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    root = tmp_path / "not yet created"
    data = run_agent(pyz, root, "facts", env=env).data

    assert data["agent_version"] == agent.__version__ and data["protocol"] == 1
    assert data["root"] == str(root) and not root.exists()  # facts only looks
    assert data["python"]["version"] == platform.python_version()
    assert data["python"]["executable"] == sys.executable
    import numpy
    import onnxruntime

    assert data["numpy"] == numpy.__version__
    assert data["onnxruntime"]["version"] == onnxruntime.__version__
    assert "CPUExecutionProvider" in data["onnxruntime"]["providers"]
    assert data["import_errors"] == {}
    assert data["pi_model"] == "Raspberry Pi 4 Model B Rev 1.4"
    assert data["simulated"] is True
    assert data["arch"] == platform.machine() and data["cores"] == os.cpu_count()
    assert data["disk_free_bytes"] > 0
    if os.path.exists("/proc/meminfo"):
        assert data["ram_mb"] > 0
    assert data["sensors"]["temp_c"] == 61.5
    assert data["sensors"]["throttled"] == 0x50000
    assert data["sensors"]["throttle_flags"]["since_boot"] == ["under_voltage", "throttled"]
    assert data["active"] is None


def test_facts_survive_missing_numpy_and_onnxruntime(pyz: Path, tmp_path: Path) -> None:
    # -S: no site-packages, so numpy and onnxruntime are genuinely not importable
    run = run_agent(pyz, tmp_path, "facts", flags=("-S", "-I"), env=agent_env())
    data = run.data
    assert data["numpy"] is None and data["onnxruntime"] is None
    assert "No module named 'numpy'" in data["import_errors"]["numpy"]
    assert "No module named 'onnxruntime'" in data["import_errors"]["onnxruntime"]
    assert data["simulated"] is False  # EDGEFLEET_SYSFS unset


def test_facts_report_the_active_bundle(pyz: Path, root: Path) -> None:
    bundle = make_bundle("wake-word", "3.1", {"m.onnx": b"m"})
    push(pyz, root, bundle, plan=False)
    data = run_agent(pyz, root, "facts", env=agent_env(EDGEFLEET_SYSFS="/sys")).data
    assert data["simulated"] is False
    active = data["active"]
    assert (active["name"], active["version"], active["digest"]) == (
        "wake-word", "3.1", bundle.digest)


def test_too_old_guard_message() -> None:
    assert too_old_result((3, 9, 0, "final", 0), "/usr/bin/python3.9") is None
    assert too_old_result((3, 13, 1), "/x") is None
    result = too_old_result((3, 8, 10, "final", 0), "/usr/bin/python3.8")
    assert json.dumps(result, separators=(",", ":")) == (
        '{"v":1,"type":"result","ok":false,"command":"?","error":{"code":"python_too_old",'
        '"message":"EdgeFleet agent needs Python >= 3.9, this is 3.8.10 at /usr/bin/python3.8: '
        'install python3.9+ or set edgefleet_python"}}'
    )


def test_old_interpreters_get_a_protocol_error(pyz: Path, tmp_path: Path) -> None:
    old = [exe for version, exe in sorted(interpreters().items()) if version < (3, 9)]
    if not old:
        pytest.skip("no Python < 3.9 on this machine")
    for exe in old[:2]:
        proc = subprocess.run([exe, str(pyz), "--root", str(tmp_path), "facts"],
                              capture_output=True, check=False, env=agent_env())
        assert proc.returncode == 1, proc.stderr
        line = proc.stdout.decode()
        assert line.startswith('{"v":1,"type":"result","ok":false,"command":"?","error":'
                               '{"code":"python_too_old","message":"EdgeFleet agent needs '
                               "Python >= 3.9, this is ")
        assert line.count("\n") == 1 and "install python3.9+ or set edgefleet_python" in line


def test_full_lifecycle_on_python_3_9(pyz: Path, root: Path) -> None:
    exe = interpreters().get((3, 9))
    if exe is None:
        pytest.skip("no Python 3.9 on this machine")
    facts = run_agent(pyz, root, "facts", python=exe).data
    assert facts["python"]["version"].startswith("3.9.")
    v1 = make_bundle("m", "1", {"model.onnx": b"one", "sub/dir/x": b"x"})
    v2 = make_bundle("m", "2", {"model.onnx": b"two", "sub/dir/x": b"x"})
    push(pyz, root, v1, python=exe)
    push(pyz, root, v2, python=exe)
    rolled = run_agent(pyz, root, "rollback", python=exe).data
    assert rolled["active"]["digest"] == v1.digest
    assert (root / "current" / "model.onnx").read_bytes() == b"one"
    assert run_agent(pyz, root, "status", python=exe).data["active"]["digest"] == v1.digest
