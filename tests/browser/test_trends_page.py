"""The Trends page in a real browser (Debian's chromium under Playwright) against a real
``edgefleet serve``: each chart's data is fetched when the chart nears the view
(``/trends/chart``, lines.js through app.js's ``whenNear``), not embedded, and every chart is
drawn with its change point marked, without a console error or a failed request.

History: a benchmark series with a slower second version (tests/unit/measure/
test_regressions.py's numbers, as the product stores them), on 24 devices, so the charts
further down the page are only fetched once scrolled near.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from orchestrator.core.config import Settings
from tests.unit.measure.test_regressions import NOISE, SLOWER, T0, _run

DEVICES = [f"pi-{n:02d}" for n in range(24)]


def test_trends_charts_load_as_they_come_into_view(home: Path, serve, page: Any) -> None:
    settings = Settings(home=home, database_url=None)
    for n, p50 in enumerate(NOISE + [p * SLOWER for p in NOISE[:4]]):
        _run(settings, "1" if n < len(NOISE) else "2", T0 + timedelta(days=n),
             [{"device_name": d, "p50_ms": p50 * (1 + i / 10), "cpu_p50_ms": p50 * 0.9}
              for i, d in enumerate(DEVICES)])
    errors: list[str] = []
    failed: list[str] = []
    charts: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and not
            m.text.startswith("Failed to load resource") else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400
            and not r.url.endswith("/favicon.ico") else None)
    page.on("request", lambda r: charts.append(r.url) if "/trends/chart?" in r.url else None)
    server = serve()
    page.goto(server.url + "/trends")

    rows = page.locator("#change-points tbody tr")
    expect(rows).to_have_count(len(DEVICES))  # one slower level per device's series
    expect(rows.first.locator("td").nth(5)).to_have_text("cpu")
    figures = page.locator("figure.trend")
    expect(figures).to_have_count(len(DEVICES))
    expect(figures.first.locator("canvas")).to_have_count(1)
    near = len(charts)
    assert 0 < near < len(DEVICES), charts  # the ones far below were not fetched yet
    figures.last.scroll_into_view_if_needed()
    expect(figures.last.locator("canvas")).to_have_count(1)
    expect(page.locator("figure.trend canvas")).to_have_count(len(DEVICES))
    assert len(set(charts)) == len(DEVICES) and all("runs=200" in u for u in charts)
    legend = figures.first.locator(".u-legend").inner_text()
    assert "1 thread, regression" in legend
    assert errors == [] and failed == [], (errors, failed)
