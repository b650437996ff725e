"""/docs in a real browser with the network blocked to anything but the server: FastAPI's
default Swagger UI came from a CDN and was a blank page offline (issue 17). Now its operations
render from the vendored assets, the Bearer scheme's Authorize button is there, and no request
leaves 127.0.0.1."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from .conftest import OffsiteGuard


def test_docs_render_operations_offline(serve: Any, page: Any) -> None:
    server = serve()  # no admin token: the loopback-only local mode
    guard = OffsiteGuard(page, server)
    page.goto(server.url + "/docs")
    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible()
    expect(page.locator(".opblock-summary-path", has_text="/api/devices").first).to_be_visible()
    assert operations.count() >= 10
    expect(page.locator("button.authorize")).to_be_visible()  # the HTTPBearer scheme
    expect(page.locator(".opblock .authorization__btn").first).to_be_visible()  # per route
    assert guard.blocked == [], guard.blocked
    assert guard.console_errors == [], guard.console_errors
    favicon = page.request.get(server.url + "/favicon.ico")
    assert favicon.status == 200 and favicon.headers["content-type"] == "image/x-icon"
