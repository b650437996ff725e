"""Paging the fleet: the Fleet page and GET /api/devices over 250 devices in real SQLite.

The devices are local-transport inventory hosts (no agent needed to list them), named so that
their order by name is known; half are in group ``even``. What is checked is what a client
relies on: every device exactly once across the pages, the total and the next link, the plain
JSON list of old clients unchanged, and the pattern filter paged like the whole fleet.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from orchestrator.core.config import Settings
from orchestrator.core.db import MAX_ROW_ID, session_scope
from orchestrator.inventory.devices import devices_window, select_devices, sync_inventory
from orchestrator.inventory.reader import load_inventory
from web.app import create_app
from web.pages.fleet import PAGE_SIZE

COUNT = 250
NAMES = [f"dev-{i:04d}" for i in range(COUNT)]


def write_fleet(base: Path) -> Path:
    """An inventory of COUNT local hosts in groups ``even`` / ``odd``."""
    groups: dict[str, dict[str, dict[str, object]]] = {"even": {}, "odd": {}}
    for i, name in enumerate(NAMES):
        groups["odd" if i % 2 else "even"][name] = {
            "ansible_connection": "local", "edgefleet_root": str(base / "roots" / name)}
    inventory = base / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {
        group: {"hosts": hosts} for group, hosts in groups.items()}}}))
    return inventory


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, TestClient]]:
    base = tmp_path_factory.mktemp("paging")
    settings = Settings(home=base / "home")
    with session_scope(settings) as session:
        sync_inventory(session, load_inventory(write_fleet(base)))
    with TestClient(create_app(settings, run_jobs=False), base_url="http://localhost") as client:
        yield settings, client


def test_the_service_cuts_a_window_in_name_order(world: tuple[Settings, TestClient]) -> None:
    settings, _ = world
    with session_scope(settings) as session:
        page = devices_window(session, None, 240, 100)
        assert [d.name for d in page.devices] == NAMES[240:]
        assert (page.total, page.matched, page.next_offset) == (COUNT, COUNT, None)
        odd = devices_window(session, "odd", 0, 10)
        assert [d.name for d in odd.devices] == NAMES[1:20:2]
        assert (odd.total, odd.matched, odd.next_offset) == (COUNT, COUNT // 2, 10)
        pattern = "dev-0007,dev-0002,dev-0005"
        named = devices_window(session, pattern, 1, 5)
        assert [d.name for d in named.devices] == [  # the CLI's order, cut
            d.name for d in select_devices(session, pattern)][1:]
        assert (named.matched, named.next_offset) == (3, None)


def test_api_default_is_the_whole_list_as_before(world: tuple[Settings, TestClient]) -> None:
    _, client = world
    answer = client.get("/api/devices")
    assert answer.status_code == 200
    assert [d["name"] for d in answer.json()] == NAMES
    assert answer.headers["X-Total-Count"] == str(COUNT)
    assert "Link" not in answer.headers


def test_api_pages_follow_the_link_header(world: tuple[Settings, TestClient]) -> None:
    _, client = world
    seen: list[str] = []
    url: str | None = "/api/devices?pattern=even&limit=40"
    pages = 0
    while url is not None:
        answer = client.get(url)
        assert answer.status_code == 200
        assert answer.headers["X-Total-Count"] == str(COUNT // 2)
        seen += [d["name"] for d in answer.json()]
        link = re.fullmatch(r'<([^>]+)>; rel="next"', answer.headers.get("Link", ""))
        url = link.group(1) if link else None
        pages += 1
    assert seen == NAMES[::2]
    assert pages == 4  # 125 devices, 40 a page


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "offset=-1", "limit=x",
                                   "offset=9339123332474732224"])  # > SQLite's INTEGER: was 500
def test_api_refuses_a_bad_window(world: tuple[Settings, TestClient], query: str) -> None:
    _, client = world
    assert client.get(f"/api/devices?{query}").status_code == 422


def test_fleet_page_past_an_sql_integer_is_refused(world: tuple[Settings, TestClient]) -> None:
    """?page=2**63 with devices in the DB made an OFFSET SQLite cannot bind: a 500
    (OverflowError) before the page was bounded; now a 422. The highest page still answers."""
    _, client = world
    assert client.get("/?page=9223372036854775808").status_code == 422
    assert client.get(f"/?page={MAX_ROW_ID // PAGE_SIZE}").status_code == 200


def _row_names(html: str) -> list[str]:
    return re.findall(r'<a href="/devices/(dev-\d{4})">', html)


def test_fleet_page_shows_one_page_and_links_the_next(world: tuple[Settings, TestClient]) -> None:
    _, client = world
    first = client.get("/")
    assert first.status_code == 200
    assert _row_names(first.text) == NAMES[:PAGE_SIZE]
    assert f"{COUNT} devices." in first.text and "page 1 of 3" in first.text
    assert 'rel="next" href="/?page=2"' in first.text and 'rel="prev"' not in first.text
    last = client.get("/?page=3")
    assert _row_names(last.text) == NAMES[2 * PAGE_SIZE:]
    assert 'rel="prev" href="/?page=2"' in last.text and 'rel="next"' not in last.text
    assert _row_names(client.get("/?page=9").text) == []
    assert client.get("/?page=0").status_code == 422


def test_fleet_page_keeps_the_pattern_across_pages(world: tuple[Settings, TestClient]) -> None:
    _, client = world
    first = client.get("/?pattern=odd")
    assert _row_names(first.text) == NAMES[1:2 * PAGE_SIZE:2]
    assert f"{COUNT // 2} of {COUNT} devices match" in first.text
    assert 'rel="next" href="/?pattern=odd&amp;page=2"' in first.text
    second = client.get("/?pattern=odd&page=2")
    assert _row_names(second.text) == NAMES[2 * PAGE_SIZE + 1::2]


def test_a_bad_pattern_pages_the_whole_fleet(world: tuple[Settings, TestClient]) -> None:
    _, client = world
    answer = client.get("/?pattern=nope")
    assert answer.status_code == 400
    assert _row_names(answer.text) == NAMES[:PAGE_SIZE]
    assert 'href="/?page=2"' in answer.text
