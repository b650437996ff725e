"""Every page on a desktop and a phone, light and dark (issue 17), in a real browser against a
real ``edgefleet serve`` on a small real fleet (tests/browser/fleet_data.py): at 1366x900 and
390x844, with ``prefers-color-scheme`` emulated light and dark, no page scrolls sideways
(``document.scrollingElement.scrollWidth <= innerWidth``), the nav stays on screen, the theme
reaches the page and its charts, no console error, and no request leaves 127.0.0.1.
Screenshots of Fleet, Run and Compare in both themes and at phone width: ``screens-*``
(test-artifacts/screenshots; docs/screenshots with EDGEFLEET_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .conftest import OffsiteGuard, save_screenshot
from .fleet_data import make_fleet

SIZES = {"desktop": {"width": 1366, "height": 900}, "phone": {"width": 390, "height": 844}}
SCHEMES = ("light", "dark")
SHOTS = {"fleet", "run", "compare"}
CHARTED = ("device", "run", "trends", "compare")  # pages whose charts must be drawn

OVERFLOW = """() => {
  const el = document.scrollingElement;
  const wide = [...document.querySelectorAll('body *')].filter(e => {
    const r = e.getBoundingClientRect();
    return r.width > 0 && r.right > innerWidth + 1 && getComputedStyle(e).position !== 'fixed';
  }).slice(0, 5).map(e => e.tagName + '.' + e.className + '#' + e.id + ' ' +
                          Math.round(e.getBoundingClientRect().right));
  return {scroll: el.scrollWidth, inner: innerWidth, wide: wide};
}"""

CHART_THEMES = "() => [...document.querySelectorAll('[data-theme]')].map(e => e.dataset.theme)"
BACKGROUND = "() => getComputedStyle(document.body).backgroundColor"  # body paints the page


def luminance(css: str) -> float:
    """0 (black) .. 255 (white) from ``rgb(r, g, b)``."""
    r, g, b = (float(v) for v in css[css.index("(") + 1:css.index(")")].split(",")[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_every_page_fits_phones_and_follows_the_theme(home: Path, tmp_path: Path, serve: Any,
                                                       page: Any) -> None:
    fleet = make_fleet(home, tmp_path / "fleet")
    server = serve()  # no admin token: local mode, every request the local admin
    server.wait_job(fleet.job_id)
    guard = OffsiteGuard(page, server)
    problems: list[str] = []
    drawn: dict[str, int] = {}
    for size, viewport in SIZES.items():
        page.set_viewport_size(viewport)
        for scheme in SCHEMES:
            page.emulate_media(color_scheme=scheme)
            for name, url in fleet.pages().items():
                guard.console_errors.clear()
                response = page.goto(server.url + url)
                assert response is not None and response.status == 200, (url, response)
                page.wait_for_load_state("load")
                if name in CHARTED:  # drawn after load (run: fetched)
                    page.locator(".uplot").first.wait_for()
                where = f"{name} {size} {scheme}"
                fit = page.evaluate(OVERFLOW)
                if fit["scroll"] > fit["inner"]:
                    problems.append(f"{where}: {fit}")
                shade = luminance(page.evaluate(BACKGROUND))
                if (scheme == "dark") != (shade < 80):
                    problems.append(f"{where}: background {shade:.0f}")
                themes = page.evaluate(CHART_THEMES)
                if any(t != scheme for t in themes):
                    problems.append(f"{where}: charts drawn as {themes}")
                drawn[name] = drawn.get(name, 0) + len(themes)
                if guard.console_errors:
                    problems.append(f"{where}: {guard.console_errors}")
                if name in SHOTS:
                    if name == "compare":  # the paired chart, under the table
                        page.locator("#paired").scroll_into_view_if_needed()
                    save_screenshot(page, f"screens-{name}-{size}-{scheme}")
    assert guard.blocked == [], guard.blocked
    assert problems == [], "\n".join(problems)
    for name in CHARTED:  # the theme check saw charts there
        assert drawn.get(name), (name, drawn)
