"""Fixtures: the real zipapp, built once per session, and a device root with a space in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.build import build_zipapp


@pytest.fixture(scope="session")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_zipapp(tmp_path_factory.mktemp("agent") / "edgefleet-agent.pyz").path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "device root"
