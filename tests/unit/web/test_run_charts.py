"""The run page's per-result chart data (``GET /runs/{run}/results/{result}/charts``), against
a real SQLite DB made by the migrations, with rows as a benchmark stores them.

Why its own module: the endpoint exists so the run page carries summaries only (a 150-result
run was 775 kB of embedded latencies); what must hold is that the page names one URL per
result, that the URL gives exactly what the page used to embed, and that a result is only
reachable through its own run.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Result, Run
from orchestrator.measure.reports import format_number
from orchestrator.measure.runs import pack_floats
from web.app import create_app
from web.pages.view import latency_cdf, latency_histogram, sample_series


@dataclass
class Stored:
    client: TestClient
    run_id: int
    other_run_id: int
    result_ids: dict[str, int]  # device -> result id in run_id
    latencies: dict[str, list[float]]
    samples: list[list[float]]


def _run(session: object, at: datetime) -> Run:
    run = Run(kind="bench", bundle_name="m", bundle_version="1", bundle_digest="d" * 64,
              targets="all", params={"threads": [1], "warmup": 1, "runs": 40},
              created_by="test", state="succeeded", created_at=at, finished_at=at)
    session.add(run)  # type: ignore[attr-defined]
    session.flush()  # type: ignore[attr-defined]
    return run


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Stored:
    home: Path = tmp_path_factory.mktemp("charts") / "home"
    settings = Settings(home=home, database_url=None)
    rng = np.random.default_rng(3)
    body = list(5.0 + rng.normal(0, 0.1, 38))
    latencies = {"pi-tail": body + [90.0, 95.0],  # two runs far out: the histogram's overflow
                 "pi-plain": list(3.0 + rng.normal(0, 0.05, 40))}
    samples = [[0.0, 51.0, 2400.0, 0], [0.25, 81.5, 1500.0, 8]]
    now = datetime.now(UTC)
    with session_scope(settings) as session:
        run, other = _run(session, now), _run(session, now)
        rows = {}
        for target in (run, other):
            for name, values in latencies.items():
                row = Result(
                    run_id=target.id, device_name=name, threads=1, ok=True, simulated=True,
                    precision="fp32", n=len(values), p50_ms=float(np.median(values)),
                    mean_ms=float(np.mean(values)), telemetry_status="clean", valid=True,
                    created_at=now, latencies=pack_floats(values),
                    telemetry_samples=zlib.compress(json.dumps(samples).encode()))
                session.add(row)
                session.flush()
                if target is run:
                    rows[name] = row.id
        ids = (run.id, other.id)
    client = TestClient(create_app(settings, run_jobs=False), base_url="http://localhost")
    assert ids[0] is not None and ids[1] is not None
    return Stored(client, ids[0], ids[1], rows, latencies, samples)


def test_run_page_names_one_chart_url_per_result_and_embeds_no_raw_data(stored: Stored) -> None:
    html = stored.client.get(f"/runs/{stored.run_id}").text
    urls = set(re.findall(r'data-url="([^"]+)"', html))
    assert urls == {f"/runs/{stored.run_id}/results/{i}/charts"
                    for i in stored.result_ids.values()}
    for url in urls:  # hist, cdf and sampler chart share one fetch; the caption gets its note
        assert html.count(f'data-url="{url}"') == 3 and f'data-note-of="{url}"' in html
    assert 'id="run-charts"' not in html and "90.0" not in html


def test_chart_data_is_what_the_page_drew_from_the_raw_latencies(stored: Stored) -> None:
    for name, result_id in stored.result_ids.items():
        response = stored.client.get(f"/runs/{stored.run_id}/results/{result_id}/charts")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert "max-age" in response.headers["cache-control"]
        data = response.json()
        values = stored.latencies[name]
        hist = latency_histogram(values)
        assert {k: data["hist"][k] for k in hist} == json.loads(json.dumps(hist))
        assert data["cdf"] == json.loads(json.dumps(latency_cdf(values)))
        assert data["telemetry"] == json.loads(json.dumps(sample_series(stored.samples)))
        if name == "pi-tail":
            assert hist["overflow"] == 2
            assert data["hist"]["note"] == (f"; 2 runs beyond {format_number(hist['upper'])} "
                                            "ms (the tail) not drawn: see the CDF")
        else:
            assert hist["overflow"] == 0 and data["hist"]["note"] == ""


def test_a_result_is_only_reachable_through_its_own_run(stored: Stored) -> None:
    result_id = stored.result_ids["pi-plain"]
    for url in (f"/runs/{stored.other_run_id}/results/{result_id}/charts",
                f"/runs/{stored.run_id}/results/999999/charts",
                f"/runs/999999/results/{result_id}/charts"):
        response = stored.client.get(url)
        assert response.status_code == 404, url
        assert "detail" in response.json()
    assert stored.client.get(f"/runs/{stored.run_id}/results/0/charts").status_code == 422


def test_a_latency_span_past_the_largest_float_draws_no_bins_instead_of_failing() -> None:
    """Latencies are a device's numbers: two near +-1.7e308 made ``upper - low`` infinite and
    the chart endpoint answered 500; the CDF still shows them."""
    extreme = [-1.7e308, 1.0, 2.0, 1.7e308]
    assert latency_histogram(extreme) == {"edges": [], "counts": [], "overflow": 0,
                                          "upper": None}
    assert latency_cdf(extreme)["x"] == sorted(extreme)
