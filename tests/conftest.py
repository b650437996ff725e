"""Shared fixtures: an isolated EDGEFLEET_HOME (and, with EDGEFLEET_TEST_DATABASE=postgresql, a
fresh database on a real PostgreSQL server: tests/pg_server.py) and an in-process ``edgefleet``
runner."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli.main import get_app
from tests import pg_server
from tests.webhook_receiver import receiver  # noqa: F401 - a real webhook receiver, by name


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


class Cli:
    """Runs ``edgefleet ...`` in-process against the test's own EDGEFLEET_HOME."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.runner = CliRunner()

    def __call__(self, *args: str, expect: int | None = 0) -> CliResult:
        result = self.runner.invoke(get_app(), [str(a) for a in args], catch_exceptions=False)
        out = CliResult(result.exit_code, result.stdout, result.stderr)
        if expect is not None and result.exit_code != expect:
            raise AssertionError(
                f"edgefleet {' '.join(map(str, args))} exited {result.exit_code}, "
                f"expected {expect}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
            )
        return out


@pytest.fixture(scope="session")
def pg() -> Iterator[pg_server.PgServer]:
    """The session's PostgreSQL server (started on first use, stopped and deleted at the end)."""
    server = pg_server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def database_url(request: pytest.FixtureRequest,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[str | None]:
    """Every test's database. On SQLite (the default run) ``DATABASE_URL`` is removed, so each
    home has its own file; with EDGEFLEET_TEST_DATABASE=postgresql it names a fresh database
    on the session's server (cloned from the template at head, dropped after the test), which
    every Settings the test makes, and every process it starts, inherits."""
    if pg_server.backend() != "postgresql":
        monkeypatch.delenv("DATABASE_URL", raising=False)
        yield None
        return
    server: pg_server.PgServer = request.getfixturevalue("pg")
    url = server.create_database()
    monkeypatch.setenv("DATABASE_URL", url)
    try:
        yield url
    finally:
        from orchestrator.core import db

        db.forget_engines(keep=db.engine_urls() - {url})
        server.drop_database(url)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "edgefleet-home"
    monkeypatch.setenv("EDGEFLEET_HOME", str(path))
    return path


@pytest.fixture
def cli(home: Path) -> Cli:
    return Cli(home)


@pytest.fixture(scope="session")
def demo_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of the demo's trained classifier for the whole test session (training takes
    ~10 s; the generator is deterministic, so every test gets the same bytes)."""
    return tmp_path_factory.mktemp("demo-model-cache")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the PostgreSQL run, skip the tests marked ``sqlite_only`` (they read the SQLite
    file itself, or need two homes with two databases); on SQLite, those marked
    ``postgresql_only`` (several workers on procrastinate)."""
    if pg_server.backend() != "postgresql":
        only = pytest.mark.skip(reason="PostgreSQL only (EDGEFLEET_TEST_DATABASE=postgresql)")
        for item in items:
            if item.get_closest_marker("postgresql_only"):
                item.add_marker(only)
        return
    skip = pytest.mark.skip(reason="SQLite-specific (EDGEFLEET_TEST_DATABASE=postgresql)")
    for item in items:
        if item.get_closest_marker("sqlite_only"):
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item, so fixtures can tell at teardown that the test
    failed (and leave a screenshot and the server logs behind)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(autouse=True)
def _close_test_databases() -> Iterator[None]:
    """Each test's databases are closed after it (their engines' pooled connections would
    otherwise pile up: over 1024 descriptors by the end of the suite). Engines that existed
    before the test (a module-scoped fixture's) are kept."""
    from orchestrator.core import db

    before = db.engine_urls()
    yield
    db.forget_engines(keep=before)
