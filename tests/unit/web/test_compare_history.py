"""Compare's paired chart and the bundle page's result history (issue 17), in-process on
test_pages_more's seeded fleet: first-crack@1 measured for real on three simulated Pis, and a
first-crack@2 run inserted 50% slower at 1 thread and 20% faster at 2 threads on pi5-cool,
invalid (throttled) on pi5-hot."""

from __future__ import annotations

import json

from tests.unit.web import test_pages_more as more
from tests.unit.web.test_pages import COOL, HOT, WEAK, get, parse
from tests.unit.web.test_pages_more import Seeded

site, seeded = more.site, more.seeded  # the module-scoped fixtures, one instance here


def test_paired_chart_holds_the_compared_pairs(seeded: Seeded) -> None:
    """A run against itself (the inserted v2 run has no raw latencies to compare): every
    valid pair is drawn, at a ratio of 1 inside its interval; pi5-hot (throttled) is not."""
    site, run = seeded.site, seeded.site.run_id
    html = get(site, f"/runs/compare?a={run}&b={run}")
    page = parse(html)
    chart = json.loads(page.scripts["paired-data"])
    table = [r["cells"] for r in page.tables["comparison"][1:]]
    compared = [c for c in table if not c[-1].startswith("excluded")]
    assert chart["labels"] == [f"{c[0].removesuffix(' (sim)')} · {c[1]}t" for c in compared]
    assert chart["labels"] == [f"{WEAK} · 1t", f"{COOL} · 1t"]
    assert all(f"{HOT} · " not in label for label in chart["labels"])
    for i in range(2):
        assert chart["a"][i] == chart["b"][i] and chart["ratio"][i] == 1.0
        assert chart["lo"][i] <= 1.0 <= chart["hi"][i]
    assert chart["a_label"] == f"A #{run} first-crack@1" == chart["b_label"].replace("B", "A")
    assert 'data-paired="paired-data" data-panel="ratio"' in html
    assert '<script src="/static/paired.js" defer></script>' in html
    assert site.client.get("/static/paired.js").status_code == 200
    # nothing compared (v2's rows have no latencies): no chart, no script for it
    html = get(site, f"/runs/compare?a={run}&b={seeded.slow_run}")
    assert "paired-data" not in html and "paired.js" not in html


def test_bundle_page_shows_its_result_history_across_versions(seeded: Seeded) -> None:
    site = seeded.site
    html = get(site, "/bundles/first-crack@1")
    assert 'id="bundle-history"' in html
    tables = parse(html).tables
    rows = [r["cells"] for r in tables[""] if r["cells"] and r["cells"][0].startswith("#")]
    runs = [int(r[0][1:]) for r in rows]
    assert runs[:3] == [seeded.slow_run] * 3 and set(runs[3:]) == {site.run_id}
    assert {r[1] for r in rows} == {"first-crack@1", "first-crack@2"}
    hot = [r for r in rows if r[2].startswith(HOT) and r[0] == f"#{seeded.slow_run}"]
    assert hot and "soft_temp_limit" in hot[0][-1]
    assert 'href="/runs?bundle=first-crack"' in html
