"""Fixtures for end-to-end tests of the web control plane in a real browser.

- ``serve``: ``serve(token=...) -> Server`` starts a real ``edgefleet serve`` subprocess on a
  free 127.0.0.1 port, with ``EDGEFLEET_HOME`` = the test's home, and returns once
  ``GET /api/devices`` answers 200 with a JSON list (polled against a deadline). Every server
  it started is stopped (terminate, wait; kill if it hangs) when the test ends.
- ``admin_token`` / ``viewer_token``: secrets from ``edgefleet tokens create --role ... --json``
  (in-process CLI, same home).
- ``page``: a tab of ``browser``; a failing test leaves a screenshot and the HTML of its last
  view in ``test-artifacts/screenshots/FAILED-<test>.*`` (and the server logs in its output).
- ``browser``: Debian's chromium (``/usr/bin/chromium``) driven by Playwright, headless, one
  per session, with a fresh profile. Browsers are never downloaded (no ``playwright
  install``): ``scripts/test.sh`` apt-installs ``chromium``.
- ``sshd_factory``, ``ssh_user_key``, ``write_inventory``: the real-sshd test hosts of
  ``tests/fleet``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import Cli
from ..fleet.conftest import ssh_user_key, sshd_factory, write_inventory  # noqa: F401
from ..live_server import REPO, Server, failed, serve  # noqa: F401 - fixture by name

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 800}
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
DOC_SCREENSHOTS = REPO / "docs" / "screenshots"


def _token(cli: Cli, role: str) -> str:
    created = cli("tokens", "create", "--role", role, "--name", f"e2e-{role}", "--json").json
    assert created["role"] == role and created["secret"].startswith("ef_"), created
    return created["secret"]


@pytest.fixture
def admin_token(cli: Cli) -> str:
    return _token(cli, "admin")


@pytest.fixture
def viewer_token(cli: Cli, admin_token: str) -> str:
    return _token(cli, "viewer")


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Debian chromium under Playwright; a fresh profile per session."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run ./scripts/test.sh (it apt-installs chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[test]' (./scripts/test.sh does)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        # A persistent context is the only way to name the profile directory; pages of other
        # identities get their own cookie jars through clear_cookies() / new logins.
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport=VIEWPORT)
        try:
            context.set_default_timeout(15_000)
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A new tab that accepts ``confirm()`` dialogs (the push form asks). If the test fails,
    its last view is saved as ``test-artifacts/screenshots/FAILED-<test>.png`` and ``.html``."""
    tab = browser.new_page()
    tab.on("dialog", lambda dialog: dialog.accept())
    yield tab
    if failed(request) and not tab.is_closed():
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        stem = SCREENSHOTS / f"FAILED-{request.node.name}"
        try:
            tab.screenshot(path=f"{stem}.png")
            stem.with_suffix(".html").write_text(tab.content())
            print(f"failed at {tab.url}; screenshot: {stem}.png")
        except Exception as exc:  # the diagnosis must not hide the failure
            print(f"could not save the failed page: {exc!r}")
    tab.close()


def save_screenshot(page: Any, name: str) -> Path:
    """``test-artifacts/screenshots/NAME.png`` (gitignored, the CI artifact); with
    EDGEFLEET_UPDATE_SCREENSHOTS=1 also copied to ``docs/screenshots`` for the README, so an
    ordinary local run leaves the committed images alone."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    if os.environ.get("EDGEFLEET_UPDATE_SCREENSHOTS") == "1":
        DOC_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOC_SCREENSHOTS / f"{name}.png")
    return path


def login(page: Any, server: Server, token: str, role: str) -> None:
    """Log in through the login form; lands on the Fleet page as ``role``."""
    from playwright.sync_api import expect

    page.context.clear_cookies()
    page.goto(server.url + "/login")
    page.locator("input[name=token]").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(server.url + "/")
    expect(page.locator(".who .role")).to_have_text(role)


class OffsiteGuard:
    """Routes every request of a page: those to the server's own origin go on, anything else
    (a CDN, a validator badge, a font host) is aborted and remembered, so a test can assert
    that a page works offline and asked for nothing beyond 127.0.0.1."""

    def __init__(self, page: Any, server: Server) -> None:
        self.origin = server.url
        self.blocked: list[str] = []
        self.console_errors: list[str] = []
        page.route("**/*", self._route)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.console_errors.append(f"pageerror: {exc}"))

    def _route(self, route: Any) -> None:
        url = route.request.url
        if url == self.origin or url.startswith(self.origin + "/") or url.startswith("data:"):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.console_errors.append(f"{message.text} ({message.location.get('url', '')})")
