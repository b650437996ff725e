"""The web pages, in-process: what a user sees on each page, against a real fleet.

The fleet is made once per module with the real services (as ``edgefleet demo`` does): three
simulated local Pis — one hot without a cooler, one clean, one that under-volted since boot and
carries a hostile label — with the real agent installed, a real ONNX bundle pushed and
benchmarked, and real telemetry snapshots. Pages are read as HTML (``html.parser``), the way a
browser gets them; chart data is read back from its JSON block.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from orchestrator.access.auth import create_token
from orchestrator.artifacts.bundles import build_bundle, bundle_public, get_bundle
from orchestrator.artifacts.signing import create_key, sign_bundle
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.demo.model import make_demo_classifier
from orchestrator.demo.simulate import SimulatedDevice, create_simulated_device
from orchestrator.fleet.agents import install_agents
from orchestrator.fleet.deploy import push
from orchestrator.fleet.telemetry import take_snapshots
from orchestrator.inventory.devices import all_devices, sync_inventory
from orchestrator.inventory.reader import load_inventory
from orchestrator.jobs import queue, runner
from orchestrator.measure.runs import BenchParams, bench
from web.app import WEB_DIR, create_app

HOSTILE = "<script>alert(1)</script>"
HOT, COOL, WEAK = "pi5-hot", "pi5-cool", "pi4-weak"


# --- reading pages --------------------------------------------------------------------------


class _Page(HTMLParser):
    """Collects table rows (cell texts, row class) per table id, JSON script blocks by id, and
    every tag's attributes, from one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[dict[str, Any]]] = {}
        self.scripts: dict[str, str] = {}
        self.tags: list[tuple[str, dict[str, str]]] = []
        self._table: list[str | None] = []
        self._row: dict[str, Any] | None = None
        self._cell: list[str] | None = None
        self._script: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "table":
            self._table.append(a.get("id"))
        elif tag == "tr" and self._table:
            self._row = {"class": a.get("class", ""), "cells": []}
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "script" and a.get("type") == "application/json":
            self._script, self._text = a.get("id", ""), []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._table:
            self._table.pop()
        elif tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row["cells"].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            table = self._table[-1] if self._table else None
            self.tables.setdefault(table or "", []).append(self._row)
            self._row = None
        elif tag == "script" and self._script is not None:
            self.scripts[self._script] = "".join(self._text)
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._script is not None:
            self._text.append(data)


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def row_of(page: _Page, table: str, first_cell: str) -> dict[str, Any]:
    for row in page.tables.get(table, []):
        if row["cells"] and row["cells"][0].split()[0] == first_cell:
            return row
    raise AssertionError(f"no row {first_cell!r} in table {table!r}: {page.tables.get(table)}")


def text_of(row: dict[str, Any]) -> str:
    return " | ".join(row["cells"])


# --- the fleet ------------------------------------------------------------------------------


@dataclass
class Site:
    settings: Settings
    client: TestClient
    run_id: int
    bundle: dict[str, Any]
    sims: dict[str, SimulatedDevice]


SPECS = {  # name: (group, Pi model, temp C, freq MHz, get_throttled bits, labels)
    HOT: ("roastery", "Raspberry Pi 5 Model B Rev 1.0", 82.5, 1500.0, 0xE0008,
          {"cooler": "none"}),
    COOL: ("roastery", "Raspberry Pi 5 Model B Rev 1.0", 51.0, 2400.0, 0x0,
           {"cooler": "active"}),
    WEAK: ("lab", "Raspberry Pi 4 Model B Rev 1.5", 58.0, 1800.0, 0x50000,
           {"psu": "phone charger", "note": HOSTILE}),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    base = tmp_path_factory.mktemp("pages")
    settings = Settings(home=base / "home", database_url=None)
    groups: dict[str, dict[str, Any]] = {}
    sims = {}
    for name, (group, model, temp, freq, bits, labels) in SPECS.items():
        sims[name] = create_simulated_device(base / "hw" / name, model=model, temp_c=temp,
                                             freq_mhz=freq, throttled=bits)
        groups.setdefault(group, {})[name] = sims[name].local_host_vars(
            base / "root" / name) | labels
    inventory = base / "inventory.yml"
    inventory.write_text(yaml.safe_dump(
        {"all": {"children": {g: {"hosts": h} for g, h in groups.items()}}}))
    model_dir = base / "model"
    model_dir.mkdir()
    make_demo_classifier(model_dir / "model.onnx", seed=0)

    with session_scope(settings) as session:
        sync_inventory(session, load_inventory(inventory))
        devices = all_devices(session)
    _, installed = install_agents(settings, devices)
    assert all(o.ok for o in installed), [o.as_dict() for o in installed]
    with session_scope(settings) as session:
        bundle = build_bundle(session, settings, model_dir, "first-crack",
                              input_shapes={"log_mel": [1, 1, 98, 40]}).bundle
        public = bundle_public(bundle)
    assert all(o.ok for o in push(settings, bundle, devices))
    (run,), outcomes = bench(settings, [bundle], devices,
                             BenchParams(threads=[1], runs=5, warmup=1), "all")
    assert all(o.ok for o in outcomes)
    take_snapshots(settings, devices)
    sims[HOT].set_temp(84.0)
    take_snapshots(settings, devices)
    client = TestClient(create_app(settings, run_jobs=False), base_url="http://localhost")
    return Site(settings, client, run.id, public, sims)


def chart_data(site: Site, url: str) -> dict[str, Any]:
    """A run page's per-result chart JSON, as its script fetches it."""
    response = site.client.get(url)
    assert response.status_code == 200, (url, response.status_code, response.text[:2000])
    assert response.headers["content-type"] == "application/json"
    return response.json()


def get(site: Site, url: str, status: int = 200) -> str:
    response = site.client.get(url)
    assert response.status_code == status, (url, response.status_code, response.text[:2000])
    assert response.headers["content-type"].startswith("text/html")
    return response.text


# --- fleet ----------------------------------------------------------------------------------


def test_fleet_shows_each_device_its_temperature_and_the_fix(site: Site) -> None:
    page = parse(get(site, "/"))
    hot = text_of(row_of(page, "fleet", HOT))
    assert "84.0 °C" in hot and "soft temp limit" in hot and "add active cooling" in hot
    assert "online" in hot and "last seen" in hot and "sim" in hot
    assert "first-crack@1" in hot and "Raspberry Pi 5" in hot
    weak = text_of(row_of(page, "fleet", WEAK))
    # A Pi 4's supply is 5V/3A: the advice names the supply for the board, not a Pi 5's.
    assert "58.0 °C" in weak and "since boot" in weak
    assert "use a 5V/3A supply (the official 15W USB-C supply)" in weak and "5V/5A" not in weak
    assert "the SoC slowed itself down" in weak  # bit 18: throttled since boot
    cool = text_of(row_of(page, "fleet", COOL))
    assert "51.0 °C" in cool and "clean" in cool and "cooling" not in cool
    assert "cooler=active" in cool


def test_hostile_label_is_escaped_everywhere(site: Site) -> None:
    for url in ("/", f"/devices/{WEAK}"):
        html = get(site, url)
        assert HOSTILE not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    page = parse(get(site, "/"))
    assert f"note={HOSTILE}" in text_of(row_of(page, "fleet", WEAK))  # shown as typed


def test_pattern_filters_and_a_bad_pattern_is_an_error_on_the_page(site: Site) -> None:
    page = parse(get(site, "/?pattern=roastery:!pi5-cool"))
    names = [row["cells"][0].split()[0] for row in page.tables["fleet"][1:]]
    assert names == [HOT]
    html = get(site, "/?pattern=roastry", status=400)
    assert 'role="alert"' in html and "roastry" in html
    assert "roastery" in html  # the error suggests the group it probably meant
    assert len(parse(html).tables["fleet"]) == 1 + len(SPECS)  # the whole fleet still shown


# --- devices --------------------------------------------------------------------------------


def test_device_page_has_facts_telemetry_chart_data_deployments_and_results(site: Site) -> None:
    html = get(site, f"/devices/{HOT}")
    page = parse(html)
    facts = {row["cells"][0]: row["cells"][1] for row in page.tables[""] if len(row["cells"]) == 2}
    assert facts["Pi model"].startswith("Raspberry Pi 5") and facts["agent"]
    assert facts["active bundle"] == "first-crack@1"
    data = json.loads(page.scripts["telemetry-data"])
    assert len(data["x"]) == 2 and data["temp_c"] == [82.5, 84.0]
    assert data["throttled"] == [82.5, 84.0]  # soft temp limit "now" at both snapshots
    assert all(f > 0 for f in data["freq_mhz"])
    assert 'data-chart="telemetry"' in html and "/static/vendor/uPlot.iife.min.js" in html
    deployments = [text_of(r) for r in page.tables["deployments"] if "push" in text_of(r)]
    assert any("first-crack@1" in d and "active" in d for d in deployments)
    result = [text_of(r) for r in page.tables[""] if f"#{site.run_id}" in text_of(r)]
    assert result and "soft_temp_limit" in result[0]
    assert get(site, "/devices/nope", status=404).count("no device named") == 1


# --- bundles --------------------------------------------------------------------------------


def test_bundles_list_and_bundle_page_show_files_and_signature(site: Site) -> None:
    listing = parse(get(site, "/bundles"))
    row = text_of(row_of(listing, "bundles", "first-crack"))
    assert site.bundle["digest"][:12] in row and "pi5-hot" in row
    for url in ("/bundles/first-crack", "/bundles/first-crack@1"):
        page = parse(get(site, url))
        files = {r["cells"][0]: r["cells"] for r in page.tables["files"][1:]}
        for f in site.bundle["files"]:
            assert files[f["path"]][2] == f["sha256"]
        signature = [text_of(r) for r in page.tables["signature"][1:]]
        assert any(s.startswith("input | log_mel | float | [batch, 1, 98, 40]")
                   for s in signature), signature
        assert any(s.startswith("output |") for s in signature)
    html = get(site, "/bundles/first-crack@1")
    assert site.bundle["digest"] in html and 'action="/bundles/first-crack@1/push"' in html
    assert "no bundle first-crack@9" in get(site, "/bundles/first-crack@9", status=404)
    assert "unsigned: devices with pinned keys refuse it" in html


def test_bundle_page_says_who_signed(site: Site) -> None:
    """Run after the test above (which reads the bundle unsigned): signing changes only the
    bundle's signature columns."""
    with session_scope(site.settings) as session:
        key = create_key(session, site.settings, "release", actor="alice")
        sign_bundle(session, site.settings, get_bundle(session, "first-crack@1"), "release",
                    actor="alice")
        fingerprint = key.fingerprint
    html = get(site, "/bundles/first-crack@1")
    assert "by <strong>release</strong>" in html and fingerprint in html
    assert "unsigned:" not in html


def test_push_form_queues_a_job_and_redirects_to_it(site: Site) -> None:
    response = site.client.post("/bundles/first-crack/push",
                                data={"targets": "roastery", "forks": "3", "csrf_token": ""},
                                follow_redirects=False)
    assert response.status_code == 303, response.text[:2000]
    match = re.fullmatch(r"/jobs/(\d+)\?notice=queued", response.headers["location"])
    assert match
    job_id = int(match.group(1))
    with session_scope(site.settings) as session:
        job = queue.job_public(queue.get_job(session, job_id))
    assert job["state"] == "queued" and job["kind"] == "push"
    assert job["targets"] == "roastery"
    assert job["params"]["bundle"] == "first-crack@1" and job["params"]["forks"] == 3

    html = get(site, f"/jobs/{job_id}?notice=queued")
    assert "Job queued" in html and f'hx-get="/jobs/{job_id}/progress?notice=queued"' in html
    assert 'hx-trigger="every 1s"' in html and f'action="/jobs/{job_id}/cancel"' in html
    listing = parse(get(site, "/jobs"))
    assert "first-crack@1" in text_of(row_of(listing, "jobs", f"#{job_id}"))
    assert f"#{job_id}" not in get(site, "/jobs?state=succeeded")

    cancel = site.client.post(f"/jobs/{job_id}/cancel", data={"csrf_token": ""},
                              follow_redirects=False)
    assert cancel.status_code == 303
    partial = get(site, f"/jobs/{job_id}/progress")
    assert "cancelled" in partial and "hx-trigger" not in partial  # polling stops
    assert "<html" not in partial  # a fragment for htmx, not a page
    assert "Cancel job" not in partial


def test_push_form_with_bad_input_queues_nothing(site: Site) -> None:
    with session_scope(site.settings) as session:
        before = len(queue.list_jobs(session, 1000))
    for data, words in (({"targets": "nosuch-pi", "forks": "2"}, "nosuch-pi"),
                        ({"targets": "all", "forks": "many"}, "forks"),
                        ({"targets": "", "forks": "2"}, "targets must be a pattern")):
        response = site.client.post("/bundles/first-crack@1/push", data=data,
                                    follow_redirects=False)
        assert response.status_code == 400 and words in response.text
        assert 'role="alert"' in response.text
    with session_scope(site.settings) as session:
        assert len(queue.list_jobs(session, 1000)) == before


def test_job_progress_partial_shows_per_device_bytes(site: Site) -> None:
    job = queue.submit(site.settings, "push", {"bundle": "first-crack@1"}, "all",
                      actor="test")
    with session_scope(site.settings) as session:
        row = queue.get_job(session, job.id)
        row.state = "running"
        row.progress = {"devices": {
            HOT: {"state": "transferring", "bytes": 500, "total": 2000},
            COOL: {"state": "waiting", "waiting": f"waiting for {COOL}: bench #12"}}}
        session.add(row)
    page = parse(get(site, f"/jobs/{job.id}/progress"))
    hot = text_of(row_of(page, "", HOT))
    assert "transferring" in hot and "500 B / 2.0 kB" in hot
    # A device another job holds: what this one waits for (issue 14 item 5).
    assert f"waiting for {COOL}: bench #12" in text_of(row_of(page, "", COOL))
    assert ("progress", {"max": "100", "value": "25.0"}) in page.tags
    assert "every 1s" in get(site, f"/jobs/{job.id}/progress")
    queue.cancel(site.settings, job.id, actor="tester")


def test_a_job_page_names_the_worker_running_it_without_its_token(site: Site) -> None:
    """Several workers on several hosts (issue 14): the page says which one runs the job, as
    host:pid (its logs are there); the heartbeat token stays internal."""
    job = queue.submit(site.settings, "telemetry", {}, "all", actor="test")
    assert runner.claim(site.settings, job.id, "lab-b:4242:secrettoken")
    partial = get(site, f"/jobs/{job.id}/progress")
    assert '<code class="worker">lab-b:4242</code>' in partial and "secrettoken" not in partial
    api = site.client.get(f"/api/jobs/{job.id}").json()
    assert api["worker"] == "lab-b:4242" and "secrettoken" not in str(api)
    queue.cancel(site.settings, job.id, actor="tester")


def test_bench_form_queues_a_job_that_a_worker_runs_to_a_new_run(site: Site) -> None:
    response = site.client.post("/bundles/first-crack@1/bench", follow_redirects=False,
                                data={"targets": COOL, "threads": "1", "runs": "3",
                                      "warmup": "1"})
    assert response.status_code == 303, response.text[:2000]
    job_id = int(response.headers["location"].split("/")[2].split("?")[0])
    with session_scope(site.settings) as session:
        params = queue.get_job(session, job_id).params
    assert params["threads"] == [1] and params["runs"] == 3 and params["warmup"] == 1
    done = runner.JobRunner(site.settings).run_one()
    assert done is not None and done.id == job_id
    partial = parse(get(site, f"/jobs/{job_id}/progress"))
    text = " ".join(text_of(r) for rows in partial.tables.values() for r in rows)
    assert COOL in text and "done" in text and "hx-trigger" not in str(partial.tags)
    assert "succeeded" in get(site, f"/jobs/{job_id}")
    links = [a["href"] for tag, a in partial.tags if tag == "a" and "/runs/" in a.get("href", "")]
    assert links and links[0] != f"/runs/{site.run_id}"
    assert get(site, links[0]).count('data-chart="cdf"') == 1
    bad = site.client.post("/bundles/first-crack@1/bench", follow_redirects=False,
                           data={"targets": COOL, "threads": "1,two"})
    assert bad.status_code == 400 and "threads" in bad.text


# --- runs -----------------------------------------------------------------------------------


def test_run_page_shows_the_table_flags_and_chart_data(site: Site) -> None:
    html = get(site, f"/runs/{site.run_id}")
    page = parse(html)
    table = [r for r in page.tables[""] if r["cells"] and r["cells"][0] == "first-crack@1"]
    assert len(table) == 3
    hot = next(r for r in table if r["cells"][1].startswith(HOT))
    assert "status-invalid" in hot["class"]
    assert "invalid" in hot["cells"][-1] and "soft_temp_limit" in hot["cells"][-1]
    assert "temp_over_80c" in hot["cells"][-1] and hot["cells"][1] == f"{HOT} (sim)"
    cool = next(r for r in table if r["cells"][1].startswith(COOL))
    assert "status-ok" in cool["class"] and float(cool["cells"][4]) > 0  # p50 ms
    assert "measured while throttled" in html and "soft temperature limit" in html

    # Chart data is not in the page: each result's three charts name one JSON URL, fetched
    # by app.js when the result scrolls near the view.
    assert "run-charts" not in page.scripts and "latencies_ms" not in html
    urls = list(dict.fromkeys(re.findall(r'data-chart="hist" data-url="([^"]+)"', html)))
    assert len(urls) == 3 and all(html.count(f'data-url="{u}"') == 3 for u in urls)
    charts = [chart_data(site, url) for url in urls]
    for chart in charts:
        assert sum(chart["hist"]["counts"]) + chart["hist"]["overflow"] == 5
        assert len(chart["hist"]["edges"]) == len(chart["hist"]["counts"]) + 1
        assert chart["cdf"]["y"][-1] == 1.0 and chart["cdf"]["x"] == sorted(chart["cdf"]["x"])
        assert len(chart["telemetry"]["x"]) >= 2
    hot_chart = charts[[r["cells"][1] for r in table].index(f"{HOT} (sim)")]
    assert max(t for t in hot_chart["telemetry"]["temp_c"] if t) >= 80
    assert html.count('data-chart="hist"') == 3 and html.count('data-chart="cdf"') == 3

    listing = parse(get(site, "/runs"))
    assert "first-crack@1" in text_of(row_of(listing, "runs", f"#{site.run_id}"))
    get(site, "/runs/999", status=404)


def test_compare_page(site: Site) -> None:
    page = parse(get(site, f"/runs/compare?a={site.run_id}&b={site.run_id}"))
    rows = {r["cells"][0]: text_of(r) for r in page.tables["comparison"][1:]}
    assert "1.000" in rows[f"{COOL} (sim)"] and "no significant change" in rows[f"{COOL} (sim)"]
    assert "excluded" in rows[f"{HOT} (sim)"]


# --- static assets, the frame ---------------------------------------------------------------


def test_vendored_assets_are_served_and_listed(site: Site) -> None:
    vendored = (WEB_DIR / "static" / "VENDORED.md").read_text()
    listed = re.findall(r"^\| (vendor/\S+) \|.*\| ([0-9a-f]{64}) \|$", vendored, re.M)
    names = {name for name, _ in listed}
    assert {"vendor/htmx.min.js", "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css"} <= names
    on_disk = {p.relative_to(WEB_DIR / "static").as_posix()
               for p in (WEB_DIR / "static" / "vendor").iterdir()}
    assert on_disk == names
    types = {".js": "javascript", ".css": "text/css", ".txt": "text/plain"}
    for name, sha in listed:
        response = site.client.get(f"/static/{name}")
        assert response.status_code == 200
        assert types[Path(name).suffix] in response.headers["content-type"]
        assert hashlib.sha256(response.content).hexdigest() == sha, name
    for own in ("app.js", "app.css"):
        assert site.client.get(f"/static/{own}").status_code == 200


def test_pages_load_scripts_only_from_static(site: Site) -> None:
    for url in ("/", f"/devices/{HOT}", "/bundles", f"/runs/{site.run_id}", "/jobs"):
        response = site.client.get(url)
        assert "script-src 'self'" in response.headers["content-security-policy"]
        page = parse(response.text)
        for tag, attrs in page.tags:
            ref = attrs.get("src") if tag == "script" else attrs.get("href") \
                if tag == "link" else None
            if ref is not None:
                assert ref.startswith("/static/"), (url, tag, ref)
            if tag == "script":
                assert "src" in attrs or attrs.get("type") == "application/json"
        nav = [attrs["href"] for tag, attrs in page.tags if tag == "a"][:5]
        assert nav == ["/", "/", "/bundles", "/runs", "/jobs"]


def test_cookie_login_shows_principal_logout_and_csrf(tmp_path: Path) -> None:
    """With tokens configured: login form, the principal and a logout button in the nav, the
    CSRF token in forms and htmx headers, and a mutating form refused without it."""
    settings = Settings(home=tmp_path / "home", database_url=None)
    client = TestClient(create_app(settings, run_jobs=False), base_url="http://localhost")
    create_token(settings, "admin", "admin")  # an admin token switches authentication on
    _, secret = create_token(settings, "ada", "operator")
    assert client.get("/", follow_redirects=False).headers["location"].startswith("/login")
    login_page = client.get("/login?next=/jobs").text
    assert 'name="token"' in login_page and 'value="/jobs"' in login_page
    response = client.post("/login", data={"token": secret, "next": "/jobs"},
                           follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/jobs"
    html = client.get("/jobs").text
    token = re.search(r'"X-CSRF-Token": "([^"]+)"', html)
    assert token and len(token.group(1)) > 20
    assert f'name="csrf_token" value="{token.group(1)}"' in html
    assert "ada" in html and 'action="/logout"' in html and "Log out" in html
    refused = client.post("/bundles/first-crack/push", data={"targets": "all"},
                          follow_redirects=False)
    assert refused.status_code == 403
    allowed = client.post("/bundles/first-crack/push",
                          data={"targets": "all", "csrf_token": token.group(1)},
                          follow_redirects=False)
    assert allowed.status_code == 404  # past auth and CSRF; there is no such bundle here


# --- presentation rules, without HTTP -------------------------------------------------------


def test_view_rules_online_window_badges_and_histogram_tail() -> None:
    from datetime import UTC, datetime, timedelta

    from web.pages.view import ago, is_online, latency_cdf, latency_histogram, throttle_badges

    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert is_online(now - timedelta(minutes=2, seconds=59), now)
    assert not is_online(now - timedelta(minutes=3, seconds=1), now) and not is_online(None, now)
    assert ago((now - timedelta(minutes=5)).replace(tzinfo=None), now) == "5 min ago"  # naive=UTC
    assert ago(None, now) == "never"

    badges = throttle_badges({"now": ["under_voltage"], "since_boot": ["under_voltage",
                                                                       "frequency_capped"]}, 81.0,
                             "Raspberry Pi 5 Model B Rev 1.0")
    assert [(b["word"], b["when"]) for b in badges] == [
        ("under_voltage", "now"), ("frequency_capped", "since boot"), ("temp_over_80c", "now")]
    assert [b["hint"] for b in badges] == [
        "use a 5V/5A supply (the official 27W USB-C supply)", "the SoC slowed itself down",
        "add active cooling"]
    for model, supply in (("Raspberry Pi 4 Model B Rev 1.5", "5V/3A"),
                          ("Raspberry Pi 400 Rev 1.0", "5V/3A"),
                          ("Raspberry Pi 3 Model B Plus Rev 1.3", "5V/2.5A")):
        (badge,) = throttle_badges({"now": [], "since_boot": ["under_voltage"]}, None, model)
        assert badge["hint"].startswith(f"use a {supply} supply"), (model, badge)
    (unknown,) = throttle_badges({"now": ["under_voltage"]}, None, None)
    assert "5V/5A for a Pi 5, 5V/3A for a Pi 4" in unknown["hint"]
    assert throttle_badges({"now": [], "since_boot": []}, 79.9) == []

    body = [1.0 + 0.001 * i for i in range(990)] + [100.0] * 10  # 1% of runs 100x slower
    hist = latency_histogram(body)
    assert hist["overflow"] == 10 and sum(hist["counts"]) == 990 and hist["edges"][-1] < 5
    assert latency_histogram([2.0] * 5)["counts"] == [5]
    cdf = latency_cdf([float(i) for i in range(5000)])
    assert len(cdf["x"]) <= 1000 and cdf["x"][0] == 0.0 and cdf["y"][-1] == 1.0


def test_chart_data_skips_what_is_not_a_finite_number() -> None:
    """The vectorised path (plain floats) and the per-value one (anything else) agree."""
    from web.pages.view import latency_cdf, latency_histogram

    clean = [3.0, 1.0, 2.5, 2.0, 1.5]
    messy = [3.0, None, 1.0, float("nan"), "2.5", float("inf"), 2.0, [1], 1.5]
    assert latency_histogram(messy) == latency_histogram(clean)
    assert latency_cdf(messy) == latency_cdf(clean)
    assert latency_cdf(clean)["x"] == [1.0, 1.5, 2.0, 2.5, 3.0]
