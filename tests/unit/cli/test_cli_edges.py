"""The CLI's odds and ends from issue 17, through the real entry point in a subprocess (as a
user's shell runs it; the in-process runner skips ``main``): ``--version``; usage errors as JSON
under ``--json``; ``EDGEFLEET_HOME`` pointing at a file, under a file, or where nothing may be
created is one clear error (exit 2), not a traceback; after ``edgefleet demo``, ``devices list``
in the outer home says where the demo's fleet is; onnxruntime's quantizer's root-logger
warnings stay off stderr."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import __version__

ENTRY = [sys.executable, "-c", "from orchestrator.cli.main import main; main()"]
REPO = Path(__file__).resolve().parents[3]


def run(*args: str, home: Path | str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, EDGEFLEET_HOME=str(home), COLUMNS="200")
    return subprocess.run([*ENTRY, *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=REPO)


def test_version(tmp_path: Path) -> None:
    done = run("--version", home=tmp_path / "home")
    assert (done.returncode, done.stdout) == (0, f"edgefleet {__version__}\n")
    done = run("--version", "--json", home=tmp_path / "home")  # was "No such option: --json"
    assert (done.returncode, json.loads(done.stdout)) == (0, {"version": __version__})


@pytest.mark.parametrize(("args", "error", "usage"), [
    (("runs", "show", "--json"), "Missing argument 'RUN_ID'.",
     "Usage: edgefleet runs show [OPTIONS] {RUN_ID}"),
    (("runs", "list", "--bogus", "--json"), "No such option: --bogus",
     "Usage: edgefleet runs list [OPTIONS]"),
    (("nosuch", "--json"), "No such command 'nosuch'.",
     "Usage: edgefleet [OPTIONS] COMMAND [ARGS]..."),
])
def test_usage_errors_are_json_under_json(tmp_path: Path, args: tuple[str, ...], error: str,
                                          usage: str) -> None:
    done = run(*args, home=tmp_path / "home")
    assert done.returncode == 2, done
    assert json.loads(done.stdout) == {"error": error, "usage": usage}
    plain = run(*[a for a in args if a != "--json"], home=tmp_path / "home")
    assert plain.returncode == 2 and plain.stdout == "" and error.split(":")[0] in plain.stderr


def test_bad_home_is_one_clear_error(tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    cases = {a_file: "is a file, not a directory",
             a_file / "sub": "cannot be created (Not a directory)"}
    if Path("/sys").is_dir():  # read-only even for root, unlike a chmod'ed directory
        cases[Path("/sys/edgefleet-test-home")] = "cannot be created ("
    for home, says in cases.items():
        for args in (("devices", "list"), ("bundle", "list", "--json"), ("tokens", "list")):
            done = run(*args, home=home)
            assert done.returncode == 2, (home, args, done.stderr)
            assert "Traceback" not in done.stderr + done.stdout
            text = json.loads(done.stdout)["error"] if "--json" in args else done.stderr
            assert f"EDGEFLEET_HOME={home} {says}" in " ".join(text.split()), (home, text)
            assert "point EDGEFLEET_HOME at a directory this user can write" in \
                " ".join(text.split())


def test_devices_list_points_at_the_demo(tmp_path: Path, home: Path) -> None:
    """The demo keeps its state in HOME/demo (its DB made here by a real migration run)."""
    demo = tmp_path / "outer" / "demo"
    made = run("db", "upgrade", "--json", home=demo)
    assert made.returncode == 0, made.stderr
    outer = demo.parent
    done = run("devices", "list", home=outer)
    assert done.returncode == 2
    said = " ".join(done.stderr.split())
    assert "no devices yet" in said
    assert f"the demo's fleet is in {demo}: EDGEFLEET_HOME={demo} edgefleet devices list" in said
    shutil.rmtree(demo)
    assert "demo" not in run("devices", "list", home=outer).stderr


def test_quantizer_warnings_stay_off_stderr(tmp_path: Path) -> None:
    """onnxruntime's quantization tools call ``logging.warning`` on the root logger, which on
    an unconfigured root runs basicConfig and prints to stderr: injected here as the quantizer
    does it, inside the guard quantize_model runs it in."""
    code = ("import logging\n"
            "from orchestrator.artifacts.quantize import _quantizer_logging\n"
            "with _quantizer_logging():\n"
            "    logging.warning('Please consider to run pre-processing before quantization')\n"
            "print('done')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=dict(os.environ))
    assert (done.returncode, done.stdout, done.stderr) == (0, "done\n", "")
    bare = subprocess.run([sys.executable, "-c", "import logging; logging.warning('x')"],
                          capture_output=True, text=True, timeout=60)
    assert "WARNING:root:x" in bare.stderr  # what the guard prevents
