"""The device page as a daily tool (issue 17): Verify, Rollback and "Read telemetry now" for
operators (queued as the existing job kinds, for this device alone, audited, CSRF like every
form), the telemetry chart over a chosen time range, the deployment history filter; and the
Fleet page's counts over the whole fleet, its sortable columns and its self-refresh.

The fleet is test_pages' ``site`` (three simulated Pis, real agent, a real push, bench and
telemetry); an 8-day-old snapshot and a failed rollback row are added as plain rows.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select

from orchestrator.access.audit import JOB_ACTIONS
from orchestrator.access.auth import create_token
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import AuditEvent, Deployment, Job, TelemetrySnapshot
from orchestrator.fleet.summary import fleet_summary
from tests.unit.web import test_pages as base
from tests.unit.web.test_pages import COOL, HOT, WEAK, Site, get, parse
from web.app import create_app

site = base.site  # the module-scoped fleet fixture, one instance for this module
OLD = datetime.now(UTC) - timedelta(days=8)


@pytest.fixture(scope="module")
def extra(site: Site) -> Site:
    with session_scope(site.settings) as session:
        session.add(TelemetrySnapshot(device_name=HOT, taken_at=OLD, temp_c=40.0,
                                      freq_mhz=2400.0, throttled_bits=0))
        session.add(Deployment(device_name=HOT, operation="rollback", state="failed",
                               bundle_name="first-crack", bundle_version="1",
                               error="no previous version"))
    return site


def chart_times(html: str) -> list[float]:
    return json.loads(parse(html).scripts["telemetry-data"])["x"]


def test_telemetry_range_narrows_the_chart(extra: Site) -> None:
    everything = chart_times(get(extra, f"/devices/{HOT}"))
    assert min(everything) == pytest.approx(OLD.timestamp())
    assert len(everything) == 3  # the two real snapshots and the old one
    for span in ("1h", "24h", "7d"):
        html = get(extra, f"/devices/{HOT}?range={span}")
        assert len(chart_times(html)) == 2, span  # the old one is 8 days old
        assert f'href="/devices/{HOT}?range={span}" aria-current="true"' in html
    day = (OLD - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    after = (OLD + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    html = get(extra, f"/devices/{HOT}?range=custom&since={day}&until={after}")
    assert chart_times(html) == [pytest.approx(OLD.timestamp())]
    html = get(extra, f"/devices/{HOT}?range=custom&since=yesterday", status=400)
    assert "from &#39;yesterday&#39; is not a time: use YYYY-MM-DD HH:MM (UTC)" in html
    assert len(chart_times(html)) == 3  # said above the latest snapshots
    html = get(extra, f"/devices/{HOT}?range=custom&since={after}&until={day}", status=400)
    assert "the time range ends" in html


def test_deployment_history_filters(extra: Site) -> None:
    def ops(query: str) -> list[list[str]]:
        rows = parse(get(extra, f"/devices/{HOT}{query}")).tables.get("deployments", [])
        return [r["cells"] for r in rows[1:]]

    assert {r[1] for r in ops("")} == {"push", "rollback"}
    assert [r[1] for r in ops("?operation=rollback")] == ["rollback"]
    assert [r[4] for r in ops("?state=active")] == ["active"]
    assert ops("?bundle=first-crack@9") == []
    assert "No deployments match these filters." in get(extra, f"/devices/{HOT}?bundle=x")


def test_fleet_summary_counts_the_whole_fleet(extra: Site) -> None:
    with session_scope(extra.settings) as session:
        summary = fleet_summary(session)
    # all three answered just now; pi5-hot's and pi4-weak's readings have "now" bits
    # (0xe0008: soft temp limit now; 0x50000: sticky only -> not now)
    assert (summary.total, summary.online, summary.throttled) == (3, 3, 1)
    assert (summary.with_bundle, summary.on_newest) == (3, 3)
    html = get(extra, "/")
    counts = re.search(r'<ul class="summary" id="fleet-summary".*?</ul>', html, re.S)
    assert counts
    text = " ".join(re.sub(r"<[^>]+>", " ", counts.group(0)).split())
    assert text == "3 of 3 online 1 throttled now 3 of 3 with a bundle on its newest version"


def test_fleet_refreshes_itself_and_columns_sort(extra: Site) -> None:
    html = get(extra, "/?pattern=roastery")
    live = re.search(r'<div id="fleet-live"[^>]*>', html)
    assert live and 'hx-get="/?pattern=roastery&amp;page=1"' in live.group(0)
    assert 'hx-trigger="every 15s"' in live.group(0)
    partial = extra.client.get("/?pattern=roastery&page=1",
                               headers={"HX-Request": "true", "HX-Target": "fleet-live"}).text
    assert "<html" not in partial and partial.lstrip().startswith('<div id="fleet-live"')
    assert f'href="/devices/{HOT}"' in partial and f'href="/devices/{WEAK}"' not in partial
    # sorting is the server's (tests/unit/web/test_fleet_sort.py): headers are links
    page = parse(html)
    assert ("table", {"class": "paper", "id": "fleet", "data-sort": "name",
                      "data-order": "asc"}) in page.tags
    hottest = get(extra, "/?sort=temp&order=desc")
    assert hottest.index(f'href="/devices/{HOT}"') < hottest.index(f'href="/devices/{COOL}"')


_TOKENS: dict[str, str] = {}


def _client(settings: Settings) -> tuple[TestClient, dict[str, str]]:
    """A client of the site's app and operator/viewer tokens (made once: with a token the site
    leaves its tokenless local mode, so these tests come last in the module)."""
    client = TestClient(create_app(settings, run_jobs=False), base_url="http://localhost")
    if not _TOKENS:
        _TOKENS.update({role: create_token(settings, f"{role}-dev", role)[1]
                        for role in ("admin", "operator", "viewer")})
    return client, _TOKENS


@pytest.mark.parametrize("action", ["telemetry", "verify", "rollback"])
def test_device_actions_queue_the_job_for_this_device_alone(extra: Site, action: str) -> None:
    client, tokens = _client(extra.settings)
    bearer = {"Authorization": f"Bearer {tokens['operator']}"}
    page = client.get(f"/devices/{COOL}", headers=bearer).text
    assert f'action="/devices/{COOL}/{action}"' in page
    response = client.post(f"/devices/{COOL}/{action}", headers=bearer, follow_redirects=False)
    assert response.status_code == 303, response.text[:500]
    job_id = int(re.fullmatch(r"/jobs/(\d+)\?notice=queued", response.headers["location"])[1])
    with session_scope(extra.settings) as session:
        job = session.get(Job, job_id)
        assert job is not None and (job.kind, job.targets, job.state) == (action, COOL, "queued")
        assert job.created_by == "operator-dev"
        if action in JOB_ACTIONS:  # verify and telemetry read only: not audited
            event = session.exec(select(AuditEvent).order_by(col(AuditEvent.id).desc())).first()
            assert event is not None and (event.actor, event.action) == ("operator-dev", action), \
                event
        job.state = "cancelled"  # not run here (no workers): keep the queue clean


def test_device_actions_need_an_operator_csrf_and_a_real_action(extra: Site) -> None:
    client, tokens = _client(extra.settings)
    viewer = {"Authorization": f"Bearer {tokens['viewer']}"}
    assert 'id="device-actions"' not in client.get(f"/devices/{COOL}", headers=viewer).text
    assert client.post(f"/devices/{COOL}/verify", headers=viewer).status_code == 403
    operator = {"Authorization": f"Bearer {tokens['operator']}"}
    assert client.post(f"/devices/{COOL}/reboot", headers=operator).status_code == 404
    assert client.post("/devices/nope/verify", headers=operator).status_code == 404
    # a cookie session must echo its CSRF secret
    login = client.post("/login", data={"token": tokens["operator"]}, follow_redirects=False)
    assert login.status_code == 303
    refused = client.post(f"/devices/{COOL}/verify", follow_redirects=False)
    assert refused.status_code == 403 and "CSRF" in refused.text
    page = client.get(f"/devices/{COOL}").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token
    ok = client.post(f"/devices/{COOL}/verify", data={"csrf_token": token[1]},
                     follow_redirects=False)
    assert ok.status_code == 303
    with session_scope(extra.settings) as session:
        for job in session.exec(select(Job).where(Job.state == "queued")).all():
            job.state = "cancelled"


