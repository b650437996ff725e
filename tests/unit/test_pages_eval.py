"""The run page of an evaluation run, in-process: a real eval on two simulated local Pis (real
agent, real onnxruntime) shows its metrics, confusion matrices, sweep and the agreement verdict;
a stored run whose devices disagree names each differing sample and every device's prediction."""

from __future__ import annotations

import json
import re
import sys
from html import unescape

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from sqlmodel import col, select

from orchestrator.agents import install_agents
from orchestrator.bundles import build_bundle
from orchestrator.config import Settings
from orchestrator.datasets import build_dataset
from orchestrator.db import session_scope
from orchestrator.demo_model import make_demo_classifier
from orchestrator.deploy import push
from orchestrator.devices import all_devices, sync_inventory
from orchestrator.evals import evaluate
from orchestrator.inventory import load_inventory
from orchestrator.models import Result, Run
from orchestrator.simulate import create_simulated_device
from web.app import create_app

from .test_pages import parse, text_of

LABELS = ["background", "crack"]
DEVICES = ("pi-a", "pi-b")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, TestClient, int]:
    base = tmp_path_factory.mktemp("eval-pages")
    settings = Settings(home=base / "home", database_url=None)
    hosts = {}
    for name in DEVICES:
        sim = create_simulated_device(base / "hw" / name)
        hosts[name] = {"ansible_connection": "local", "edgefleet_root": str(base / "root" / name),
                       "edgefleet_python": sys.executable, "edgefleet_env": dict(sim.env)}
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
    assert run.id is not None
    return settings, TestClient(create_app(settings, run_jobs=False)), run.id


def page(client: TestClient, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, response.text[:2000]
    return response.text


def test_eval_run_page_shows_metrics_matrices_sweep_and_agreement(site: tuple) -> None:
    settings, client, run_id = site
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


def test_disagreeing_devices_are_named_per_sample(site: tuple) -> None:
    settings, client, real_id = site
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



def list_items(html: str, css_class: str) -> list[str]:
    start = html.index(f'<ul class="{css_class}"')
    chunk = html[start:html.index("</ul>", start)]
    return [unescape(item) for item in re.findall(r"<li>(.*?)</li>", chunk)]
