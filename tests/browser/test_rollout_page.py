"""A staged rollout from the bundle page in a real browser, against a real ``edgefleet serve`` and
three real sshd hosts, one of them stopped: the job page shows the batches as they run and end
(canary ok, the batch with the stopped host failed, the last one not started), and the canary
is rolled back."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import expect

from ..conftest import Cli
from ..fleet.test_push_e2e import active_manifest, model_folder, setup_fleet
from .conftest import login, save_screenshot
from .test_ui import JOB_TIMEOUT, JOB_URL, TERMINAL

SHAPE = ("--shape", "log_mel=1x1x98x40")


def test_a_rollout_from_the_push_form_shows_its_batches(cli: Cli, tmp_path: Path, sshd_factory,
                                                        serve, page, admin_token: str) -> None:
    hosts = sshd_factory(3)
    setup_fleet(cli, tmp_path, hosts)
    cli("bundle", "build", model_folder(tmp_path, 0), "--name", "m", *SHAPE, "--json")
    cli("push", "m@1", "pis", "--json")
    cli("bundle", "build", model_folder(tmp_path, 1), "--name", "m", *SHAPE, "--json")
    hosts[1].stop()  # pi2: the first batch after the canary fails
    server = serve(token=admin_token)
    login(page, server, admin_token, "admin")

    page.goto(server.url + "/bundles/m@2")
    push = page.locator('form[action="/bundles/m@2/push"]')
    push.locator("input[name=targets]").fill("pis")
    push.locator("input[name=canary]").fill("pi1")
    push.locator("input[name=batch]").fill("1")
    push.locator("input[name=max_fail]").fill("0")
    push.get_by_label("roll back the updated devices if it halts").check()
    push.get_by_role("button", name="Push m@2").click()
    page.wait_for_url(JOB_URL)
    job_id = int(JOB_URL.search(page.url).group(1))

    expect(page.locator("#job-progress h2 .state")).to_have_text(TERMINAL, timeout=JOB_TIMEOUT)
    rows = page.locator("#rollout-batches tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.locator("td:nth-child(1)")).to_have_text(["canary", "1", "2"])
    expect(rows.locator("td:nth-child(2)")).to_have_text(["pi1", re.compile(r"pi2\s*\(failed\)"),
                                                          "pi3"])
    expect(rows.locator("td:nth-child(3)")).to_have_text(["ok", "failed", "not started"])
    expect(page.locator("#job-progress")).to_contain_text("Rolled back (rollback on fail): pi1")
    expect(page.locator("#job-progress .flash-error")).to_contain_text(
        "rollout halted at batch 1 of 3")
    save_screenshot(page, "rollout")
    job = server.get(f"/api/jobs/{job_id}")
    assert job["state"] == "failed" and job["result"]["rollout"]["halted_at"] == 1
    assert [active_manifest(h)["version"] for h in (hosts[0], hosts[2])] == ["1", "1"]
