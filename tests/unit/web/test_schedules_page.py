"""Schedules as a daily tool (issue 17): the list shows each schedule's parameters; a schedule
can be paused and resumed, edited and run now (each audited); the bundle page's bench form can
schedule like its eval form; form errors say exactly what is wrong (``threads 'two'``), not
``e.g. [1, 2, 4] (got None)``.

The fleet is test_pages' ``site`` (three simulated Pis, ``first-crack@1`` on them); no worker
runs jobs here, so queued jobs stay queued.
"""

from __future__ import annotations

import html as htmllib
import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import col, select

from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError
from orchestrator.core.models import AuditEvent, Job, Schedule
from orchestrator.jobs import schedules
from tests.unit.web import test_pages as base
from tests.unit.web.test_pages import COOL, Site, get, parse

site = base.site  # the module-scoped fleet fixture, one instance for this module
REF = "first-crack@1"


def post(site: Site, url: str, data: dict[str, str] | None = None) -> object:
    return site.client.post(url, data=data or {}, follow_redirects=False)


def last_event(site: Site) -> AuditEvent:
    with session_scope(site.settings) as session:
        event = session.exec(select(AuditEvent).order_by(col(AuditEvent.id).desc())).first()
        assert event is not None
        session.expunge(event)
        return event


@pytest.fixture
def schedule(site: Site) -> int:
    created = schedules.create(site.settings, "bench",
                               {"bundle": REF, "threads": [1, 2], "runs": 7,
                                "shapes": {"log_mel": [1, 1, 98, 40]}},
                               COOL, actor="tester", cron="0 3 * * *")
    return int(created.id)  # type: ignore[arg-type]


def row(site: Site, schedule_id: int) -> list[str]:
    rows = parse(get(site, "/benchmarks")).tables["schedules"][1:]
    (found,) = [r["cells"] for r in rows if r["cells"][0] == str(schedule_id)]
    return found


def test_list_shows_parameters(site: Site, schedule: int) -> None:
    cells = row(site, schedule)
    assert cells[2] == REF
    assert "threads 1,2" in cells[3] and "runs 7" in cells[3]
    assert "shapes log_mel=1x1x98x40" in cells[3]


def test_pause_resume_and_run_now_are_audited(site: Site, schedule: int) -> None:
    response = post(site, f"/benchmarks/schedules/{schedule}/pause")
    assert response.status_code == 303  # type: ignore[attr-defined]
    assert "paused" in row(site, schedule)[6]
    assert (last_event(site).action, last_event(site).target) == ("schedule.pause",
                                                                  f"schedule:{schedule}")
    with session_scope(site.settings) as session:  # a paused schedule is not due
        session.get(Schedule, schedule).next_run_at = datetime.now(UTC) - timedelta(minutes=1)  # type: ignore[union-attr]
    assert [j for j in schedules.due(site.settings, datetime.now(UTC))
            if j.schedule_id == schedule] == []
    post(site, f"/benchmarks/schedules/{schedule}/resume")
    assert last_event(site).action == "schedule.resume"
    with session_scope(site.settings) as session:
        resumed = session.get(Schedule, schedule)
        assert resumed is not None and resumed.enabled
        assert resumed.next_run_at > datetime.now(UTC)  # its next cron time, not the past one
    response = post(site, f"/benchmarks/schedules/{schedule}/run")
    location = response.headers["location"]  # type: ignore[attr-defined]
    job_id = int(re.fullmatch(r"/jobs/(\d+)\?notice=queued", location)[1])  # type: ignore[index]
    with session_scope(site.settings) as session:
        job = session.get(Job, job_id)
        assert job is not None and (job.kind, job.targets, job.schedule_id) == (
            "bench", COOL, schedule)
        assert job.params["runs"] == 7 and job.created_by == "root"
        assert session.get(Schedule, schedule).last_job_id == job_id  # type: ignore[union-attr]
        job.state = "cancelled"
    assert last_event(site).action == "bench"
    assert post(site, "/benchmarks/schedules/999999/pause").status_code == 404  # type: ignore[attr-defined]


def test_edit_changes_params_and_time_or_says_what_is_wrong(site: Site, schedule: int) -> None:
    page = get(site, f"/benchmarks/schedules/{schedule}/edit")
    textarea = re.search(r'<textarea name="params"[^>]*>(.*?)</textarea>', page, re.S)
    assert textarea and json.loads(htmllib.unescape(textarea[1]))["runs"] == 7
    params = {"bundle": REF, "threads": "1, two"}
    bad = post(site, f"/benchmarks/schedules/{schedule}/edit",
               {"targets": COOL, "when": "cron", "cron": "15 4 * * 1",
                "params": json.dumps(params)})
    assert bad.status_code == 400  # type: ignore[attr-defined]
    text = htmllib.unescape(bad.text)  # type: ignore[attr-defined]
    assert "bench job: threads '1, two': 'two' is not a whole number; give thread counts " \
           "separated by commas, e.g. 1,2,4" in text
    bad = post(site, f"/benchmarks/schedules/{schedule}/edit",
               {"targets": COOL, "when": "cron", "cron": "15 4 * * 1", "params": "{runs: 3"})
    assert "parameters: not JSON at line 1, column 2" in bad.text  # type: ignore[attr-defined]
    with session_scope(site.settings) as session:
        assert session.get(Schedule, schedule).cron == "0 3 * * *"  # type: ignore[union-attr]
    ok = post(site, f"/benchmarks/schedules/{schedule}/edit",
              {"targets": "roastery", "when": "cron", "cron": "15 4 * * 1",
               "params": json.dumps({"bundle": REF, "threads": [4], "runs": 9})})
    assert ok.status_code == 303  # type: ignore[attr-defined]
    cells = row(site, schedule)
    assert "threads 4" in cells[3] and "runs 9" in cells[3] and cells[4] == "roastery"
    assert "15 4 * * 1" in cells[5]
    event = last_event(site)
    assert event.action == "schedule.update" and event.detail["params"]["runs"] == 9


def test_a_done_one_off_cannot_be_paused(site: Site) -> None:
    once = schedules.create(site.settings, "telemetry", {}, "all", actor="tester",
                            run_at=datetime.now(UTC) + timedelta(hours=1))
    with session_scope(site.settings) as session:
        done = session.get(Schedule, once.id)
        assert done is not None
        done.enabled, done.next_run_at = False, None
    with pytest.raises(EdgeFleetError, match="ran once at its time and is done"):
        schedules.set_paused(site.settings, int(once.id), True, actor="t")  # type: ignore[arg-type]
    assert "Pause" not in " ".join(row(site, int(once.id))[-1:])  # type: ignore[arg-type]


def test_bundle_bench_form_schedules_and_names_a_bad_thread_count(site: Site) -> None:
    page = get(site, f"/bundles/{REF}")
    bench_form = re.search(rf'<form method="post" action="/bundles/{REF}/bench".*?</form>',
                           page, re.S)
    assert bench_form and 'name="when" value="cron"' in bench_form[0]
    bad = post(site, f"/bundles/{REF}/bench", {"targets": COOL, "threads": "1,x",
                                              "runs": "5", "warmup": "1", "when": "now"})
    assert bad.status_code == 400  # type: ignore[attr-defined]
    assert "threads '1,x': 'x' is not a whole number" in htmllib.unescape(bad.text)  # type: ignore[attr-defined]
    assert "(got None)" not in bad.text  # type: ignore[attr-defined]
    before = {s.id for s in _all(site)}
    ok = post(site, f"/bundles/{REF}/bench", {"targets": COOL, "threads": "1,2", "runs": "5",
                                             "warmup": "1", "when": "cron",
                                             "cron": "30 2 * * *"})
    assert ok.headers["location"] == "/benchmarks?notice=schedule_created"  # type: ignore[attr-defined]
    (new,) = [s for s in _all(site) if s.id not in before]
    assert (new.kind, new.cron, new.targets) == ("bench", "30 2 * * *", COOL)
    assert new.params["threads"] == [1, 2] and new.params["runs"] == 5


def _all(site: Site) -> list[Schedule]:
    with session_scope(site.settings) as session:
        rows = schedules.list_schedules(session)
        session.expunge_all()
        return rows
