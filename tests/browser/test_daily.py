"""The web UI as a daily tool, in a real browser against a real ``edgefleet serve`` on a small
real fleet (tests/browser/fleet_data.py; three simulated Pis, real agent): read telemetry now
and verify from a device's page (the "Job queued" notice turns into the job's outcome by
itself), roll back with a confirmation, sort the Fleet table, narrow the telemetry chart to
a time range, and find runs by filter. No console error, no request beyond 127.0.0.1.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from .conftest import OffsiteGuard
from .fleet_data import COOL, HOT, WEAK, make_fleet

JOB_TIMEOUT = 45_000  # ms


def test_device_actions_fleet_sorting_and_run_filters(home: Path, tmp_path: Path, serve: Any,
                                                      page: Any) -> None:
    fleet = make_fleet(home, tmp_path / "fleet")
    server = serve()
    server.wait_job(fleet.job_id)
    guard = OffsiteGuard(page, server)

    # Read telemetry now: a job for this device; the notice follows it to its end.
    page.goto(f"{server.url}/devices/{COOL}")
    page.locator("#device-actions").get_by_role("button", name="Read telemetry now").click()
    page.wait_for_url(re.compile(r"/jobs/\d+\?notice=queued$"))
    expect(page.locator("#notice")).to_have_text(re.compile(r"^Job #\d+ succeeded"),
                                                 timeout=JOB_TIMEOUT)
    expect(page.locator("#job-progress h2 .state")).to_have_text("succeeded")
    job_id = int(re.search(r"/jobs/(\d+)", page.url)[1])  # type: ignore[index]
    job = server.get(f"/api/jobs/{job_id}")
    assert (job["kind"], job["targets"]) == ("telemetry", COOL)

    # Verify, then Rollback (which asks first: the page fixture accepts the dialog).
    page.goto(f"{server.url}/devices/{COOL}")
    page.locator("#device-actions").get_by_role("button", name="Verify").click()
    expect(page.locator("#notice")).to_have_text(re.compile(r"^Job #\d+ succeeded"),
                                                 timeout=JOB_TIMEOUT)
    page.goto(f"{server.url}/devices/{COOL}")
    page.locator("#device-actions").get_by_role("button", name="Rollback").click()
    expect(page.locator("#notice")).to_have_text(re.compile(r"^Job #\d+ (succeeded|failed)"),
                                                 timeout=JOB_TIMEOUT)
    device = server.get(f"/api/devices/{COOL}")
    assert device["active_bundle"] == fleet.refs[0], device  # back to first-crack@1
    page.goto(f"{server.url}/devices/{COOL}?operation=rollback")
    expect(page.locator("#deployments tbody tr")).to_have_count(1)
    expect(page.locator("#deployments tbody tr td").nth(1)).to_have_text("rollback")

    # Time range: 1 h holds every snapshot just taken; the chart draws.
    page.get_by_role("group", name="Time range").get_by_role("link", name="1 h").click()
    page.wait_for_url(re.compile(r"range=1h"))
    expect(page.locator("#telemetry-range a[aria-current]")).to_have_text("1 h")
    page.locator(".uplot").first.wait_for()

    # Fleet: counts, then sort by temperature, hottest first on the second click.
    page.goto(server.url + "/")
    expect(page.locator("#fleet-summary")).to_contain_text("3 of 3 online")
    names = page.locator("#fleet tbody tr td:first-child a")
    expect(names).to_have_text([WEAK, COOL, HOT])  # by name
    # The headers are links sorting the whole fleet on the server (hottest first on the first
    # click); clicking again reverses; the 15 s refresh and the filter keep the order.
    temp = page.locator("#fleet thead th").nth(3).get_by_role("link")
    temp.click()
    page.wait_for_url(re.compile(r"sort=temp&order=desc"))
    expect(names).to_have_text([HOT, WEAK, COOL])
    expect(page.locator("#fleet thead th").nth(3)).to_have_attribute("aria-sort", "descending")
    expect(page.locator("#fleet-live")).to_have_attribute(
        "hx-get", re.compile(r"sort=temp&order=desc"))
    page.locator("#fleet thead th").nth(3).get_by_role("link").click()
    page.wait_for_url(re.compile(r"sort=temp&order=asc"))
    expect(names).to_have_text([COOL, WEAK, HOT])
    expect(page.locator("#fleet thead th").nth(3)).to_have_attribute("aria-sort", "ascending")
    page.locator("#pattern").fill("all")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"pattern=all&sort=temp&order=asc"))
    expect(names).to_have_text([COOL, WEAK, HOT])

    # Runs: the kind column and a filter that keeps to one bundle version.
    page.goto(server.url + "/runs")
    form = page.locator("#runs-filter")
    form.locator("input[name=bundle]").fill(fleet.refs[1])
    form.get_by_role("button", name="Filter").click()
    rows = page.locator("#runs tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.locator("td").nth(1)).to_have_text("bench")
    expect(rows.locator("td").nth(2)).to_have_text(fleet.refs[1])

    assert guard.blocked == [], guard.blocked
    assert guard.console_errors == [], guard.console_errors
