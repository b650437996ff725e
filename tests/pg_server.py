"""A real, throwaway PostgreSQL server for the tests (issue 14): Debian's binaries, a cluster in
a temp dir, owned and run by the ``postgres`` user (the server refuses to run as root), on a
free loopback port and a socket in its own dir; stopped and deleted at the end of the session.

Tests choose the backend with ``EDGEFLEET_TEST_DATABASE=postgresql`` (tests/conftest.py): then
every test's home gets a fresh database on this server, cloned from a template that migrations
brought to head once (``CREATE DATABASE ... TEMPLATE``: ~30 ms instead of ~1 s of migrations).
Tests that need an empty database ask for one (:meth:`PgServer.create_database`).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATE = "edgefleet_template"
USER = "postgres"


def backend() -> str:
    """``sqlite`` (the default run) or ``postgresql``."""
    value = os.environ.get("EDGEFLEET_TEST_DATABASE", "sqlite").strip().lower() or "sqlite"
    if value not in {"sqlite", "postgresql"}:
        raise RuntimeError(f"EDGEFLEET_TEST_DATABASE={value!r}: use sqlite or postgresql")
    return value


def _bindir() -> Path:
    """Debian's server binaries (postgresql-NN): the newest installed version."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                      else 0)
    if not versions:
        raise RuntimeError("no PostgreSQL server under /usr/lib/postgresql: install Debian's "
                           "`postgresql` (apt-get install -y postgresql; scripts/test.sh does)")
    return versions[-1].parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a server binary as the ``postgres`` user (root itself when we are it, via runuser)."""
    cmd = [str(a) for a in args]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", USER, "--", *cmd]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n"
                           f"{result.stderr}")
    return result


@dataclass
class PgServer:
    """One running cluster; ``url(name)`` is a SQLAlchemy URL for the database ``name``."""

    root: Path
    port: int
    bindir: Path
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def url(self, name: str) -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{name}"

    def execute(self, sql: str) -> None:
        """One statement outside a transaction (CREATE/DROP DATABASE need that)."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type] - our own statements, no user input

    def create_database(self, *, empty: bool = False) -> str:
        """A new database (at head, cloned from the template; or ``empty``): its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        template = "template0" if empty else TEMPLATE
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a test's database, closing whatever connections a test left to it."""
        name = url.rsplit("/", 1)[1]
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        _as_postgres(self.bindir / "pg_ctl", "-D", self.root / "data", "-m", "immediate", "-w",
                     "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def start() -> PgServer:
    """initdb + pg_ctl start (``-w`` waits until it accepts connections), then the template
    database migrated to head by the code under test."""
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
    entry = pwd.getpwnam(USER) if os.geteuid() == 0 else None
    if entry is not None:
        os.chown(root, entry.pw_uid, entry.pw_gid)
    data = root / "data"
    _as_postgres(bindir / "initdb", "-D", data, "-U", USER, "--auth=trust", "-E", "UTF8",
                 "--no-sync", "--locale=C")
    port = _free_port()
    options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} "
               "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
               "-c max_connections=300")
    _as_postgres(bindir / "pg_ctl", "-D", data, "-l", root / "server.log", "-o", options, "-w",
                 "-t", "60", "start")
    server = PgServer(root=root, port=port, bindir=bindir)
    server.execute(f'CREATE DATABASE "{TEMPLATE}"')
    from orchestrator.core import db

    db.upgrade(server.url(TEMPLATE))  # its engine is disposed: a template must have no users
    return server
