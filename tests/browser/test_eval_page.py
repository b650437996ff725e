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

from orchestrator import demo
from orchestrator.agents import install_agents
from orchestrator.bundles import build_bundle
from orchestrator.config import Settings
from orchestrator.datasets import build_dataset
from orchestrator.db import session_scope
from orchestrator.deploy import push
from orchestrator.devices import all_devices, sync_inventory
from orchestrator.evals import evaluate
from orchestrator.inventory import load_inventory
from orchestrator.models import Result
from orchestrator.verdicts import load_profile_file

from .conftest import save_screenshot


def demo_eval_run(home: Path, work: Path, model_cache: Path) -> int:
    """The demo's eval run (``orchestrator/cli_demo.py``), minus the benchmarks and the INT8
    variant the page does not need; returns its id."""
    cfg = Settings(home=home, database_url=None)
    files = demo.prepare(work, model_cache)
    with session_scope(cfg) as session:
        sync_inventory(session, load_inventory(files.inventory))
        devices = all_devices(session)
        bundle = build_bundle(session, cfg, files.model_dir, demo.DEMO_BUNDLE,
                              input_shapes=demo.INPUT_SHAPES,
                              extra={"streaming": load_profile_file(files.profile).to_dict()}
                              ).bundle
        session.expunge_all()
    assert all(o.ok for o in install_agents(cfg, devices)[1])
    assert all(o.ok for o in push(cfg, bundle, devices))
    with session_scope(cfg) as session:
        dataset = build_dataset(session, cfg, files.eval_dir, demo.DEMO_DATASET,
                                bundle=bundle).dataset
        session.expunge_all()
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
    for device, li in zip(sorted(d.name for d in demo.DEVICES), recommended.all(), strict=True):
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
