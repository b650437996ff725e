"""Benchmarks (schedule form), Trends, Compare (versions heatmap, sweep, exports), Audit and the
inventory reload pages, in-process against a real fleet.

The fleet is test_pages' ``site``: three simulated Pis with the real agent, ``first-crack@1``
pushed and benchmarked for real (pi5-hot's result is invalid: soft temperature limit). On top,
``first-crack@2`` is built for real and given results by inserting Run/Result rows (plain
tables): a slower run on pi5-cool, so the Trends page has two points per line and the heatmap
two versions to shade.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlmodel import select

from orchestrator.access import audit
from orchestrator.access.auth import create_token
from orchestrator.artifacts.bundles import build_bundle
from orchestrator.core.config import Settings
from orchestrator.core.db import get_engine, session_scope
from orchestrator.core.models import Result, Run
from orchestrator.demo.model import make_demo_classifier
from orchestrator.inventory.devices import all_devices, sync_inventory
from orchestrator.inventory.reader import load_inventory
from orchestrator.jobs import queue, schedules
from orchestrator.measure.reports import COMPARISON_FIELDS, format_number
from orchestrator.present.wording import plural
from tests.unit.web import test_pages as base
from tests.unit.web.test_pages import COOL, HOT, Site, get, parse, row_of, text_of
from web.app import create_app

site = base.site  # the module-scoped fleet fixture, one instance for this module


@dataclass
class Seeded:
    site: Site
    cool_p50: float  # pi5-cool's real p50 in the real run (v1, 1 thread)
    slow_run: int  # the inserted v2 run, 50% slower on pi5-cool


def _insert_run(settings: Settings, version: str, digest: str, at: datetime,
                results: list[dict[str, Any]]) -> int:
    with session_scope(settings) as session:
        run = Run(bundle_name="first-crack", bundle_version=version, bundle_digest=digest,
                  targets="all", params={"threads": [1, 2]}, created_by="test",
                  state="succeeded", created_at=at, finished_at=at)
        session.add(run)
        session.flush()
        for fields in results:
            session.add(Result(run_id=run.id, ok=True, simulated=True, n=30,
                               telemetry_status="clean", precision="fp32", created_at=at,
                               **fields))
        assert run.id is not None
        return run.id


@pytest.fixture(scope="module")
def seeded(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    model_dir = tmp_path_factory.mktemp("model2")
    make_demo_classifier(model_dir / "model.onnx", seed=1)
    with session_scope(site.settings) as session:
        v2 = build_bundle(session, site.settings, model_dir, "first-crack",
                          input_shapes={"log_mel": [1, 1, 98, 40]}).bundle
        real = session.exec(select(Result).where(Result.run_id == site.run_id,
                                                 Result.device_name == COOL)).one()
        run_at = session.get(Run, site.run_id).created_at  # type: ignore[union-attr]
    assert real.valid and real.p50_ms
    later = run_at + timedelta(hours=1)
    slow = _insert_run(site.settings, v2.version, v2.digest, later, [
        {"device_name": COOL, "threads": 1, "valid": True, "p50_ms": real.p50_ms * 1.5},
        {"device_name": COOL, "threads": 2, "valid": True, "p50_ms": real.p50_ms * 0.8},
        {"device_name": HOT, "threads": 1, "valid": False, "p50_ms": real.p50_ms * 3,
         "flags": ["soft_temp_limit"]}])
    return Seeded(site, real.p50_ms, slow)


def _post(site: Site, url: str, data: dict[str, str]) -> Any:
    return site.client.post(url, data=data, follow_redirects=False)


def _job_count(site: Site) -> int:
    with session_scope(site.settings) as session:
        return len(queue.list_jobs(session, 10_000))


BENCH = {"bundle": "first-crack@1", "baseline": "", "targets": COOL, "threads": "1, 2",
         "warmup": "1", "runs": "3", "min_seconds": "0.5", "shapes": "log_mel=1x1x98x40\n",
         "inputs": "# constants (the model has none: a comment line only)\r\n", "when": "now",
         "cron": "", "at": ""}


# --- benchmarks -----------------------------------------------------------------------------


def test_benchmarks_page_offers_bundle_versions_and_the_when_choices(seeded: Seeded) -> None:
    html = get(seeded.site, "/benchmarks")
    page = parse(html)
    options = [a for tag, a in page.tags if tag == "option"]
    assert 'action="/benchmarks"' in html and 'name="csrf_token"' in html
    assert "first-crack@2</option>" in html and "first-crack@1</option>" in html
    assert html.index("first-crack@2</option>") < html.index("first-crack@1</option>")
    assert {"value": ""} in options  # "no baseline"
    assert [a["value"] for tag, a in page.tags if tag == "input" and a.get("name") == "when"] \
        == ["now", "cron", "at"]
    assert 'aria-current="page"' in html and 'href="/benchmarks"' in html


def test_bench_now_becomes_a_queued_job_with_the_form_params(seeded: Seeded) -> None:
    site = seeded.site
    response = _post(site, "/benchmarks", BENCH)
    assert response.status_code == 303, response.text[:2000]
    match = re.fullmatch(r"/jobs/(\d+)\?notice=queued", response.headers["location"])
    assert match
    with session_scope(site.settings) as session:
        job = queue.job_public(queue.get_job(session, int(match.group(1))))
    assert job["kind"] == "bench" and job["state"] == "queued" and job["targets"] == COOL
    params = job["params"]
    assert params["bundle"] == "first-crack@1" and params["threads"] == [1, 2]
    assert (params["warmup"], params["runs"], params["min_seconds"]) == (1, 3, 0.5)
    assert params["shapes"] == {"log_mel": [1, 1, 98, 40]}
    assert params["constants"] == {} and "baseline" not in params
    queue.cancel(site.settings, job["id"], actor="tester")


@pytest.mark.parametrize(("change", "words"), [
    ({"targets": "nosuch-pi"}, "nosuch-pi"),
    ({"threads": "1,two"}, "threads"),
    ({"shapes": "log_mel=1x1x98x40\nlog_mel 1x2"}, "shapes, line 2"),
    ({"inputs": "gain=loud"}, "inputs, line 1"),
    ({"inputs": "gain=0.5"}, "--input names 'gain', which is not an input of the model"),
    ({"runs": "0"}, "'runs' must be an integer from 1 to"),
    ({"when": "cron", "cron": "61 * * * *"}, "cron expression '61 * * * *' is not valid"),
    ({"when": "cron", "cron": "0 3 * *"}, "has 4 field(s)"),
    ({"when": "at", "at": "2001-01-01T03:00"}, "has passed"),
    ({"when": "at", "at": "tomorrow"}, "use YYYY-MM-DD HH:MM"),
])
def test_bad_input_rerenders_with_the_error_and_queues_nothing(
        seeded: Seeded, change: dict[str, str], words: str) -> None:
    site = seeded.site
    with session_scope(site.settings) as session:
        before = (_job_count(site), len(schedules.list_schedules(session)))
    response = _post(site, "/benchmarks", BENCH | change)
    assert response.status_code == 400
    alert = re.search(r'role="alert">([^<]*)<', response.text)
    assert alert and words in html.unescape(alert.group(1)), alert
    assert f'value="{(BENCH | change)["targets"]}"' in response.text  # the form keeps its values
    with session_scope(site.settings) as session:
        assert (_job_count(site), len(schedules.list_schedules(session))) == before


def test_cron_schedule_is_created_listed_and_deleted_from_the_page(seeded: Seeded) -> None:
    site = seeded.site
    before = _job_count(site)
    response = _post(site, "/benchmarks", BENCH | {"when": "cron", "cron": " 0 3  * * 1-5 ",
                                                   "baseline": "first-crack@2"})
    assert response.status_code == 303, response.text[:2000]
    assert response.headers["location"] == "/benchmarks?notice=schedule_created"
    assert _job_count(site) == before  # a schedule, not a job
    with session_scope(site.settings) as session:
        (schedule,) = [schedules.schedule_public(s) for s in schedules.list_schedules(session)
                       if s.cron]
    assert schedule["cron"] == "0 3 * * 1-5" and schedule["kind"] == "bench"
    assert schedule["params"]["baseline"] == "first-crack@2"
    assert schedule["params"]["rounds"] == 5 and schedule["targets"] == COOL
    fire = datetime.fromisoformat(schedule["next_run_at"])
    assert (fire.hour, fire.minute) == (3, 0) and fire.weekday() < 5

    html = get(site, "/benchmarks?notice=schedule_created")
    assert "Schedule created" in html
    row = text_of(row_of(parse(html), "schedules", str(schedule["id"])))
    assert "cron 0 3 * * 1-5" in row and "first-crack@1 vs first-crack@2" in row
    delete_url = f"/benchmarks/schedules/{schedule['id']}/delete"
    assert f'action="{delete_url}"' in html

    deleted = _post(site, delete_url, {"csrf_token": ""})
    assert deleted.status_code == 303
    assert deleted.headers["location"] == "/benchmarks?notice=schedule_deleted"
    with session_scope(site.settings) as session:
        assert all(s.id != schedule["id"] for s in schedules.list_schedules(session))
        actions = [(e.action, e.target) for e in audit.list_events(session, 20)]
    assert ("schedule.create", f"schedule:{schedule['id']}") in actions
    assert ("schedule.delete", f"schedule:{schedule['id']}") in actions
    assert _post(site, delete_url, {}).status_code == 404


def test_one_off_schedule_at_a_time_in_utc(seeded: Seeded) -> None:
    site = seeded.site
    when = (datetime.now(UTC) + timedelta(days=2)).replace(second=0, microsecond=0)
    response = _post(site, "/benchmarks",
                     BENCH | {"when": "at", "at": when.strftime("%Y-%m-%dT%H:%M")})
    assert response.status_code == 303, response.text[:2000]
    with session_scope(site.settings) as session:
        (one,) = [s for s in schedules.list_schedules(session) if s.run_at is not None]
        assert one.run_at == when and one.next_run_at == when
        schedules.delete(site.settings, one.id, actor="tester")  # type: ignore[arg-type]


# --- trends ---------------------------------------------------------------------------------


def test_trends_draws_points_and_invalid_ones_apart(seeded: Seeded) -> None:
    """Two points per line are no evidence of a new level: no change point (the detector and
    its table: tests/unit/measure/test_regressions.py)."""
    site = seeded.site
    statements: list[str] = []
    engine = get_engine(site.settings)

    def spy(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", spy)
    try:
        html = get(site, "/trends")
    finally:
        event.remove(engine, "before_cursor_execute", spy)
    assert statements and not any("latencies" in s or "telemetry_samples" in s
                                  for s in statements)  # only columns, aggregated in SQL

    page = parse(html)
    assert "change-points" not in page.tables
    assert "None: no series of valid points moved to another level" in " ".join(html.split())
    assert "Apache Otava" in html

    # Each chart's data is its own request, made when the chart nears the view (lines.js).
    urls = [a["data-url"] for tag, a in page.tags if tag == "div" and a.get("data-lines")]
    assert "trend-charts" not in page.scripts and all(u.startswith("/trends/chart?")
                                                      for u in urls)
    charts = {c["title"]: c for c in (site.client.get(u).json() for u in urls)}
    cool = charts[f"first-crack on {COOL}"]
    kinds = {s["label"]: s for s in cool["series"]}
    line = kinds["1 thread"]["values"]
    assert line == [pytest.approx(seeded.cool_p50), pytest.approx(seeded.cool_p50 * 1.5)]
    assert kinds["2 threads"]["values"] == [None, pytest.approx(seeded.cool_p50 * 0.8)]
    assert len(cool["x"]) == 2 and cool["x"][0] < cool["x"][1] and cool["regressions"] == 0
    hot = charts[f"first-crack on {HOT}"]
    assert {s["kind"] for s in hot["series"]} == {"line", "invalid"}  # never a change point
    assert all(v is None for s in hot["series"] if s["kind"] == "line" for v in s["values"])
    assert hot["invalid"] == 2
    assert len(urls) == len(charts) == 3  # pi4-weak too
    assert '<script src="/static/lines.js" defer></script>' in html
    for title, chart in charts.items():  # the caption counts what the chart draws
        assert f"<strong>{title}</strong>: {plural(chart['points'], 'point')}" in html

    narrowed_html = get(site, "/trends?bundle=first-crack&threads=2&runs=50")
    narrowed = parse(narrowed_html)
    urls = [a["data-url"] for tag, a in narrowed.tags if tag == "div" and a.get("data-lines")]
    assert [site.client.get(u).json()["title"] for u in urls] == [f"first-crack on {COOL}"]
    assert all("runs=50" in u and "threads=2" in u for u in urls)
    assert '<option value="50" selected>' in narrowed_html  # the window chosen, kept
    assert "No benchmark results match" in get(site, "/trends?bundle=nosuch")
    missing = site.client.get(f"/trends/chart?of=nosuch&device={COOL}")
    assert missing.status_code == 404 and missing.json()["detail"]


# --- compare --------------------------------------------------------------------------------


def test_compare_versions_heatmap_and_thread_sweep(seeded: Seeded) -> None:
    html = get(seeded.site, "/runs/compare?bundle=first-crack")
    page = parse(html)
    header, *rows = page.tables["heatmap"]
    assert header["cells"][:2] == ["device", "threads"]
    assert [c.split()[0] for c in header["cells"][2:]] == ["v1", "v2"]
    cool = [r for r in rows if r["cells"][:2] == [COOL, "1"]][0]["cells"]
    # Exactly what format_number shows for the stored p50s (at most three decimals, so a
    # measured 0.0396 ms reads "0.040"; comparing numbers instead failed on such roundings).
    assert cool[2].strip() == format_number(seeded.cool_p50)
    assert cool[3].strip() == format_number(seeded.cool_p50 * 1.5)
    tds = [a.get("class", "") for tag, a in page.tags if tag == "td"]
    assert "num heat-0" in tds and "num heat-9" in tds  # per row: v1 lightest, v2 darkest
    hot = [r for r in rows if r["cells"][:2] == [HOT, "1"]][0]["cells"]
    assert "invalid" in hot[2] and "invalid" in hot[3]
    assert "num heat-invalid" in tds

    sweeps = {c["device"]: c for c in json.loads(page.scripts["sweep-charts"])}
    cool_sweep = sweeps[COOL]
    assert cool_sweep["x"] == [1, 2] and cool_sweep["x_log2"]
    series = {s["label"]: s["values"] for s in cool_sweep["series"]}
    assert series["v1"] == [pytest.approx(seeded.cool_p50), None]
    assert series["v2"] == [pytest.approx(seeded.cool_p50 * 1.5),
                            pytest.approx(seeded.cool_p50 * 0.8)]
    assert {s["kind"] for s in sweeps[HOT]["series"]} == {"line", "invalid"}
    assert 'data-lines="sweep-charts"' in html

    one = parse(get(seeded.site, "/runs/compare?bundle=first-crack&threads=2"))
    assert [r["cells"][:2] for r in one.tables["heatmap"][1:]] == [[COOL, "2"]]


def test_compare_two_runs_exports_csv_and_markdown(seeded: Seeded) -> None:
    site, run = seeded.site, seeded.site.run_id
    html = get(site, f"/runs/compare?a={run}&b={run}")
    rows = {r["cells"][0]: text_of(r) for r in parse(html).tables["comparison"][1:]}
    assert "1.000" in rows[f"{COOL} (sim)"] and "excluded" in rows[f"{HOT} (sim)"]
    assert f'href="/runs/compare?a={run}&amp;b={run}&amp;format=csv"' in html

    csv = site.client.get(f"/runs/compare?a={run}&b={run}&format=csv")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert csv.headers["content-disposition"] == \
        f'attachment; filename="compare-{run}-{run}.csv"'
    lines = csv.text.splitlines()
    assert lines[0] == ",".join(COMPARISON_FIELDS) and len(lines) == 1 + 3
    assert any(line.startswith(f"{COOL},1,true,first-crack@1,first-crack@1,") for line in lines)

    md = site.client.get(f"/runs/compare?a={run}&b={seeded.slow_run}&format=md")
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
    assert "attachment" in md.headers["content-disposition"]
    assert md.text.startswith("| device | threads | A p50 | B p50 |")
    assert "without per-inference latencies" in md.text  # inserted rows have no raw latencies

    assert site.client.get(f"/runs/compare?a={run}&b={run}&format=xlsx").status_code == 400
    assert site.client.get(f"/runs/compare?a={run}&b=999&format=csv").status_code == 404


# --- audit ----------------------------------------------------------------------------------


def test_audit_page_lists_events_newest_first(seeded: Seeded) -> None:
    site = seeded.site
    with session_scope(site.settings) as session:
        audit.add_event(session, "ada", "push", "job:1", {"targets": "roastery"})
    with session_scope(site.settings) as session:
        audit.add_event(session, "<b>eve</b>", "job.cancel", "job:1", {"password": "hunter2"})
    html = get(site, "/audit")
    rows = parse(html).tables["audit"][1:]
    assert rows[0]["cells"][1:4] == ["<b>eve</b>", "job.cancel", "job:1"]
    assert rows[1]["cells"][1:4] == ["ada", "push", "job:1"]
    assert "&lt;b&gt;eve&lt;/b&gt;" in html and "hunter2" not in html
    assert any(r["cells"][2] == "bench" for r in rows)  # the page-submitted bench
    assert 'href="/audit"' in html  # in the nav, for an admin (the local user)


# --- inventory reload -----------------------------------------------------------------------


def _inventory(path: Path, hosts: dict[str, dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    return path


def test_inventory_reload_previews_the_diff_then_applies_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(home=tmp_path / "home", database_url=None, inventory_dir=tmp_path)
    local = {"ansible_connection": "local"}
    first = _inventory(tmp_path / "fleet.yml", {
        "keep": local | {"edgefleet_env": {"API_TOKEN": "old-secret-1"}, "room": "a"},
        "gone": local})
    with session_scope(settings) as session:
        sync_inventory(session, load_inventory(first))
    client = TestClient(create_app(settings, run_jobs=False), base_url="http://localhost")
    monkeypatch.setenv("EDGEFLEET_INVENTORY", str(first))
    form = client.get("/fleet/inventory").text
    assert f'value="{first}"' in form and "<table" not in form  # no preview without asking
    assert 'id="reload-inventory"' in client.get("/").text

    second = _inventory(tmp_path / "fleet2.yml", {
        "keep": local | {"edgefleet_env": {"API_TOKEN": "new-secret-2"}, "room": "b"},
        "fresh": local})
    preview = client.get("/fleet/inventory", params={"path": str(second)})
    assert preview.status_code == 200
    page = parse(preview.text)
    diff = [r["cells"] for r in page.tables["diff"][1:]]
    assert ["fresh", "added", "", "", ""] in diff and ["gone", "removed", "", "", ""] in diff
    changed = {cells[2]: cells[3:] for cells in diff if cells[2]}
    assert changed["labels"] == ['{"room": "a"}', '{"room": "b"}']
    assert "API_TOKEN" in changed["env"][0] and "redacted" in changed["env"][1]
    assert "old-secret-1" not in preview.text and "new-secret-2" not in preview.text
    hidden = {a["name"]: a["value"] for tag, a in page.tags if tag == "input"
              and a.get("type") == "hidden"}
    assert hidden["path"] == str(second) and len(hidden["digest"]) == 64
    with session_scope(settings) as session:  # a preview changes nothing
        assert [d.name for d in all_devices(session)] == ["gone", "keep"]

    applied = client.post("/fleet/inventory/apply", data=hidden, follow_redirects=False)
    assert applied.status_code == 303 and applied.headers["location"] == \
        "/?notice=inventory_applied"
    fleet = client.get(applied.headers["location"]).text
    assert "Inventory applied" in fleet and "fresh" in fleet
    with session_scope(settings) as session:
        assert [d.name for d in all_devices(session)] == ["fresh", "keep"]
        (event_,) = [e for e in audit.list_events(session) if e.action == "inventory.sync"]
    assert event_.target == str(second.resolve()) and event_.detail["added"] == ["fresh"]
    assert "new-secret-2" not in json.dumps(event_.detail)
    monkeypatch.delenv("EDGEFLEET_INVENTORY")
    assert f'value="{second.resolve()}"' in client.get("/fleet/inventory").text  # the last

    # The file changed after the preview: nothing applied, the new diff shown instead.
    stale = dict(hidden)
    _inventory(second, {"keep": local, "fresh": local, "late": local})
    refused = client.post("/fleet/inventory/apply", data=stale, follow_redirects=False)
    assert refused.status_code == 409 and "changed since the preview" in refused.text
    assert ["late", "added", "", "", ""] in [r["cells"] for r in parse(refused.text)
                                             .tables["diff"][1:]]
    with session_scope(settings) as session:
        assert "late" not in [d.name for d in all_devices(session)]

    broken = tmp_path / "broken.yml"
    broken.write_text("all:\n  hosts:\n    a: {ansible_connection: local}\n    b: [unclosed\n")
    shown = client.get("/fleet/inventory", params={"path": str(broken)})
    assert shown.status_code == 400
    alert = re.search(r'role="alert">([^<]*)<', shown.text)
    assert alert and re.match(rf"{re.escape(str(broken))}:\d+: ", alert.group(1)), alert
    assert client.post("/fleet/inventory/apply", data={"path": str(broken), "digest": "x"},
                       follow_redirects=False).status_code == 409


def test_admin_pages_need_an_admin_and_forms_need_an_operator(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", database_url=None)
    client = TestClient(create_app(settings, run_jobs=False), base_url="http://localhost")
    tokens = {role: create_token(settings, role, role)[1]
              for role in ("admin", "operator", "viewer")}

    def call(role: str, method: str, url: str, **kw: Any) -> Any:
        return client.request(method, url, headers={"Authorization": f"Bearer {tokens[role]}"},
                              follow_redirects=False, **kw)

    for role in ("viewer", "operator"):
        assert call(role, "GET", "/fleet/inventory").status_code == 403
        assert call(role, "GET", "/fleet/inventory?path=x.yml").status_code == 403
        assert call(role, "POST", "/fleet/inventory/apply",
                    data={"path": "x.yml", "digest": "0"}).status_code == 403
        assert call(role, "GET", "/audit").status_code == 403
        html = call(role, "GET", "/benchmarks").text
        assert 'href="/audit"' not in html and 'href="/trends"' in html
        assert 'id="reload-inventory"' not in call(role, "GET", "/").text
    assert 'action="/benchmarks"' not in call("viewer", "GET", "/benchmarks").text
    assert call("viewer", "POST", "/benchmarks", data={"targets": "all"}).status_code == 403
    assert call("viewer", "POST", "/benchmarks/schedules/1/delete").status_code == 403
    assert call("operator", "POST", "/benchmarks/schedules/1/delete").status_code == 404
    assert call("admin", "GET", "/audit").status_code == 200
    assert 'href="/audit"' in call("admin", "GET", "/trends").text
    assert call("admin", "GET", "/fleet/inventory").status_code == 200
