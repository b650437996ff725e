"""The zipapp is deterministic, follows its sources, ships only runtime modules and runs."""

from __future__ import annotations

import hashlib
import shutil
import zipapp
import zipfile
from pathlib import Path

from agent_helpers import REPO, run_agent

import agent
from agent.build import build_zipapp


def test_same_sources_same_bytes(tmp_path: Path) -> None:
    first = build_zipapp(tmp_path / "a" / "edgefleet-agent.pyz")
    second = build_zipapp(tmp_path / "b" / "edgefleet-agent.pyz")
    assert first.sha256 == second.sha256
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.sha256 == hashlib.sha256(first.path.read_bytes()).hexdigest()
    assert first.version == agent.__version__
    assert first.path.stat().st_mode & 0o111  # executable
    assert list(tmp_path.joinpath("a").iterdir()) == [first.path]  # no temp file left behind


def test_layout_and_contents(tmp_path: Path) -> None:
    built = build_zipapp(tmp_path / "edgefleet-agent.pyz")
    assert built.path.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert zipapp.get_interpreter(str(built.path)) == "/usr/bin/env python3"
    with zipfile.ZipFile(built.path) as archive:
        infos = archive.infolist()
        names = [i.filename for i in infos]
        assert names == sorted(names)
        assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
        assert archive.read("agent/protocol.py") == (REPO / "agent/protocol.py").read_bytes()
    expected = {"agent/" + p.name for p in (REPO / "agent").glob("*.py")} - {"agent/build.py"}
    assert set(names) == expected | {"__main__.py"}


def test_sha_follows_sources_and_ignores_build_junk(tmp_path: Path) -> None:
    package = tmp_path / "src" / "agent"
    shutil.copytree(REPO / "agent", package,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    base = build_zipapp(tmp_path / "base.pyz", package_dir=package)
    assert base.sha256 == build_zipapp(tmp_path / "repo.pyz").sha256

    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"junk")
    (package / "tests").mkdir()
    (package / "tests" / "test_x.py").write_text("assert False\n")
    (package / "build.py").write_text("# changed build script\n")
    assert build_zipapp(tmp_path / "junk.pyz", package_dir=package).sha256 == base.sha256

    with (package / "facts.py").open("a") as handle:
        handle.write("\n# a change\n")
    changed = build_zipapp(tmp_path / "changed.pyz", package_dir=package)
    assert changed.sha256 != base.sha256


def test_the_built_app_runs(tmp_path: Path) -> None:
    built = build_zipapp(tmp_path / "edgefleet-agent.pyz")
    data = run_agent(built.path, tmp_path / "root", "status").data
    assert data["active"] is None and data["history"] == []
