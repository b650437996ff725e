"""The zipapp is deterministic, follows its sources, ships only runtime modules and runs."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
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


def test_first_run_makes_a_compiled_copy_that_later_runs_import_from(tmp_path: Path) -> None:
    """zipimport compiles every module from source on every start; the entry point keeps a
    copy of the .pyz with this interpreter's bytecode next to it and imports from that."""
    built = build_zipapp(tmp_path / "agent" / "edgefleet-agent.pyz")
    cache = built.path.parent / "cache"
    assert not cache.exists()
    assert run_agent(built.path, tmp_path / "root", "status").data["active"] is None
    copy = cache / f"agent-{built.sha256[:16]}-{sys.implementation.cache_tag}.zip"
    assert [p.name for p in cache.iterdir()] == [copy.name]
    with zipfile.ZipFile(copy) as archive, zipfile.ZipFile(built.path) as original:
        names = set(archive.namelist())
        assert set(original.namelist()) <= names  # the sources stay, for tracebacks
        assert {n + "c" for n in original.namelist() if n.startswith("agent/")} <= names
    # What a second start imports: the agent package from the copy, as bytecode.
    probe = ("import os, runpy, sys\n"
             "def stay(code):\n    raise SystemExit(code)\n"
             "os._exit = stay  # the entry point ends with os._exit; this probe carries on\n"
             "sys.argv = [sys.argv[1], '--root=' + sys.argv[2], 'status']\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "import agent.cli\nsys.stderr.write(agent.cli.__file__)\n")
    done = subprocess.run([sys.executable, "-c", probe, str(built.path), str(tmp_path / "root")],
                          capture_output=True, text=True, check=True)
    assert done.stderr == str(copy / "agent" / "cli.pyc")
    assert [p.name for p in cache.iterdir()] == [copy.name]  # reused, not rebuilt


def test_no_compiled_copy_when_it_cannot_be_written_and_old_copies_are_pruned(
        tmp_path: Path) -> None:
    built = build_zipapp(tmp_path / "agent" / "edgefleet-agent.pyz")
    cache = built.path.parent / "cache"
    cache.write_text("not a directory")  # e.g. a read-only or full disk: run from source
    assert run_agent(built.path, tmp_path / "root", "status").data["active"] is None
    cache.unlink()
    cache.mkdir()
    stale = [cache / f"agent-{n:016x}-cpython-0.zip" for n in range(4)]
    for age, path in enumerate(stale):
        path.write_bytes(b"old")
        os.utime(path, (1_000_000 + age, 1_000_000 + age))
    # What a start SIGKILLed while it wrote its copy leaves: .tmp-<its pid>-...; a start
    # still writing one (a live pid) keeps its file.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = cache / f".tmp-{dead.pid}-{built.sha256[:16]}.zip"
    writing = cache / f".tmp-{os.getpid()}-{built.sha256[:16]}.zip"
    for path in (killed, writing):
        path.write_bytes(b"half a copy")
    run_agent(built.path, tmp_path / "root", "status")
    # The new copy and the two newest old ones stay (an older agent may still be running).
    new = f"agent-{built.sha256[:16]}-{sys.implementation.cache_tag}.zip"
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [p.name for p in stale[2:]] + [new, writing.name])


def test_a_flipped_byte_in_the_compiled_copy_is_caught_and_the_copy_made_again(
        tmp_path: Path) -> None:
    """zipimport checks no CRC and the .pyc files are unchecked: one flipped bit in the copy
    made every later command fail (the same .pyz names the same copy, so it was reused for
    good). The copy's own CRC-32 is checked at each start; a bad copy is made again."""
    built = build_zipapp(tmp_path / "agent" / "edgefleet-agent.pyz")
    assert run_agent(built.path, tmp_path / "root", "status").ok
    copy = built.path.parent / "cache" / f"agent-{built.sha256[:16]}-" \
                                         f"{sys.implementation.cache_tag}.zip"
    good = copy.read_bytes()
    with zipfile.ZipFile(copy) as archive:
        info = archive.getinfo("agent/cli.pyc")
    flipped = bytearray(good)
    where = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    flipped[where] ^= 0x10  # inside cli.pyc's code object
    copy.write_bytes(bytes(flipped))
    again = run_agent(built.path, tmp_path / "root", "status")
    assert again.ok and again.data["active"] is None
    remade = copy.read_bytes()
    assert remade != bytes(flipped)  # made again (marshal's bytes may differ from run to run)
    with zipfile.ZipFile(copy) as archive:
        assert archive.testzip() is None  # every member's CRC matches
        assert archive.comment.startswith(b"edgefleet-crc32:")
