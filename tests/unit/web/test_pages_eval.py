"""The run page of an evaluation run, in-process: a real eval on two simulated local Pis (real
agent, real onnxruntime) shows its metrics, confusion matrices, sweep and the agreement verdict;
results that agree share one confusion matrix block; a run with a streaming profile shows the
deployment verdict per device x threads and the recommendation in words, one without says how to
give one; a stored run whose devices disagree names each differing sample and every device's
prediction."""

from __future__ import annotations

import json
import re
from html import unescape

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from sqlmodel import col, select

from orchestrator.artifacts.bundles import build_bundle
from orchestrator.artifacts.datasets import build_dataset
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Result, Run
from orchestrator.demo.model import make_demo_classifier
from orchestrator.demo.simulate import create_simulated_device
from orchestrator.fleet.agents import install_agents
from orchestrator.fleet.deploy import push
from orchestrator.inventory.devices import all_devices, sync_inventory
from orchestrator.inventory.reader import load_inventory
from orchestrator.measure.evals import evaluate
from orchestrator.measure.reports import format_number
from orchestrator.measure.runs import unpack_floats
from tests.unit.web.test_pages import parse, text_of
from web.app import create_app

LABELS = ["background", "crack"]
DEVICES = ("pi-a", "pi-b")
PROFILE = {"window_s": 2.0, "hop_s": 1.0, "threshold": 0.5, "min_positive": 2,
           "confirm_windows": 3}


class Site:
    def __init__(self, settings: Settings, client: TestClient, run_id: int,
                 profiled_id: int) -> None:
        self.settings, self.client, self.run_id, self.profiled_id = (settings, client, run_id,
                                                                     profiled_id)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    base = tmp_path_factory.mktemp("eval-pages")
    settings = Settings(home=base / "home", database_url=None)
    hosts = {}
    for name in DEVICES:
        sim = create_simulated_device(base / "hw" / name)
        hosts[name] = sim.local_host_vars(base / "root" / name)
    inventory = base / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    model = base / "model"
    make_demo_classifier(model / "model.onnx", seed=0)
    (model / "config.json").write_text(json.dumps({"id2label": dict(enumerate(LABELS))}))
    x = np.random.default_rng(1).standard_normal((8, 1, 98, 40)).astype(np.float32)
    npz = base / "set.npz"
    np.savez(npz, log_mel=x, labels=np.array([0, 1] * 4))
    with session_scope(settings) as session:
        sync_inventory(session, load_inventory(inventory))
        devices = all_devices(session)
        bundle = build_bundle(session, settings, model, "crack").bundle
        dataset = build_dataset(session, settings, npz, "set", bundle=bundle).dataset
        session.expunge_all()
    assert all(o.ok for o in install_agents(settings, devices)[1])
    assert all(o.ok for o in push(settings, bundle, devices))
    run, outcomes = evaluate(settings, bundle, dataset, devices, [1], None, 0.5)
    assert all(o.ok for o in outcomes), [o.as_dict() for o in outcomes]
    # The same model at 1 and 2 threads, judged against a 2 s window / 1 s hop stream.
    profiled, outcomes = evaluate(settings, bundle, dataset, devices, [1, 2], None, 0.5,
                                  profile=PROFILE)
    assert all(o.ok for o in outcomes), [o.as_dict() for o in outcomes]
    assert run.id is not None and profiled.id is not None
    client = TestClient(create_app(settings, run_jobs=False), base_url="http://localhost")
    return Site(settings, client, run.id, profiled.id)


def page(client: TestClient, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, response.text[:2000]
    return response.text


def test_eval_run_page_shows_metrics_matrices_sweep_and_agreement(site: Site) -> None:
    settings, client, run_id = site.settings, site.client, site.run_id
    html = page(client, f"/runs/{run_id}")
    doc = parse(html)
    rows = doc.tables["eval-metrics"]
    assert rows[0]["cells"][:3] == ["device", "threads", "accuracy"]
    with session_scope(settings) as session:
        stored = {r.device_name: r.detail["eval"]
                  for r in session.exec(select(Result).where(Result.run_id == run_id))}
    for row in rows[1:]:
        device = row["cells"][0].split()[0]
        assert row["cells"][2] == f"{stored[device]['accuracy']:.3f}"
        assert row["cells"][5] == f"{stored[device]['f1']:.3f}"
    matrix = doc.tables["confusion-0"]
    assert matrix[0]["cells"] == ["true \\ predicted", *LABELS]
    cm = stored[DEVICES[0]]["confusion_matrix"]
    assert [r["cells"] for r in matrix[1:]] == [
        [LABELS[i], *(str(n) for n in cm[i])] for i in range(2)]
    assert sum(int(n) for r in matrix[1:] for n in r["cells"][1:]) == 8
    sweep = doc.tables["sweep-0"]
    assert [r["cells"][0] for r in sweep[1:]] == [f"{0.5 + 0.05 * i:.2f}" for i in range(10)]
    assert "recommended threshold" in html
    assert "all 2 devices produced the same confusion matrix" in html
    assert "evaluation on dataset set@1 (8 samples)" in " ".join(html.split())


def test_disagreeing_devices_are_named_per_sample(site: Site) -> None:
    settings, client, real_id = site.settings, site.client, site.run_id
    with session_scope(settings) as session:
        real = session.get(Run, real_id)
        assert real is not None
        run = Run(kind="eval", bundle_name=real.bundle_name, bundle_version=real.bundle_version,
                  bundle_digest=real.bundle_digest, targets="all", params=dict(real.params),
                  created_by="test", state="succeeded")
        session.add(run)
        session.flush()
        source = list(session.exec(select(Result).where(Result.run_id == real_id)
                                   .order_by(col(Result.device_name))))
        for index, result in enumerate(source):
            detail = json.loads(json.dumps(result.detail))
            if index == 1:  # pi-b calls the first sample the other class
                first = detail["samples"][0]
                first["pred"] = LABELS[1 - LABELS.index(first["pred"])]
            session.add(Result(run_id=run.id, device_name=result.device_name, threads=1,
                               ok=True, valid=True, detail=detail, n=8))
        run_id, sample = run.id, source[0].detail["samples"][0]
    html = page(client, f"/runs/{run_id}")
    doc = parse(html)
    differing = list_items(html, "differing")
    assert "did not all produce the same confusion matrix" in html
    flipped = LABELS[1 - LABELS.index(sample["pred"])]
    assert differing == [f"{sample['id']} (label {sample['label']}): pi-a -> {sample['pred']}, "
                         f"pi-b -> {flipped}"]
    assert text_of(doc.tables["eval-metrics"][1]).startswith("pi-a")



def stored_results(settings: Settings, run_id: int) -> list[Result]:
    with session_scope(settings) as session:
        rows = list(session.exec(select(Result).where(Result.run_id == run_id)
                                 .order_by(col(Result.device_name), col(Result.threads))))
        session.expunge_all()
    return rows


def window_p99_ms(result: Result) -> float:
    """p99 of preprocessing + inference per window, computed here from the stored columns."""
    pre = np.asarray(result.detail["preprocessing_ms"], dtype=np.float64)
    infer = np.asarray(unpack_floats(result.latencies), dtype=np.float64)
    assert pre.shape == infer.shape == (8,)
    return float(np.percentile(pre + infer, 99))


def test_results_that_agree_share_one_confusion_matrix_and_sweep(site: Site) -> None:
    html = page(site.client, f"/runs/{site.profiled_id}")
    doc = parse(html)
    assert len(doc.tables["eval-metrics"]) == 1 + 4  # still one metrics row per result
    results = stored_results(site.settings, site.profiled_id)
    evals = [r.detail["eval"] for r in results]
    assert len(evals) == 4
    # Same model, same inputs: every device x threads result has one confusion matrix.
    assert all(e["confusion_matrix"] == evals[0]["confusion_matrix"] for e in evals)
    assert sorted(t for t in doc.tables if t.startswith("confusion-")) == ["confusion-0"]
    assert sorted(t for t in doc.tables if t.startswith("sweep-")) == ["sweep-0"]
    assert re.search(r'<span class="whose">all 4 results</span>', html)
    cm = evals[0]["confusion_matrix"]
    assert [r["cells"][1:] for r in doc.tables["confusion-0"][1:]] == [
        [str(n) for n in row] for row in cm]
    # The per-class report: each class's scores as stored, support = its row of the matrix.
    per_class = doc.tables["per-class-0"]
    assert per_class[0]["cells"] == ["class", "precision", "recall", "F1", "support"]
    for row, counts in zip(per_class[1:], cm, strict=True):
        scores = evals[0]["per_class"][row["cells"][0]]
        assert row["cells"][1:] == [f"{scores['precision']:.3f}", f"{scores['recall']:.3f}",
                                    f"{scores['f1']:.3f}", str(sum(counts))]
    charts = json.loads(doc.scripts["sweep-charts"])
    assert len(charts) == 1
    assert charts[0]["x"] == [s["threshold"] for s in evals[0]["sweep"]]
    f1 = next(s for s in charts[0]["series"] if s["label"] == "F1")
    assert f1["values"] == [s["f1"] for s in evals[0]["sweep"]]


def test_verdict_table_and_recommendation_per_device(site: Site) -> None:
    html = page(site.client, f"/runs/{site.profiled_id}")
    doc = parse(html)
    table = doc.tables["verdict-table"]
    assert table[0]["cells"] == ["device", "threads", "p50 ms", "p99 window ms", "hop s",
                                 "keeps up", "headroom", "RTF", "worst-case delay s", "W",
                                 "mJ/window", "valid"]
    results = stored_results(site.settings, site.profiled_id)
    assert len(table) == 1 + len(results) == 5
    expected: dict[str, int | None] = {}
    for row, result in zip(table[1:], results, strict=True):
        cells = row["cells"]
        p99 = window_p99_ms(result)
        assert cells[0].split()[0] == result.device_name
        assert cells[1] == str(result.threads)
        assert cells[3] == format_number(p99)
        assert cells[4] == "1"
        assert cells[5] == ("yes" if p99 < 1000 else "NO")
        assert cells[11] == "yes" if result.valid else cells[11].startswith("no")
        if (p99 < 700 and result.valid and expected.get(result.device_name) is None):
            expected[result.device_name] = result.threads  # fewest with >= 30% headroom
        expected.setdefault(result.device_name, None)
    items = {item.split(":", 1)[0]: item for item in recommendations(html)}
    assert set(items) == set(DEVICES)
    for device, threads in expected.items():
        if threads is None:
            assert "no recommendation" in items[device]
        else:
            plural = "" if threads == 1 else "s"
            assert items[device].startswith(f"{device}: run it at {threads} thread{plural} "
                                            f"— fewest threads that keep up")
    html = " ".join(html.split())
    assert ("Profile: 2 s windows every 1 s (overlap 50%), threshold 0.5, 2 positive of 3 "
            f"windows; from run {site.profiled_id} (params.profile).") in html
    assert "Window latency = preprocessing + inference." in html
    assert 'id="verdict-hint"' not in html


def test_a_detector_that_falls_behind_gets_no_recommendation(site: Site) -> None:
    """The same measurements against a 1 us hop: every row is NO, in red, and each device says
    which thread counts fall behind."""
    with session_scope(site.settings) as session:
        real = session.get(Run, site.profiled_id)
        assert real is not None
        run = Run(kind="eval", bundle_name=real.bundle_name, bundle_version=real.bundle_version,
                  bundle_digest=real.bundle_digest, targets="all", created_by="test",
                  state="succeeded", params=dict(real.params) | {"profile": {
                      "window_s": 0.002, "hop_s": 0.000001}})
        session.add(run)
        session.flush()
        for result in session.exec(select(Result).where(Result.run_id == real.id)):
            copy = result.model_dump(exclude={"id", "run_id"})
            session.add(Result(**copy, run_id=run.id))
        run_id = run.id
    html = page(site.client, f"/runs/{run_id}")
    rows = parse(html).tables["verdict-table"][1:]
    assert len(rows) == 4
    assert all(r["cells"][5] == "NO" and r["class"] == "status-failed" for r in rows)
    items = recommendations(html)
    assert len(items) == 2
    for item in items:
        assert ": no recommendation — no thread count qualifies: 1 thread falls behind" in item
        assert "2 threads fall behind" in item


def test_bench_run_page_judges_inference_only(site: Site) -> None:
    """A benchmark's results (no preprocessing timed) under the same profile: the verdict says
    its basis is inference only, and its p99 is of the inference times alone."""
    with session_scope(site.settings) as session:
        real = session.get(Run, site.profiled_id)
        assert real is not None
        run = Run(kind="bench", bundle_name=real.bundle_name, bundle_version=real.bundle_version,
                  bundle_digest=real.bundle_digest, targets="all", created_by="test",
                  state="succeeded", params={"threads": [1, 2], "warmup": 1, "runs": 8,
                                             "profile": PROFILE})
        session.add(run)
        session.flush()
        for result in session.exec(select(Result).where(Result.run_id == real.id)):
            copy = result.model_dump(exclude={"id", "run_id", "detail"})
            session.add(Result(**copy, run_id=run.id, detail={}))
        run_id = run.id
    html = page(site.client, f"/runs/{run_id}")
    rows = parse(html).tables["verdict-table"][1:]
    results = stored_results(site.settings, site.profiled_id)
    assert [r["cells"][3] for r in rows] == [
        format_number(float(np.percentile(unpack_floats(r.latencies), 99))) for r in results]
    assert ("Window latency = inference only: preprocessing not measured (a benchmark)."
            in " ".join(html.split()))
    assert 'id="eval-metrics"' not in html


def test_run_without_profile_says_how_to_judge_it(site: Site) -> None:
    html = page(site.client, f"/runs/{site.run_id}")
    doc = parse(html)
    assert "verdict-table" not in doc.tables
    hint = html[html.index('id="verdict-hint"'):html.index("</p>", html.index('id="verdict-hint"'))]
    assert f"<code>edgefleet runs verdict {site.run_id} --window S --hop S</code>" in hint


def recommendations(html: str) -> list[str]:
    """The recommendation sentences as read: tags dropped, whitespace collapsed."""
    start = html.index('<ul class="recommended"')
    chunk = html[start:html.index("</ul>", start)]
    return [" ".join(unescape(re.sub(r"<[^>]+>", "", item)).split())
            for item in re.findall(r"<li[^>]*>(.*?)</li>", chunk, re.S)]


def list_items(html: str, css_class: str) -> list[str]:
    start = html.index(f'<ul class="{css_class}"')
    chunk = html[start:html.index("</ul>", start)]
    return [unescape(item) for item in re.findall(r"<li>(.*?)</li>", chunk)]
