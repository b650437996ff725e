"""Migrations as an explicit, locked step (issue 14): `edgefleet db upgrade|current`, N real
processes started at once on an empty database, a database newer than the code refused.

Each scenario runs on an empty SQLite file and on an empty database of the real PostgreSQL
server (tests/pg_server.py; started on demand, also on the SQLite run), in real processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator.core.dbfile import head_revision
from tests import pg_server

CLI_ARGV = [sys.executable, "-c", "from orchestrator.cli.main import main; main()"]
BACKENDS = ["sqlite", "postgresql"]
PASSWORD = "s3cret-not-for-logs"  # trust auth ignores it; it must never be printed


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database's URL (a SQLite file not yet created, or a new PostgreSQL database
    reached with a password in its URL)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet' / 'edgefleet.db'}"
    if not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        pytest.skip("no PostgreSQL server installed (scripts/test.sh installs Debian's)")
    server: pg_server.PgServer = request.getfixturevalue("pg")
    url = server.create_database(empty=True)
    return url.replace(f"{pg_server.USER}@", f"{pg_server.USER}:{PASSWORD}@")


def spawn(url: str, home: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, EDGEFLEET_HOME=str(home), DATABASE_URL=url)
    return subprocess.Popen([*CLI_ARGV, *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(url: str, home: Path, *args: str) -> tuple[int, str, str]:
    proc = spawn(url, home, *args)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def revision(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def test_processes_started_at_once_on_an_empty_database_all_come_up(
        empty_url: str, tmp_path: Path) -> None:
    """Four commands that open the database as serve and worker do (get_engine): unlocked,
    all but one crashed on the tables the first was creating."""
    procs = [spawn(empty_url, tmp_path / f"home{i}", "tokens", "list", "--json")
             for i in range(4)]
    results = [(p.wait(timeout=180), p.stdout.read(), p.stderr.read())  # type: ignore[union-attr]
               for p in procs]
    for proc in procs:
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert [code for code, _, _ in results] == [0, 0, 0, 0], results
    assert all(json.loads(out) == [] for _, out, _ in results)
    assert revision(empty_url) == head_revision()


def test_db_upgrade_and_current(empty_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    code, out, err = run(empty_url, home, "db", "current", "--json")
    assert code == 1, err
    before = json.loads(out)
    assert (before["current"], before["head"], before["state"]) == (None, head_revision(),
                                                                    "empty")
    assert "db upgrade" in before["next_step"]

    code, out, err = run(empty_url, home, "db", "upgrade", "--json")
    assert code == 0, err
    assert json.loads(out) == {"url": before["url"], "from": None, "to": head_revision(),
                               "upgraded": True}
    code, out, _ = run(empty_url, home, "db", "upgrade")
    assert code == 0 and f"already at {head_revision()}, nothing to do" in out

    code, out, err = run(empty_url, home, "db", "current", "--json")
    assert code == 0, err
    assert json.loads(out)["state"] == "current"
    code, out, _ = run(empty_url, home, "db", "current")
    assert code == 0 and "current" in out and head_revision() in out  # type: ignore[operator]
    assert PASSWORD not in before["url"] and PASSWORD not in out


def test_code_older_than_the_schema_refuses_naming_both_revisions(
        empty_url: str, tmp_path: Path) -> None:
    """A DB a newer release migrated: every command, `serve` included (it opens the DB the
    same way), refuses with both revisions and what to do; `db upgrade` does not touch it."""
    home = tmp_path / "home"
    assert run(empty_url, home, "db", "upgrade")[0] == 0
    engine = sa.create_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0042_future'"))
    engine.dispose()

    code, out, err = run(empty_url, home, "tokens", "list")
    assert code == 2, (out, err)
    assert "Traceback" not in err
    assert "0042_future" in err and str(head_revision()) in err
    assert "Upgrade EdgeFleet" in " ".join(err.split())
    assert PASSWORD not in err

    code, _, err = run(empty_url, home, "serve", "--host", "127.0.0.1", "--port", "0")
    assert code == 2 and "0042_future" in err and "Traceback" not in err  # refused, not served

    code, out, _ = run(empty_url, home, "db", "upgrade", "--json")
    assert code == 2 and "0042_future" in json.loads(out)["error"]
    code, out, _ = run(empty_url, home, "db", "current", "--json")
    assert code == 1 and json.loads(out)["state"] == "ahead"
    assert revision(empty_url) == "0042_future"  # untouched


def test_an_unreachable_database_is_named_without_its_password(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a loopback port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql+psycopg://fleet:{PASSWORD}@127.0.0.1:{port}/edgefleet"
    code, _, err = run(url, tmp_path / "home", "tokens", "list")
    assert code == 2 and "Traceback" not in err
    flat = " ".join(err.split())
    assert f"cannot open the database postgresql+psycopg://fleet:***@127.0.0.1:{port}" in flat
    assert "DATABASE_URL" in flat and PASSWORD not in err
