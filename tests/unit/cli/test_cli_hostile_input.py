"""What a careless or hostile user typed, or a broken environment, gets one clear line (or
``{"error": ...}`` with ``--json``), exit 2, and never a traceback: found by a review that ran
~90 such commands (session 16). Each case is the real fault: a corrupt database file, a full
tmpfs, a file name that is not UTF-8, a PostgreSQL port nothing listens on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.demo.model import make_demo_classifier
from tests.conftest import Cli
from tests.small_disk import mounted_tmpfs

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "inventory" / "example.yml"


def refused(cli: Cli, *args: str | Path) -> str:
    """The command's error, checked to be the same one line with and without --json."""
    as_json = cli(*args, "--json", expect=2)
    error = as_json.json["error"]
    human = cli(*args, expect=2)
    text = human.stdout + human.stderr
    assert "Traceback" not in text + as_json.stderr, text
    assert " ".join(text.split()).startswith("error: "), text
    return error


@pytest.fixture
def bundle(cli: Cli, tmp_path: Path) -> Path:
    cli("inventory", "sync", EXAMPLE)
    model = make_demo_classifier(tmp_path / "model" / "model.onnx")
    cli("bundle", "build", model.parent, "--name", "fc")
    return model


def test_a_corrupt_database_file_is_named_with_what_to_do(cli: Cli, home: Path,
                                                          database_url: str | None) -> None:
    if database_url is not None:
        pytest.skip("the SQLite file's own fault (the PostgreSQL run has no file)")
    home.mkdir(parents=True, exist_ok=True)
    (home / "edgefleet.db").write_bytes(b"this is not a database, it is a note" * 200)
    for args in (["jobs", "list"], ["devices", "list"], ["db", "current"]):
        error = refused(cli, *args)
        assert f"{home / 'edgefleet.db'} is not a readable SQLite database" in error, error
        assert "move it aside" in error


def test_a_database_url_that_is_not_one_is_named_without_its_password(
        cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://bob:s3cret@db.example:notaport/e")
    error = refused(cli, "jobs", "list")
    assert "is not a database URL" in error and "s3cret" not in error
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://bob:s3cret@127.0.0.1:1/edge")
    for args in (["db", "current"], ["db", "upgrade"]):
        error = refused(cli, *args)
        assert "cannot open the database" in error and "s3cret" not in error, error


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs."""
    with mounted_tmpfs(tmp_path / "small-disk", "2m") as mount:
        yield mount


def test_a_full_disk_under_the_home_is_named(cli: Cli, tmp_path: Path, small_disk: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             database_url: str | None) -> None:
    from orchestrator.demo.model import make_large_model

    home = small_disk / "home"
    monkeypatch.setenv("EDGEFLEET_HOME", str(home))
    folder = tmp_path / "big"
    folder.mkdir()
    make_large_model(folder / "model.onnx", 3)  # 3 MiB of weights: more than the disk
    rows = 3 * 1024 * 1024 // (64 * 4)
    error = refused(cli, "bundle", "build", folder, "--name", "big", "--shape",
                    f"x=1x{rows}")
    assert "No space left on device" in error and "free space on that disk" in error, error
    assert cli("bundle", "list", "--json").json == []  # nothing half-registered


def test_names_and_texts_that_are_not_utf8(cli: Cli, bundle: Path, tmp_path: Path) -> None:
    folder = bundle.parent
    (folder / os.fsdecode(b"notes-\xff.txt")).write_text("x")
    error = refused(cli, "bundle", "build", folder, "--name", "fc2")
    assert "file name is not valid UTF-8" in error and "\\udcff" in error, error
    (folder / os.fsdecode(b"notes-\xff.txt")).unlink()
    profile = tmp_path / "profile.yml"
    profile.write_bytes(b"window_s: 1\nhop_s: \xff\n")
    error = refused(cli, "bundle", "build", folder, "--name", "fc", "--streaming-profile",
                    profile)
    assert f"{profile}: the streaming profile is not UTF-8 text" in error, error


@pytest.mark.parametrize(("args", "message"), [
    (["bench", "fc", "all", "--input", "input=nan"], "--input value 'nan' is not a finite"),
    (["bench", "fc", "all", "--input", "input=inf"], "--input value 'inf' is not a finite"),
    (["bundle", "show", "fc@"], "ends in '@' with no version"),
    (["push", "fc@", "all"], "ends in '@' with no version"),
    (["schedules", "add", "bench", "all", "--bundle", "fc", "--at", "2020-01-01 03:00"],
     "time 2020-01-01 03:00 UTC has passed"),
    # Silently ignored without a baseline, a CI job believed itself gated.
    (["bench", "fc", "all", "--max-regression", "2%"], "--max-regression: only with --baseline"),
    (["bench", "fc", "all", "--include-invalid"], "--include-invalid: only with --baseline"),
])
def test_values_that_would_do_the_wrong_thing_are_refused(
        cli: Cli, bundle: Path, args: list[str], message: str) -> None:
    assert message in refused(cli, *args)
    assert cli("jobs", "list", "--json").json == []
    assert cli("schedules", "list", "--json").json == []


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_a_timeout_that_is_not_a_duration_is_a_usage_error(cli: Cli, value: str) -> None:
    """telemetry, devices trust and agent install took --timeout -1 ("no output for -1s")."""
    for command in (["telemetry", "all"], ["devices", "trust", "all"],
                    ["agent", "install", "all"]):
        result = cli(*command, "--timeout", value, expect=2)
        assert "is not a number of seconds above 0" in result.stderr, (command, result.stderr)


def test_every_job_kind_can_be_listed_and_workers_are_at_least_one(cli: Cli) -> None:
    for kind in ("push", "bench", "eval", "rollback", "verify", "telemetry"):
        assert cli("jobs", "list", "--kind", kind, "--json").json == []
    for command in (["serve", "--no-worker"], ["worker"]):
        result = cli(*command, "--workers", "0", expect=2)
        assert "'--workers'" in result.stderr and "Traceback" not in result.stderr


def test_a_junit_path_that_cannot_be_written_is_refused_before_the_benchmark(
        cli: Cli, bundle: Path, tmp_path: Path) -> None:
    """It was written after the whole gated run: a traceback, exit 1, the report lost."""
    (tmp_path / "afile").write_text("x")
    for path, message in [(tmp_path / "afile" / "gate.xml", "does not exist"),
                          (tmp_path, "is a folder")]:
        error = refused(cli, "bench", "fc", "all", "--baseline", "fc", "--junit", path)
        assert message in error, error
    assert "give --baseline" in refused(cli, "bench", "fc", "all", "--junit",
                                        tmp_path / "gate.xml")
    assert cli("jobs", "list", "--json").json == []


def test_a_port_another_server_holds_is_refused_before_the_banner(cli: Cli) -> None:
    """uvicorn printed its error after the banner and exited 3 (the README promises 2)."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        result = cli("serve", "--no-worker", "--port", port, expect=2)
    error = " ".join(result.stderr.split())
    assert f"cannot listen on 127.0.0.1 port {port}" in error and "--port N" in error, error
    assert "EdgeFleet on http" not in error and "Traceback" not in error


@pytest.mark.parametrize("as_json", [False, True])
def test_a_stdout_that_cannot_be_written_is_named_as_such(cli: Cli, as_json: bool) -> None:
    """``> /dev/full``: with --json, a traceback (the error JSON went to the same stdout);
    without, "free space on that disk (EDGEFLEET_HOME holds ...)", the wrong disk."""
    import subprocess
    import sys

    cli("inventory", "sync", EXAMPLE)
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli.main", "devices", "list",
             *(["--json"] if as_json else [])],
            stdout=full, stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr == ("error: cannot write to standard output: No space left on device "
                           "(where stdout goes: a full disk, /dev/full?)\n")


def test_an_os_error_without_a_path_gets_no_path_hint() -> None:
    from orchestrator.cli.app import os_problem

    assert os_problem(OSError(5, "Input/output error")) == "Input/output error"
    assert os_problem(OSError(5, "Input/output error", "/x")).endswith("'/x'): check the path")
