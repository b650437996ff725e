"""The web control plane in a real browser (Debian's chromium under Playwright) against a real
``edgefleet serve`` and two real sshd test hosts: log in, see the fleet, push a bundle from its
page and watch the job, benchmark from the UI and read the run's charts and table, compare, and
a viewer's push refused. Screenshots go to ``test-artifacts/screenshots`` and ``docs/screenshots``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from playwright.sync_api import expect

from ..conftest import Cli
from ..fleet.test_push_e2e import model_folder, setup_fleet
from .conftest import login, save_screenshot

JOB_URL = re.compile(r"/jobs/(\d+)(\?.*)?$")
JOB_TIMEOUT = 45_000  # ms: a push or a small benchmark takes a few seconds here
TERMINAL = re.compile(r"^(succeeded|failed|cancelled|interrupted)$")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_job_succeeded(page, server, job_id: int) -> None:
    """Until the job page's live state is terminal; then it must be "succeeded" (else the
    job's error, from the API, is the failure message)."""
    state = page.locator("#job-progress h2 .state")
    expect(state).to_have_text(TERMINAL, timeout=JOB_TIMEOUT)
    job = server.get(f"/api/jobs/{job_id}")
    assert job["state"] == "succeeded", job
    expect(state).to_have_text("succeeded")


def test_login_fleet_push_bench_run_compare_viewer(cli: Cli, tmp_path: Path, sshd_factory,
                                                   serve, page, admin_token: str,
                                                   viewer_token: str) -> None:
    hosts = sshd_factory(2)
    names = [h.name for h in hosts]
    setup_fleet(cli, tmp_path, hosts)
    # The bench form has no shape field: the model's dynamic batch dim is fixed at build time.
    built = cli("bundle", "build", model_folder(tmp_path), "--name", "first-crack",
                "--shape", "log_mel=1x1x98x40", "--json").json
    ref = f"first-crack@{built['version']}"
    server = serve(token=admin_token)

    login(page, server, admin_token, "admin")

    # Fleet: both sshd hosts, online.
    rows = page.locator("#fleet tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.locator("td:first-child a")).to_have_text(names)
    for row in rows.all():
        expect(row.locator("td").nth(1)).to_contain_text("online")
    save_screenshot(page, "fleet")

    # Bundles -> the bundle's page -> push form for the group: a job, both devices active.
    nav = page.get_by_role("navigation", name="Sections")
    nav.get_by_role("link", name="Bundles", exact=True).click()
    page.locator("#bundles").get_by_role("link", name=built["version"], exact=True).click()
    page.wait_for_url(server.url + f"/bundles/{ref}")
    expect(page.locator("h1")).to_have_text(ref)
    push = page.locator(f'form[action="/bundles/{ref}/push"]')
    push.locator("input[name=targets]").fill("pis")
    push.get_by_role("button", name=f"Push {ref}").click()
    page.wait_for_url(JOB_URL)
    progress = page.locator("#job-progress table.progress tbody tr")
    for name in names:
        state = progress.filter(has=page.locator(f'a[href="/devices/{name}"]')).locator("td")
        expect(state.nth(1)).to_have_text("active", timeout=JOB_TIMEOUT)
    expect(page.locator("#job-progress h2 .state")).to_have_text("succeeded")
    save_screenshot(page, "job")
    for host in hosts:  # on disk, on each device: the manifest's files, hash for hash
        for entry in built["files"]:
            assert sha256(host.root / "current" / entry["path"]) == entry["sha256"], (
                host.name, entry["path"])

    # Benchmark from the bundle page; the job links to its run.
    page.goto(server.url + f"/bundles/{ref}")
    bench = page.locator(f'form[action="/bundles/{ref}/bench"]')
    bench.locator("input[name=targets]").fill("pis")
    bench.locator("input[name=threads]").fill("1")
    bench.locator("input[name=warmup]").fill("1")
    bench.locator("input[name=runs]").fill("30")
    expect(page.locator("table.facts tr", has_text="active on")).to_contain_text(", ".join(names))
    save_screenshot(page, "bundle")
    bench.get_by_role("button", name=f"Benchmark {ref}").click()
    page.wait_for_url(JOB_URL)
    bench_job = int(JOB_URL.search(page.url).group(1))
    wait_job_succeeded(page, server, bench_job)
    run_link = page.locator("#job-progress a[href^='/runs/']")
    expect(run_link).to_have_count(1)
    run_id = int(run_link.get_attribute("href").rsplit("/", 1)[1])
    assert server.get(f"/api/jobs/{bench_job}")["run_id"] == run_id
    run_link.click()
    page.wait_for_url(server.url + f"/runs/{run_id}")

    # The run: a report row per device (one thread count), a drawn latency chart per result.
    report = page.locator("table.report tbody tr")
    expect(report).to_have_count(2)
    for row, name in zip(report.all(), names, strict=True):
        expect(row.locator("td").nth(1)).to_contain_text(name)
    histograms = page.locator('.chart[data-chart="hist"] canvas')
    expect(histograms).to_have_count(2)
    for canvas in histograms.all():
        expect(canvas).to_be_visible()
        box = canvas.bounding_box()
        assert box is not None and box["width"] > 0 and box["height"] > 0, box
        width, height = canvas.evaluate("c => [c.width, c.height]")
        assert width > 0 and height > 0  # the bitmap uPlot drew into, not just a CSS box
    expect(page.locator('.chart[data-chart="cdf"] canvas')).to_have_count(2)
    save_screenshot(page, "run")

    # Compare: the run against itself, picked with the page's form.
    page.goto(server.url + "/runs/compare")
    pick = page.locator("form", has=page.locator("select[name=a]"))
    pick.locator("select[name=a]").select_option(str(run_id))
    pick.locator("select[name=b]").select_option(str(run_id))
    pick.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(rf"/runs/compare\?a={run_id}&b={run_id}"))
    comparison = page.locator("#comparison tbody tr")
    expect(comparison).to_have_count(2)
    for row, name in zip(comparison.all(), names, strict=True):
        expect(row.locator("td").first).to_contain_text(name)
        expect(row.locator("td").nth(4)).to_contain_text("1.00")  # B/A of identical samples
    save_screenshot(page, "compare")

    # A viewer sees the bundle page, but its push is refused and queues nothing.
    pushes = len(server.get("/api/jobs", params={"kind": "push"}))
    login(page, server, viewer_token, "viewer")
    page.goto(server.url + f"/bundles/{ref}")
    expect(page.locator(f"form[action='/bundles/{ref}/push']")).to_have_count(0)
    expect(page.get_by_text("need an operator token")).to_be_visible()
    # Even with the session's valid CSRF token, a viewer's push is refused.
    csrf = re.search(r'"X-CSRF-Token":\s*"([^"]+)"',
                     page.locator("body").get_attribute("hx-headers") or "")
    assert csrf is not None
    refused = page.request.post(server.url + f"/bundles/{ref}/push", max_redirects=0,
                                form={"csrf_token": csrf.group(1), "targets": "pis"})
    assert refused.status == 403
    assert len(server.get("/api/jobs", params={"kind": "push"})) == pushes
