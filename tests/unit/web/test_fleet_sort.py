"""Sorting the fleet across pages (issue 17): the Fleet page and GET /api/devices sort the
whole fleet in SQL before the window is cut, so "temperature, hottest first" puts the hottest
device of the fleet on page 1 even when its name puts it on page 2.

250 local-transport devices in real SQLite through the migrations (test_pagination's
inventory); the latest telemetry is written into their facts JSON as an agent's facts call
writes it (``facts.sensors``), since that is what the page reads and sorts by.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.inventory.devices import devices_window, get_device, sync_inventory
from orchestrator.inventory.reader import load_inventory
from tests.unit.web.test_pagination import COUNT, NAMES, write_fleet
from web.app import create_app
from web.pages.fleet import PAGE_SIZE

HOTTEST = "dev-0150"  # page 2 by name
THROTTLING = "dev-0201"  # under-voltage now (page 3 by name)
ONCE = "dev-0120"  # throttled since boot only
NO_TELEMETRY = {"dev-0003", "dev-0004"}  # never reported: last in either order


def _sensors(i: int, name: str) -> dict[str, Any]:
    flags: dict[str, list[str]] = {"now": [], "since_boot": []}
    if name == THROTTLING:
        flags = {"now": ["under_voltage"], "since_boot": ["under_voltage"]}
    if name == ONCE:
        flags["since_boot"] = ["soft_temp_limit"]
    temp = 95.0 if name == HOTTEST else 40.0 + (i % 37)  # others 40..76 °C
    return {"temp_c": temp, "throttle_flags": flags}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, TestClient]]:
    base = tmp_path_factory.mktemp("sorting")
    settings = Settings(home=base / "home")
    now = datetime.now(UTC)
    with session_scope(settings) as session:
        sync_inventory(session, load_inventory(write_fleet(base)))
    with session_scope(settings) as session:
        for i, name in enumerate(NAMES):
            if name in NO_TELEMETRY:
                continue
            device = get_device(session, name)
            device.facts = {"pi_model": "Raspberry Pi 5", "sensors": _sensors(i, name)}
            device.last_seen = now - timedelta(minutes=i)
            session.add(device)
    with TestClient(create_app(settings, run_jobs=False), base_url="http://localhost") as client:
        yield settings, client


def _row_names(text: str) -> list[str]:
    return re.findall(r'<a href="/devices/(dev-\d{4})">', text)


def _hrefs(text: str, attrs: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(rf'<a {attrs}href="([^"]+)"', text)]


def test_the_service_sorts_before_it_cuts(world: tuple[Settings, TestClient]) -> None:
    settings, _ = world
    with session_scope(settings) as session:
        hot = devices_window(session, None, 0, 3, "temp", "desc")
        assert hot.devices[0].name == HOTTEST and hot.matched == COUNT
        cool = devices_window(session, None, 0, COUNT, "temp", "asc")
        assert {d.name for d in cool.devices[-2:]} == NO_TELEMETRY  # unknown last, both ways
        warm = devices_window(session, None, 0, COUNT, "temp", "desc")
        assert {d.name for d in warm.devices[-2:]} == NO_TELEMETRY
        temps = [d.facts["sensors"]["temp_c"] for d in warm.devices[:-2]]
        assert temps == sorted(temps, reverse=True)
        worst = devices_window(session, None, 0, 4, "throttle", None)  # first order: worst
        assert [d.name for d in worst.devices] == [THROTTLING, HOTTEST, ONCE, "dev-0000"]
        recent = devices_window(session, "odd", 0, 2, "status", "desc")  # pattern, then cut
        assert [d.name for d in recent.devices] == ["dev-0001", "dev-0005"]  # 3: never seen


def test_every_device_once_across_sorted_pages(world: tuple[Settings, TestClient]) -> None:
    """Ties (many devices share a temperature) are broken by name, so OFFSET pages neither
    repeat nor skip a device."""
    _, client = world
    seen = [n for page in (1, 2, 3)
            for n in _row_names(client.get(f"/?sort=temp&order=asc&page={page}").text)]
    assert sorted(seen) == NAMES


def test_hottest_device_of_page_two_comes_first(world: tuple[Settings, TestClient]) -> None:
    _, client = world
    assert HOTTEST not in _row_names(client.get("/").text)  # page 2 by name
    answer = client.get("/?sort=temp&order=desc")
    assert answer.status_code == 200
    assert _row_names(answer.text)[0] == HOTTEST
    assert '<th class="num" aria-sort="descending"><a class="sort" ' \
           'href="/?sort=temp&amp;order=asc&amp;page=1">temp</a></th>' in answer.text


def test_links_keep_sort_and_pattern(world: tuple[Settings, TestClient]) -> None:
    _, client = world
    answer = client.get("/?pattern=even&sort=temp&order=desc")
    assert _row_names(answer.text)[0] == HOTTEST
    assert _hrefs(answer.text, 'rel="next" ') == ["/?pattern=even&sort=temp&order=desc&page=2"]
    live = re.search(r'<div id="fleet-live" hx-get="([^"]+)"', answer.text)
    assert live and html.unescape(live.group(1)) == "/?pattern=even&sort=temp&order=desc&page=1"
    headers = _hrefs(answer.text, 'class="sort" ')
    assert "/?pattern=even&sort=temp&order=asc&page=1" in headers  # toggles the sorted column
    assert "/?pattern=even&sort=throttle&order=desc&page=1" in headers  # worst first
    assert "/?pattern=even&page=1" in headers  # by name: the default, a plain link
    assert '<input type="hidden" name="sort" value="temp">' in answer.text  # the filter form
    assert '<input type="hidden" name="order" value="desc">' in answer.text
    second = client.get("/?pattern=even&sort=temp&order=desc&page=2")
    assert _hrefs(second.text, 'rel="prev" ') == ["/?pattern=even&sort=temp&order=desc&page=1"]
    partial = client.get("/?pattern=even&sort=temp&order=desc",
                         headers={"HX-Request": "true", "HX-Target": "fleet-live"}).text
    assert partial.lstrip().startswith('<div id="fleet-live"')
    assert _row_names(partial)[0] == HOTTEST  # the 15 s refresh keeps the order


@pytest.mark.parametrize("query", ["sort=password", "sort=temp&order=sideways"])
def test_a_bad_sort_is_said_over_the_fleet_by_name(world: tuple[Settings, TestClient],
                                                   query: str) -> None:
    _, client = world
    answer = client.get(f"/?{query}")
    assert answer.status_code == 422
    assert "cannot sort by" in answer.text or "is not asc or desc" in answer.text
    assert _row_names(answer.text) == NAMES[:PAGE_SIZE]
    assert 'href="/?page=2"' in answer.text  # the links drop what was refused


def test_api_sorts_the_same_way(world: tuple[Settings, TestClient]) -> None:
    _, client = world
    answer = client.get("/api/devices?sort=temp&order=desc&limit=3")
    assert answer.status_code == 200
    assert answer.json()[0]["name"] == HOTTEST
    assert "sort=temp" in answer.headers["Link"] and "order=desc" in answer.headers["Link"]
    assert client.get("/api/devices?sort=throttle&limit=1").json()[0]["name"] == THROTTLING
    for query in ("sort=key_file", "sort=temp&order=up"):
        assert client.get(f"/api/devices?{query}").status_code == 422
