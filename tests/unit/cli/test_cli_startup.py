"""Light commands start without the heavy libraries (issue 12): a `devices list` or a
`bundle list` must not pay for onnx, onnxruntime, numpy, scipy, the web stack or alembic, nor
(when the DB is a SQLite file at head) for SQLAlchemy and SQLModel.

What a command imported is read from ``sys.modules`` at the exit of a fresh interpreter, so
this is not a timing test: it fails the day someone moves a heavy import back to a module's
top level on a light command's path. ``python bench/cli_startup.py`` measures the time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Dataset, Job, Run, Schedule
from orchestrator.demo.model import make_demo_classifier
from tests.conftest import Cli

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "inventory" / "example.yml"

# Runs `edgefleet ARGS...` as the console script does, then writes the top-level names of
# every imported module to OUT (atexit: typer ends the command with sys.exit).
WRAPPER = """
import atexit, json, sys
out = sys.argv[1]
def dump():
    with open(out, "w") as f:
        json.dump(sorted({name.split(".")[0] for name in sys.modules}), f)
atexit.register(dump)
sys.argv = ["edgefleet", *sys.argv[2:]]
from orchestrator.cli.main import main
main()
"""

# Libraries a command that only reads the DB must never import (onnx alone cost 1.3 s).
HEAVY = {"onnx", "onnxruntime", "numpy", "scipy", "fastapi", "starlette", "jinja2", "uvicorn",
         "alembic", "huggingface_hub", "paramiko", "fabric"}


def imported_by(home: Path, tmp_path: Path, *args: str) -> tuple[set[str], Any]:
    """(top-level modules imported, stdout: parsed with --json) of one command in a fresh
    process."""
    out = tmp_path / "modules.json"
    env = dict(os.environ, EDGEFLEET_HOME=str(home))
    env.pop("DATABASE_URL", None)
    result = subprocess.run([sys.executable, "-c", WRAPPER, str(out), *args], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout) if "--json" in args else result.stdout
    return set(json.loads(out.read_text())), payload


@pytest.fixture
def fleet(cli: Cli, home: Path, tmp_path: Path) -> Path:
    """A home with devices, a real bundle (built from an ONNX model) and a run."""
    cli("inventory", "sync", EXAMPLE)
    make_demo_classifier(tmp_path / "model" / "model.onnx")
    cli("bundle", "build", tmp_path / "model", "--name", "fc")
    with session_scope(Settings(home=home)) as session:
        session.add(Run(bundle_name="fc", bundle_version="1", bundle_digest="0" * 64,
                        targets="all", created_by="test", state="succeeded"))
        session.add(Dataset(name="eval", version="1", digest="d" * 64, format="audio",
                            samples=1, labels=["no"], size_bytes=10,
                            manifest_json='{"samples": [{"label": "no"}]}'))
        session.add(Job(kind="telemetry", state="succeeded", targets="all", created_by="test"))
        session.add(Schedule(kind="telemetry", targets="all", cron="0 3 * * *",
                             created_by="test"))
    return home


# ... and the listings read SQLite with the stdlib (orchestrator.core.listings), without the
# ORM and its settings, nor pydantic (typer 0.29 imports it to coerce every parameter, +0.15 s
# of CPU a command: pyproject pins typer below it).
ORM = {"sqlalchemy", "sqlmodel", "pydantic", "pydantic_settings", "yaml"}


# The light path reads a SQLite file with the stdlib; the PostgreSQL run skips it.
@pytest.mark.sqlite_only
@pytest.mark.parametrize(("args", "forbidden"), [
    (("devices", "list", "--json"), HEAVY | ORM),
    (("devices", "list", "roastery"), HEAVY | ORM),
    (("bundle", "list", "--json"), HEAVY | ORM),
    (("bundle", "list"), HEAVY | ORM),
    (("runs", "list", "--json"), HEAVY | ORM),
    (("runs", "list"), HEAVY | ORM),
    (("dataset", "list", "--json"), HEAVY | ORM),
    (("bundle", "show", "fc", "--json"), HEAVY),
    (("jobs", "list", "--json"), HEAVY),
    (("schedules", "list", "--json"), HEAVY),
])
def test_light_commands_import_no_heavy_library(fleet: Path, tmp_path: Path,
                                                args: tuple[str, ...],
                                                forbidden: set[str]) -> None:
    modules, payload = imported_by(fleet, tmp_path, *args)
    assert payload, "the command printed nothing: the check would prove nothing"
    assert modules & forbidden == set(), \
        f"edgefleet {' '.join(args)} imported {modules & forbidden}"


def test_the_wrapper_sees_a_heavy_import(fleet: Path, tmp_path: Path) -> None:
    """The check can fail: `bundle build` parses a model, so it imports onnx."""
    model = make_demo_classifier(tmp_path / "other" / "model.onnx")
    modules, payload = imported_by(fleet, tmp_path, "bundle", "build", str(model.parent),
                                   "--name", "other", "--json")
    assert payload["name"] == "other"
    assert {"onnx", "onnxruntime", "numpy"} <= modules


def test_alembic_runs_only_when_the_schema_is_not_current(home: Path, tmp_path: Path) -> None:
    """A new home is migrated by the first command (alembic imported); the next command finds
    the schema at head with one SELECT and never imports alembic."""
    assert not home.exists()
    first, tokens = imported_by(home, tmp_path, "tokens", "list", "--json")
    assert tokens == [] and "alembic" in first
    again, _ = imported_by(home, tmp_path, "tokens", "list", "--json")
    assert "alembic" not in again
