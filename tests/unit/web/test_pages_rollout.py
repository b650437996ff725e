"""The staged-rollout parts of the pages: the push form's rollout fields (queued as the job's
``rollout`` param, bad ones refused with the reason) and the job page's batches table."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.jobs import queue
from tests.unit.jobs.test_jobs import make_fleet
from tests.unit.web.test_pages import parse, text_of
from web.app import create_app


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, TestClient]]:
    settings = make_fleet(tmp_path_factory.mktemp("rollout-pages"),
                          names=("pi-a", "pi-b", "pi-c"), install=False)
    with TestClient(create_app(settings, run_jobs=False), base_url="http://localhost") as client:
        yield settings, client


def jobs(settings: Settings) -> int:
    with session_scope(settings) as session:
        return len(queue.list_jobs(session, 1000))


def test_the_push_form_queues_a_staged_push(site: tuple[Settings, TestClient]) -> None:
    settings, client = site
    page = client.get("/bundles/fc").text
    for field in ("canary", "batch", "max_fail", "health_bench", "rollback_on_fail"):
        assert f'name="{field}"' in page
    response = client.post("/bundles/fc/push", data={
        "targets": "all", "forks": "2", "canary": "pi-b", "batch": "50%", "max_fail": "10",
        "health_bench": "true", "rollback_on_fail": "true", "csrf_token": ""},
        follow_redirects=False)
    assert response.status_code == 303, response.text[:2000]
    job_id = int(re.fullmatch(r"/jobs/(\d+)\?notice=queued",
                              response.headers["location"]).group(1))  # type: ignore[union-attr]
    with session_scope(settings) as session:
        job = queue.get_job(session, job_id)
        assert job.params["rollout"] == {"canary": "pi-b", "batch": "50%", "max_fail": 10.0,
                                         "health_bench": True, "rollback_on_fail": True}
    queue.cancel(settings, job_id, actor="tester")
    # Without rollout fields, a plain push as before.
    plain = client.post("/bundles/fc/push", data={"targets": "all", "csrf_token": ""},
                        follow_redirects=False)
    plain_id = int(plain.headers["location"].split("/")[2].split("?")[0])
    with session_scope(settings) as session:
        assert "rollout" not in queue.get_job(session, plain_id).params
    queue.cancel(settings, plain_id, actor="tester")


@pytest.mark.parametrize(("fields", "words"), [
    ({"batch": "0"}, "rollout &#39;batch&#39; must be a device count"),
    ({"max_fail": "lots"}, "rollout &#39;max_fail&#39; must be a percentage"),
    ({"canary": "pi-zzz"}, "the canary must select devices among the targets"),
])
def test_a_bad_rollout_field_queues_nothing_and_says_why(
        site: tuple[Settings, TestClient], fields: dict[str, str], words: str) -> None:
    settings, client = site
    before = jobs(settings)
    response = client.post("/bundles/fc/push", data={"targets": "all", "csrf_token": "",
                                                     **fields}, follow_redirects=False)
    assert response.status_code == 400 and words in response.text
    assert f'value="{next(iter(fields.values()))}"' in response.text  # the form keeps it
    assert jobs(settings) == before


def test_the_job_page_shows_the_batches_live(site: tuple[Settings, TestClient]) -> None:
    settings, client = site
    job = queue.submit(settings, "push", {"bundle": "fc", "rollout": {"canary": "pi-a",
                                                                      "batch": "1"}},
                       "all", actor="tester")
    batches = [
        {"index": 0, "kind": "canary", "devices": ["pi-a"], "state": "ok", "failed": [],
         "note": None},
        {"index": 1, "kind": "batch", "devices": ["pi-b"], "state": "failed",
         "failed": ["pi-b"], "note": "1 of 1 device failed (max-fail 0%)"},
        {"index": 2, "kind": "batch", "devices": ["pi-c"], "state": "not started",
         "failed": [], "note": None}]
    with session_scope(settings) as session:
        row = queue.get_job(session, job.id)
        row.state = "running"
        row.progress = {"devices": {"pi-a": {"state": "active", "batch": 0},
                                    "pi-b": {"state": "failed", "batch": 1},
                                    "pi-c": {"state": "not started", "batch": 2}},
                        "rollout": {"options": job.params["rollout"], "batches": batches,
                                    "halted_at": 1, "health_runs": [],
                                    "rolled_back": [{"device": "pi-a", "ok": True,
                                                     "state": "rolled-back"}]}}
        session.add(row)
    partial = client.get(f"/jobs/{job.id}/progress").text
    table = parse(partial).tables["rollout-batches"]
    assert [text_of(r) for r in table[1:]] == [
        "canary | pi-a | ok | ", "1 | pi-b (failed) | failed | 1 of 1 device failed "
        "(max-fail 0%)", "2 | pi-c | not started | "]
    words = " ".join(re.sub(r"<[^>]+>", " ", partial).split())
    assert "Rolled back (rollback on fail): pi-a rolled-back" in words
    assert "canary pi-a · batch 1 · max fail 0%" in words
    assert 'hx-trigger="every 1s"' in partial  # still live while the job runs
    assert "batch 2" in partial  # each device row says its batch
    queue.cancel(settings, job.id, actor="tester")
