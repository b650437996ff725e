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
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import Cli
from ..fleet.conftest import ssh_user_key, sshd_factory, write_inventory  # noqa: F401
from ..fleet.sshd import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 800}
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
DOC_SCREENSHOTS = REPO / "docs" / "screenshots"

# ``python -m orchestrator.cli`` would run cli.py as ``__main__``, a second copy of the module
# that the serve/tokens/bundle commands do not register on; call the entry point instead.
SERVE_ARGV = [sys.executable, "-c", "from orchestrator.cli import main; main()", "serve"]


class Server:
    """One ``edgefleet serve`` process on 127.0.0.1."""

    def __init__(self, home: Path, log_path: Path, token: str | None,
                 port: int | None = None) -> None:
        self.home, self.log_path, self.token = home, log_path, token
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, EDGEFLEET_HOME=str(home))
        env.pop("DATABASE_URL", None)
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*SERVE_ARGV, "--host", "127.0.0.1", "--port", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=REPO)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, headers=self.headers, timeout=10.0,
                             **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        response = self.api("GET", path, **kwargs)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def post(self, path: str, body: dict[str, Any], status: int = 201) -> Any:
        response = self.api("POST", path, json=body)
        assert response.status_code == status, (path, response.status_code, response.text)
        return response.json()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until ``GET /api/devices`` answers 200 with a list; fail fast if the process died."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"edgefleet serve exited with {self.proc.returncode} "
                                     f"before it was ready:\n{self.log()}")
            try:
                response = self.api("GET", "/api/devices")
                if response.status_code == 200 and isinstance(response.json(), list):
                    return
                last = (response.status_code, response.text[:300])
            except httpx.TransportError as exc:  # not listening yet
                last = exc
            time.sleep(0.05)  # poll interval of the deadline loop, not a wait for an outcome
        raise AssertionError(f"edgefleet serve not ready after {timeout}s (last: {last!r}):\n"
                             f"{self.log()}")

    def wait_for(self, condition: Callable[[], Any], what: str, timeout: float = 30.0,
                 interval: float = 0.1) -> Any:
        """Poll ``condition`` until it returns something truthy (returned); fail after
        ``timeout`` naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}) while waiting "
                                     f"for {what}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    def wait_job(self, job_id: int, states: tuple[str, ...] = ("succeeded",),
                 timeout: float = 30.0) -> dict[str, Any]:
        terminal = {"succeeded", "failed", "cancelled", "interrupted"}
        job = self.wait_for(
            lambda: (j := self.get(f"/api/jobs/{job_id}"))["state"] in terminal | set(states)
            and j, f"job {job_id} to reach {states}", timeout)
        assert job["state"] in states, job
        return job

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no lease release, jobs left as they were."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item, so fixtures can tell at teardown that the test
    failed (and leave a screenshot and the server logs behind)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(getattr(request.node, f"report_{when}", None), "failed", False)
               for when in ("setup", "call"))


@pytest.fixture
def serve(home: Path, tmp_path: Path,
          request: pytest.FixtureRequest) -> Iterator[Callable[..., Server]]:
    """``serve(token=None, port=None) -> Server``, ready; all are stopped at teardown (and
    their logs printed if the test failed)."""
    servers: list[Server] = []

    def start(token: str | None = None, port: int | None = None) -> Server:
        server = Server(home, tmp_path / f"serve-{len(servers) + 1}.log", token, port)
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in reversed(servers):
        server.stop()
    if _failed(request):
        for server in servers:
            print(f"--- {server.log_path.name} (port {server.port}, "
                  f"exit {server.proc.returncode}) ---\n{server.log()[-20_000:]}")


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
    if _failed(request) and not tab.is_closed():
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
