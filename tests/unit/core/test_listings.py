"""`devices list` and `bundle list` read SQLite with the stdlib when they can
(orchestrator.core.listings): the same JSON as the ORM path, and the ORM path whenever the fast
one
cannot be sure (no DB yet, another database, a schema not at head)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlmodel import select

from orchestrator.artifacts.bundles import list_bundles
from orchestrator.artifacts.datasets import list_datasets
from orchestrator.core import listings
from orchestrator.core.config import Settings
from orchestrator.core.db import alembic_config, current_revision, get_engine, session_scope
from orchestrator.core.dbfile import env_db_url, head_revision, open_current, sqlite_file
from orchestrator.core.errors import NotFoundError
from orchestrator.core.models import Bundle, Dataset, Device, Job, Run
from orchestrator.inventory.devices import device_public, select_devices
from orchestrator.measure.runs import list_runs, run_public

FACTS = {"pi_model": "Raspberry Pi 5 Model B Rev 1.0", "arch": "aarch64", "cores": 4,
         "ram_mb": 8064, "onnxruntime": {"version": "1.20.1"},
         "sensors": {"temp_c": 77.3, "throttled_hex": "0xe0000",
                     "throttle_flags": {"soft_temp_limit_occurred": True}}}

# The stdlib read path exists only for a SQLite file: the PostgreSQL run skips it.
pytestmark = pytest.mark.sqlite_only


def populate(settings: Settings) -> None:
    """Devices and bundles with every kind of column value the listings print."""
    seen = datetime(2026, 11, 21, 9, 30, 0, 250000, tzinfo=UTC)
    with session_scope(settings) as session:
        session.add(Device(name="pi5-b", address="10.0.0.12", groups=["roastery", "line1"],
                           labels={"cooler": "none", "psu": "27W"}, facts=FACTS,
                           simulated=True, agent_version="0.1.0", active_bundle="fc@2",
                           active_digest="b" * 64, last_seen=seen, source="inv.yml:12",
                           env={"SECRET": "x"}, key_file="/keys/id"))
        session.add(Device(name="pi4-lab", address="10.0.0.4", port=2222, groups=["lab"],
                           last_seen=datetime(2026, 11, 21, 9, 0, 0, tzinfo=UTC)))
        session.add(Device(name="pi5-a", address="10.0.0.11", groups=["roastery"],
                           connection="local"))
        for name, version, extra in (("fc", "2", {}), ("asr", "1", {}), ("fc", "1", {}),
                                     ("fc", "1-int8", {"parent": {"name": "fc"},
                                                       "quantization": {"size_ratio": 3.9}})):
            manifest = {"name": name, "version": version, "min_onnxruntime": "1.17",
                        "model": {"path": "model.onnx", "opset": 17}, "files": [],
                        "source": {"type": "file"}, **extra}
            session.add(Bundle(name=name, version=version, digest=f"{name}{version}".ljust(64,
                                                                                          "0"),
                               size_bytes=123, precision="int8" if extra else "fp32",
                               manifest_json=json.dumps(manifest)))
        session.add(Job(id=7, kind="bench", targets="roastery", state="cancelled",
                        error="cancelled by ana: bench stopped on pi5-b"))
        for run_id, kind, state, job in ((1, "bench", "succeeded", None),
                                         (2, "eval", "running", None),
                                         (3, "bench", "interrupted", 7),
                                         (4, "bench", "interrupted", None)):
            session.add(Run(id=run_id, kind=kind, bundle_name="fc", bundle_version="2",
                            bundle_digest="b" * 64, targets="roastery", created_by="ana",
                            state=state, job_id=job, params={"threads": [1, 2], "shapes": {}},
                            finished_at=None if state == "running" else seen))
        for name, version in (("roaster-eval", "2"), ("asr-eval", "1"), ("roaster-eval", "1")):
            samples = [{"path": f"s{i}.wav", "label": "crack" if i % 3 else "none"}
                       for i in range(5)]
            session.add(Dataset(name=name, version=version, digest=f"d{name}{version}".ljust(64,
                                                                                           "0"),
                                format="audio", sampling_rate=16000, samples=5,
                                labels=["none", "crack"], size_bytes=4096,
                                manifest_json=json.dumps({"samples": samples, "files": [],
                                                          "source": {"type": "folder"}})))


@pytest.fixture
def settings(home: Path) -> Settings:
    settings = Settings(home=home)
    populate(settings)
    return settings


def orm_devices(settings: Settings, pattern: str) -> list[dict[str, object]]:
    with session_scope(settings) as session:
        return [device_public(d) for d in select_devices(session, pattern)]


@pytest.mark.parametrize("pattern", ["all", "roastery", "pi5-*:!pi5-a", "pi5-b,pi4-lab"])
def test_devices_are_read_as_the_orm_reads_them(settings: Settings, pattern: str) -> None:
    fast = listings.devices(pattern)
    assert fast is not None
    assert fast == orm_devices(settings, pattern)
    assert json.dumps(fast) == json.dumps(orm_devices(settings, pattern))  # order, types


def test_bundles_are_read_as_the_orm_reads_them(settings: Settings) -> None:
    fast = listings.bundles()
    with session_scope(settings) as session:
        orm = [listings.bundle_public(b) for b in list_bundles(session)]
    assert fast is not None and len(fast) == 4
    assert json.dumps(fast) == json.dumps(orm)


def test_runs_and_datasets_are_read_as_the_orm_reads_them(settings: Settings) -> None:
    fast_runs, fast_datasets = listings.runs(), listings.datasets()
    with session_scope(settings) as session:
        orm_runs = [run_public(r) for r in list_runs(session)]
        orm_datasets = [listings.dataset_public(d) for d in list_datasets(session)]
    assert fast_runs is not None and [r["id"] for r in fast_runs] == [4, 3, 2, 1]  # newest first
    assert fast_runs[1]["state_reason"] == "job 7: cancelled by ana: bench stopped on pi5-b"
    assert fast_runs[0]["state_reason"].startswith("it stopped before it finished")
    assert json.dumps(fast_runs) == json.dumps(orm_runs)
    assert fast_datasets is not None and len(fast_datasets) == 3
    assert fast_datasets[0]["per_label"] == {"none": 2, "crack": 3}
    assert json.dumps(fast_datasets) == json.dumps(orm_datasets)
    assert listings.runs(limit=1) == fast_runs[:1]


def test_no_devices_and_a_bad_pattern_fail_the_same_way(home: Path) -> None:
    settings = Settings(home=home)
    get_engine(settings)
    with pytest.raises(NotFoundError) as fast:
        listings.devices("all")
    with pytest.raises(NotFoundError) as orm:
        orm_devices(settings, "all")
    assert str(fast.value) == str(orm.value)
    populate(settings)
    with pytest.raises(Exception) as fast_bad:
        listings.devices("nope")
    with pytest.raises(Exception) as orm_bad:
        orm_devices(settings, "nope")
    assert (type(fast_bad.value), str(fast_bad.value)) == (type(orm_bad.value),
                                                            str(orm_bad.value))


def test_no_db_yet_takes_the_orm_path(home: Path) -> None:
    assert listings.devices("all") is None and listings.bundles() is None
    assert not home.exists()  # the fast path never creates anything


def test_a_schema_not_at_head_takes_the_orm_path_which_upgrades(settings: Settings) -> None:
    engine = get_engine(settings)
    command.downgrade(alembic_config(settings.db_url), "-1")
    assert open_current() is None and listings.bundles() is None
    # A new process (this one's engine was checked once already): the ORM path migrates first.
    result = subprocess.run([sys.executable, "-m", "orchestrator", "bundle", "list", "--json"],
                            capture_output=True, text=True, timeout=120, check=True)
    listed = json.loads(result.stdout)
    assert len(listed) == 4
    assert current_revision(engine) == head_revision()
    assert listings.bundles() == listed


def test_another_database_takes_the_orm_path(settings: Settings,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://fleet@db/edgefleet")
    assert listings.devices("all") is None
    assert sqlite_file("sqlite://") is None and sqlite_file("sqlite:///x.db?mode=ro") is None
    assert sqlite_file(f"sqlite:///{settings.home}/e.db") == settings.home / "e.db"


@pytest.mark.parametrize("env", [
    {},
    {"EDGEFLEET_HOME": "/srv/fleet"},
    {"edgefleet_home": "relative/home"},
    {"EDGEFLEET_HOME": ""},
    {"XDG_DATA_HOME": "/xdg"},
    {"DATABASE_URL": "sqlite:////var/lib/ef.db", "EDGEFLEET_HOME": "/ignored"},
    {"database_url": "postgresql://u@h/db"},
    {"DATABASE_URL": "", "EDGEFLEET_HOME": "/srv/fleet"},
])
def test_the_db_url_is_read_from_the_environment_as_settings_read_it(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("EDGEFLEET_HOME", "DATABASE_URL", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert env_db_url() == Settings().db_url


def test_columns_converted_by_declared_type_match_the_models(settings: Settings) -> None:
    """JSON, BOOLEAN and DATETIME columns come back as the ORM returns them: a new column of
    another kind that needs converting would show up here as a type mismatch."""
    conn = open_current()
    assert conn is not None
    try:
        rows = listings._rows(conn, "device", "name")  # noqa: SLF001
    finally:
        conn.close()
    with session_scope(settings) as session:
        orm = list(session.exec(select(Device).order_by(Device.name)))
    for fast, model in zip(rows, orm, strict=True):
        for column in Device.__table__.columns:
            assert getattr(fast, column.name) == getattr(model, column.name), column.name
            assert type(getattr(fast, column.name)) is type(getattr(model, column.name)), \
                column.name
