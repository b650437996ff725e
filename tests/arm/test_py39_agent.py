"""The agent's Python >= 3.9 promise as a runtime fact (issue 16): its unit tests that need no
onnxruntime run under the bullseye device's own Python 3.9.2 on aarch64, with pytest installed
there offline from wheels fetched here (numpy comes from the device's wheelhouse).

Why these files: they exercise the agent's code paths that are pure stdlib (+ numpy): the
zipapp, the session protocol, uploads and resume, the hash cache, sensors and the sampler,
the filterbank features. The others load models with onnxruntime (run by the flow test on the
device through the real pipeline) or import the control plane (Python 3.11 only).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from .device import ArmHost
from .rootfs import py39_test_wheels

# Everything runs under qemu (~1000x slower), and a cold cache builds the rootfs (~25 min) in the
# fixture: far past the suite's 300 s default.
pytestmark = pytest.mark.timeout(3600)
REPO = Path(__file__).resolve().parents[2]
PY39_FILES = (
    "test_build.py", "test_hashcache.py", "test_sensors.py", "test_sampler.py",
    "test_features.py", "test_session.py", "test_resume.py", "test_orphan_parts.py",
    "test_current_not_a_symlink.py",
)


def test_agent_unit_tests_pass_under_bullseye_python39(arm_hosts: dict[str, ArmHost]) -> None:
    host = arm_hosts["bullseye"]
    tree = host.share / "py39"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(REPO / "agent", tree / "agent",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "tests" / "agent", tree / "tests" / "agent",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "tests" / "__init__.py").write_text("")
    (tree / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    wheels = shutil.copytree(py39_test_wheels(), tree / "wheels")
    venv = "/opt/py39-tests"
    setup = host.run("sh", "-c", f"python3 -m venv {venv} && {venv}/bin/python -m pip install "
                     f"--quiet --find-links {wheels} pytest numpy", timeout=900)
    assert setup.returncode == 0, setup.stderr
    files = [f"tests/agent/{name}" for name in PY39_FILES]
    run = host.run("sh", "-c", f"cd {tree} && PYTHONDONTWRITEBYTECODE=1 PYTHONPATH={tree} "
                   f"{venv}/bin/python -m pytest -q -rs {' '.join(files)}", timeout=1800)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    version = host.run(f"{venv}/bin/python", "-c", "import platform; print("
                       "platform.python_version(), platform.machine())").stdout.split()
    assert version[0].startswith("3.9.") and version[1] == "aarch64", version
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) >= 90, output[-3000:]
    assert "skipped" not in output.splitlines()[-1], output[-3000:]
