"""A device that answers NaN or Infinity (not JSON, RFC 8259, though Python's json reads and
writes them): a broken sensor driver, a hostile agent. Before: the value went into the
device's facts as ``NaN``, SQLite's JSON functions then called the column malformed, and the
Fleet page and every sorted device list answered 500 for everyone.

Real parts: the agent protocol's parser on the device's own line, the telemetry service's
store into real SQLite through the migrations, the real app.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from fastapi.testclient import TestClient
from sqlmodel import select

from agent.protocol import parse_lines
from orchestrator.core.config import Settings
from orchestrator.core.db import json_text, session_scope
from orchestrator.core.models import Device, TelemetrySnapshot
from orchestrator.fleet.telemetry import store_snapshot
from web.app import create_app

LINE = ('{"v":1,"type":"result","ok":true,"command":"telemetry","data":{"sensors":'
        '{"temp_c":NaN,"freq_mhz":Infinity,"throttled":0,"throttle_flags":{}},'
        '"load_1m":-Infinity,"mem_available_mb":3000,"disk_free_bytes":1000}}')


def test_non_finite_numbers_from_a_device_are_unknown_and_every_page_still_answers(
        home: Path) -> None:
    (answer,) = parse_lines([LINE])
    data = answer["data"]
    assert data["sensors"]["temp_c"] is None and data["sensors"]["freq_mhz"] is None
    assert data["load_1m"] is None
    settings = Settings()
    with session_scope(settings) as session:
        for name in ("pi-nan", "pi-ok"):
            session.add(Device(name=name, address="127.0.0.1"))
    store_snapshot(settings, "pi-nan", data)
    # What the parser no longer lets through, straight from Python (an older agent, a path
    # not yet written): the store writes null, never the non-JSON token.
    store_snapshot(settings, "pi-ok", {"sensors": {"temp_c": 51.0, "extra": [math.nan]},
                                       "load_1m": math.inf})
    with session_scope(settings) as session:
        facts = {d.name: d.facts for d in session.exec(select(Device)).all()}
        assert len(session.exec(select(TelemetrySnapshot)).all()) == 2
    assert facts["pi-ok"]["sensors"]["extra"] == [None]
    with TestClient(create_app(settings, run_jobs=False), base_url="http://localhost") as web:
        for path in ("/", "/?sort=temp", "/api/devices?sort=temp", "/api/devices"):
            response = web.get(path)
            assert response.status_code == 200, (path, response.text[:300])
        listed = {d["name"]: d for d in web.get("/api/devices?sort=temp").json()}
    assert set(listed) == {"pi-nan", "pi-ok"}


def test_json_columns_never_hold_nan() -> None:
    assert json_text({"a": [1.5, math.nan, {"b": -math.inf}], "c": "NaN"}) == (
        '{"a": [1.5, null, {"b": null}], "c": "NaN"}')
    assert json.loads(json_text([0.1, 2])) == [0.1, 2]  # the common case, unchanged
