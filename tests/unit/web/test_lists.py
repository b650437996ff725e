"""Finding things in long lists (issue 17): the Runs list (kind column; filters by bundle,
device, kind, state and date range; pages instead of a 200-row cap), the Audit log (actor,
action, target; pages), and the Jobs list and job page that update themselves (the list polls
while a job is queued or running; the "Job queued" notice is replaced once the job moves on).

Rows are inserted into real SQLite (made by the migrations) as plain tables: 130 runs, 3 kinds
of device, 2 kinds, 3 days; 260 audit events.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from orchestrator.access import audit
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Job, Result, Run
from tests.unit.web.test_pages import parse
from web.app import create_app
from web.pages.runs import RUNS_PAGE

DAY0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DEVICES = ("pi-a", "pi-b", "pi-c")


@dataclass
class World:
    settings: Settings
    client: TestClient


def _run(i: int) -> tuple[Run, list[str]]:
    """Run i: eval every 5th, failed every 7th, bundle ``b{i%2}``, day i//50, on 1-2 devices."""
    run = Run(kind="eval" if i % 5 == 0 else "bench", bundle_name=f"b{i % 2}",
              bundle_version=str(1 + i % 3), bundle_digest="d" * 64, targets="all",
              params={"threads": [1]}, created_by="t",
              state="failed" if i % 7 == 0 else "succeeded",
              created_at=DAY0 + timedelta(days=i // 50, minutes=i))
    return run, [DEVICES[i % 3], DEVICES[(i + 1) % 3]] if i % 2 else [DEVICES[i % 3]]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    settings = Settings(home=tmp_path_factory.mktemp("lists") / "home", database_url=None)
    with session_scope(settings) as session:
        for i in range(130):
            run, devices = _run(i)
            session.add(run)
            session.flush()
            for name in devices:
                session.add(Result(run_id=run.id, device_name=name, threads=1, ok=True,
                                   valid=True, p50_ms=1.0, n=5, created_at=run.created_at))
        for i in range(260):
            audit.add_event(session, "ada" if i % 2 else "bob",
                            ("push", "token.create", "token.revoke", "bench")[i % 4],
                            f"run:{i}" if i % 4 == 3 else f"pi-{i}")
    app = create_app(settings, run_jobs=False)
    return World(settings, TestClient(app, base_url="http://localhost"))


def run_ids(world: World, query: str, status: int = 200) -> tuple[list[int], str]:
    response = world.client.get("/runs" + query)
    assert response.status_code == status, response.text[:2000]
    rows = parse(response.text).tables.get("runs", [])[1:]
    return [int(r["cells"][0].lstrip("#")) for r in rows], response.text


def expected(pred) -> list[int]:  # type: ignore[no-untyped-def]
    return [i + 1 for i in reversed(range(130)) if pred(i, *_run(i))]


def test_runs_list_pages_through_every_run_with_a_kind_column(world: World) -> None:
    seen: list[int] = []
    page = 1
    while True:
        ids, html = run_ids(world, f"?page={page}")
        seen += ids
        if 'rel="next"' not in html:
            break
        page += 1
    assert page == -(-130 // RUNS_PAGE) and seen == list(range(130, 0, -1))
    rows = parse(run_ids(world, "")[1]).tables["runs"]
    assert rows[0]["cells"][1] == "kind"
    kinds = {int(r["cells"][0][1:]): r["cells"][1] for r in rows[1:]}
    assert kinds[126] == "eval" and kinds[127] == "bench"  # run 126 is i=125


def test_runs_filters_combine_and_survive_paging(world: World) -> None:
    assert run_ids(world, "?kind=eval")[0][:RUNS_PAGE] == expected(
        lambda i, r, d: r.kind == "eval")[:RUNS_PAGE]
    assert run_ids(world, "?state=failed&bundle=b1")[0] == expected(
        lambda i, r, d: r.state == "failed" and r.bundle_name == "b1")
    assert run_ids(world, "?bundle=b0@2&device=pi-b")[0] == expected(
        lambda i, r, d: r.bundle_name == "b0" and r.bundle_version == "2" and "pi-b" in d)
    day1 = (DAY0 + timedelta(days=1)).date().isoformat()
    only_day1 = expected(lambda i, r, d: i // 50 == 1)
    assert run_ids(world, f"?since={day1}&until={day1}")[0] == only_day1  # inclusive
    # the last day there is: no day after it to bound by (was an OverflowError, a 500)
    assert run_ids(world, "?until=9999-12-31")[0] == run_ids(world, "")[0]
    # page 2 of a filter keeps the filter in its links
    everything = expected(lambda i, r, d: r.kind == "bench")
    ids, html = run_ids(world, "?kind=bench&page=2")
    assert ids == everything[RUNS_PAGE:2 * RUNS_PAGE]
    assert 'href="/runs?kind=bench&amp;page=1"' in html
    assert 'href="/runs?kind=bench&amp;page=3"' in html


@pytest.mark.parametrize(("query", "says"), [
    ("?since=yesterday", "from date 'yesterday' is not a date: use YYYY-MM-DD"),
    ("?since=2026-03-03&until=2026-03-01", "the date range ends (2026-03-01) before it starts"),
    ("?kind=train", "kind 'train': choose one of bench, eval"),
])
def test_a_bad_filter_is_said_above_the_unfiltered_list(world: World, query: str,
                                                        says: str) -> None:
    ids, html = run_ids(world, query, status=400)
    assert says in html.replace("&#39;", "'") and 'role="alert"' in html
    assert ids == list(range(130, 130 - RUNS_PAGE, -1))


def audit_rows(world: World, query: str) -> tuple[list[list[str]], str]:
    response = world.client.get("/audit" + query)
    assert response.status_code == 200
    return [r["cells"] for r in parse(response.text).tables.get("audit", [])[1:]], response.text


def test_audit_filters_by_actor_action_target_and_pages(world: World) -> None:
    rows, html = audit_rows(world, "")
    assert len(rows) == 100 and "260 events" in html and 'href="/audit?page=2"' in html
    rows, _ = audit_rows(world, "?page=3")
    assert len(rows) == 60
    rows, html = audit_rows(world, "?action=token&actor=ada")  # token.create / token.revoke
    assert rows and {r[1] for r in rows} == {"ada"}
    assert {r[2] for r in rows} == {"token.create"}  # ada's are odd i: token.create or bench
    assert "65 events match" in html
    rows, _ = audit_rows(world, "?target=run:25")
    assert [r[3] for r in rows] == ["run:259", "run:255", "run:251"]  # substring, newest first
    rows, html = audit_rows(world, "?target=100%25")  # a LIKE wildcard is a plain character
    assert rows == [] and "No events match" in html


def _job(world: World, state: str) -> int:
    with session_scope(world.settings) as session:
        job = Job(kind="telemetry", state=state, targets="all", created_by="t")
        session.add(job)
        session.flush()
        return int(job.id)  # type: ignore[arg-type]


def _set_state(world: World, job_id: int, state: str) -> None:
    with session_scope(world.settings) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.state = state
        if state == "succeeded":
            job.started_at = job.finished_at = datetime.now(UTC)


def test_jobs_list_polls_while_a_job_is_queued_or_running(world: World) -> None:
    job_id = _job(world, "queued")
    html = world.client.get("/jobs?kind=telemetry").text
    live = re.search(r'<div id="jobs-live"[^>]*>', html)
    assert live and 'hx-get="/jobs?kind=telemetry"' in live.group(0) and "every 2s" in live.group(0)
    # the poll answers with the list alone
    partial = world.client.get("/jobs?kind=telemetry",
                               headers={"HX-Request": "true", "HX-Target": "jobs-live"}).text
    assert partial.lstrip().startswith("{#") is False and "<html" not in partial
    assert f'href="/jobs/{job_id}"' in partial and "hx-trigger" in partial
    _set_state(world, job_id, "succeeded")
    partial = world.client.get("/jobs?kind=telemetry",
                               headers={"HX-Request": "true", "HX-Target": "jobs-live"}).text
    assert "hx-trigger" not in partial  # nothing left to wait for: polling stops
    assert "succeeded" in partial


def test_job_queued_notice_is_replaced_when_the_job_moves_on(world: World) -> None:
    job_id = _job(world, "queued")
    page = world.client.get(f"/jobs/{job_id}?notice=queued").text
    assert 'id="notice"' in page and "Job queued" in page
    assert f'hx-get="/jobs/{job_id}/progress?notice=queued"' in page
    assert "hx-swap-oob" not in page  # only the polls replace it
    poll = world.client.get(f"/jobs/{job_id}/progress?notice=queued").text
    assert 'id="notice"' in poll and "Job queued" in poll
    _set_state(world, job_id, "running")
    assert f"Job #{job_id} running" in world.client.get(
        f"/jobs/{job_id}/progress?notice=queued").text
    _set_state(world, job_id, "succeeded")
    poll = world.client.get(f"/jobs/{job_id}/progress?notice=queued").text
    oob = re.search(r'<p id="notice"[^>]*hx-swap-oob="true"[^>]*>(.*?)</p>', poll, re.S)
    assert oob and f"Job #{job_id} succeeded" in oob.group(1)
    assert "hx-trigger" not in poll  # and polling stops
    # without the notice on the page, no out-of-band element (nothing to replace)
    assert "hx-swap-oob" not in world.client.get(f"/jobs/{job_id}/progress").text
