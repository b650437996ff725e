"""An evaluation run's page in a real browser (Debian's chromium under Playwright) against a real
``edgefleet serve``. The run is a real one, made the way ``edgefleet demo`` makes it: the demo's
trained first-crack classifier (with its streaming profile in the manifest) pushed to the demo's
three simulated local Pis (real agent, real onnxruntime, simulated sensors only), evaluated on
the demo's labelled WAV windows at 1 and 2 threads. The page must state the agreement, show one
confusion matrix for the six agreeing results, draw the sweep chart, and give the deployment
verdict per device x threads with a recommendation per device, without a console error.
Screenshot: ``eval`` (test-artifacts/screenshots; docs/screenshots with
EDGEFLEET_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import expect
from sqlmodel import col, select

from orchestrator.artifacts.bundles import build_bundle
from orchestrator.artifacts.datasets import build_dataset
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Result
from orchestrator.demo import scenario
from orchestrator.fleet.agents import install_agents
from orchestrator.fleet.deploy import push
from orchestrator.inventory.devices import all_devices, sync_inventory
from orchestrator.inventory.reader import load_inventory
from orchestrator.measure.evals import evaluate
from orchestrator.measure.verdicts import load_profile_file

from .conftest import login, save_screenshot
from .test_ui import JOB_URL, wait_job_succeeded


def demo_pushed(home: Path, work: Path, model_cache: Path) -> tuple[Any, Any, list[Any]]:
    """The demo's FP32 bundle pushed to its three simulated Pis and its dataset built:
    (bundle, dataset, devices)."""
    cfg = Settings(home=home, database_url=None)
    files = scenario.prepare(work, model_cache)
    with session_scope(cfg) as session:
        sync_inventory(session, load_inventory(files.inventory))
        devices = all_devices(session)
        bundle = build_bundle(session, cfg, files.model_dir, scenario.DEMO_BUNDLE,
                              extra={"streaming": load_profile_file(files.profile).to_dict()}
                              ).bundle
        session.expunge_all()
    assert all(o.ok for o in install_agents(cfg, devices)[1])
    assert all(o.ok for o in push(cfg, bundle, devices))
    with session_scope(cfg) as session:
        dataset = build_dataset(session, cfg, files.eval_dir, scenario.DEMO_DATASET,
                                bundle=bundle).dataset
        session.expunge_all()
    return bundle, dataset, devices


def demo_eval_run(home: Path, work: Path, model_cache: Path) -> int:
    """The demo's eval run (``orchestrator/cli/demo.py``), minus the benchmarks and the INT8
    variant the page does not need; returns its id."""
    cfg = Settings(home=home, database_url=None)
    bundle, dataset, devices = demo_pushed(home, work, model_cache)
    run, outcomes = evaluate(cfg, bundle, dataset, devices, [1, 2], None, 0.5, targets="all")
    assert all(o.ok for o in outcomes), [o.as_dict() for o in outcomes]
    assert run.id is not None
    return run.id


def test_eval_run_page_agreement_matrix_verdicts(home: Path, tmp_path: Path, serve,
                                                  page: Any, demo_model_cache: Path) -> None:
    run_id = demo_eval_run(home, tmp_path / "demo", demo_model_cache)
    with session_scope(Settings(home=home, database_url=None)) as session:
        results = list(session.exec(select(Result).where(Result.run_id == run_id)
                                    .order_by(col(Result.device_name), col(Result.threads))))
        matrices = {str(r.detail["eval"]["confusion_matrix"]) for r in results}
        cm = results[0].detail["eval"]["confusion_matrix"]
        session.expunge_all()
    assert len(results) == 6
    assert len(matrices) == 1  # one model, the same windows: the fleet agrees

    # Script errors, and every failed request by URL. Chromium asks for /favicon.ico on its
    # own and the app serves none: that 404 (and its "Failed to load resource" console line)
    # is the browser's, not the page's.
    errors: list[str] = []
    missing: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and not
            m.text.startswith("Failed to load resource") else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("response", lambda r: missing.append(f"{r.status} {r.url}") if r.status >= 400
            and not r.url.endswith("/favicon.ico") else None)
    server = serve()
    page.goto(server.url + f"/runs/{run_id}")

    expect(page.locator("#agreement")).to_have_text(
        "all 6 results produced the same confusion matrix (and the same prediction on all 64 "
        "samples)")
    expect(page.locator("#eval-metrics tbody tr")).to_have_count(6)
    # One block for the six agreeing results, with the stored counts.
    expect(page.locator("table.confusion")).to_have_count(1)
    expect(page.locator("#eval-0 .whose")).to_have_text("all 6 results")
    matrix = page.locator("#confusion-0 tbody tr")
    expect(matrix).to_have_count(2)
    for row, counts in zip(matrix.all(), cm, strict=True):
        expect(row.locator("td")).to_have_text([str(n) for n in counts])
    expect(page.locator("#confusion-0")).to_be_visible()
    sweep = page.locator(".sweep-chart canvas")
    expect(sweep).to_have_count(1)
    width, height = sweep.evaluate("c => [c.width, c.height]")
    assert width > 0 and height > 0  # uPlot drew into it

    # The verdict: six rows, and every device named in a recommendation sentence.
    verdicts = page.locator("#verdict-table tbody tr")
    expect(verdicts).to_have_count(6)
    expect(page.locator("#verdict-table")).to_be_visible()
    for row, result in zip(verdicts.all(), results, strict=True):
        expect(row.locator("td").nth(0)).to_contain_text(result.device_name)
        expect(row.locator("td").nth(1)).to_have_text(str(result.threads))
    recommended = page.locator("#recommended li")
    expect(recommended).to_have_count(3)
    for device, li in zip(sorted(d.name for d in scenario.DEVICES), recommended.all(), strict=True):
        expect(li.locator("strong")).to_have_text(device)
    # The demo's hot Pi 5 without a cooler throttles: no thread count qualifies there.
    expect(page.locator("#recommended li", has_text="pi5-roaster")).to_contain_text(
        "no recommendation")
    expect(page.locator("#verdicts .caption")).to_contain_text(
        "Window latency = preprocessing + inference.")

    # Tall enough for the agreement, the matrix, the sweep and the verdict in one picture.
    page.set_viewport_size({"width": 1280, "height": 1500})
    save_screenshot(page, "eval")
    assert errors == [] and missing == []


def test_evaluate_form_queues_a_job_whose_run_page_scores_every_device(
        home: Path, tmp_path: Path, serve, page: Any, admin_token: str,
        demo_model_cache: Path) -> None:
    """The bundle page's Evaluate form, as an operator uses it: pick the dataset, target the
    fleet, one thread count and a threshold; the job evaluates on every device and links to a
    run page that scores each of them at that threshold."""
    bundle, dataset, devices = demo_pushed(home, tmp_path / "demo", demo_model_cache)
    ref, dataset_ref = f"{bundle.name}@{bundle.version}", f"{dataset.name}@{dataset.version}"
    server = serve(token=admin_token)
    login(page, server, admin_token, "admin")
    page.goto(server.url + f"/bundles/{ref}")
    form = page.locator("#eval-form")
    expect(form.locator("select[name=dataset] option")).to_have_count(1)
    form.locator("select[name=dataset]").select_option(dataset_ref)
    form.locator("input[name=targets]").fill("all")
    form.locator("input[name=eval_threads]").fill("1")
    form.locator("input[name=threshold]").fill("0.7")
    form.get_by_role("button", name=f"Evaluate {ref}").click()
    page.wait_for_url(JOB_URL)
    job_id = int(JOB_URL.search(page.url).group(1))  # type: ignore[union-attr]
    wait_job_succeeded(page, server, job_id)
    job = server.get(f"/api/jobs/{job_id}")
    assert job["kind"] == "eval" and job["params"]["dataset"] == dataset_ref
    assert job["params"]["threads"] == [1] and job["params"]["threshold"] == 0.7

    run_link = page.locator("#job-progress a[href^='/runs/']")
    expect(run_link).to_have_count(1)
    run_link.click()
    page.wait_for_url(server.url + f"/runs/{job['run_id']}")
    rows = page.locator("#eval-metrics tbody tr")
    expect(rows).to_have_count(len(devices))
    for row, name in zip(rows.all(), sorted(d.name for d in devices), strict=True):
        expect(row).to_contain_text(name)
    run = server.get(f"/api/runs/{job['run_id']}")
    assert run["params"]["threshold"] == 0.7 and run["params"]["dataset"]["name"] == dataset.name
    assert all(r["ok"] and r["threads"] == 1 and r["eval"]["metrics"]["threshold"] == 0.7
               for r in run["results"]), run["results"]
