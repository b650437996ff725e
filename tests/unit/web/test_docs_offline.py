"""/docs, /openapi.json and /favicon.ico: the API browser loads nothing from a CDN (it was a
blank page offline), OpenAPI declares the Bearer scheme on every token-protected route, and
browsers' /favicon.ico request is answered. (The browser test
``tests/browser/test_offline_docs.py`` renders /docs with every other host blocked.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from orchestrator.core.config import Settings
from web.app import WEB_DIR, create_app


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    app = create_app(Settings(home=tmp_path / "home", database_url=None), run_jobs=False)
    return TestClient(app, base_url="http://127.0.0.1")


def test_docs_loads_swagger_ui_from_static_only(client: TestClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    refs = re.findall(r'(?:src|href)="([^"]+)"', response.text)
    assert "/static/vendor/swagger-ui-bundle.js" in refs
    assert "/static/vendor/swagger-ui.css" in refs
    assert all(ref.startswith("/") and not ref.startswith("//") for ref in refs), refs
    assert "http" not in response.text  # no CDN, and no validator badge URL either
    assert '"validatorUrl": null' in response.text
    for ref in refs:
        assert client.get(ref).status_code == 200, ref
    assert client.get("/redoc").status_code == 404  # dropped rather than half-vendored


def test_openapi_declares_bearer_on_protected_routes_only(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    operations = [(path, method, op) for path, item in spec["paths"].items()
                  for method, op in item.items()]
    api = [(p, m, op) for p, m, op in operations if p.startswith("/api/")]
    assert api and all(op.get("security") == [{"bearer": []}] for _, _, op in api), \
        [(p, m) for p, m, op in api if op.get("security") != [{"bearer": []}]]
    open_ops = [(p, m) for p, m, op in operations if not p.startswith("/api/") and "security" in op]
    assert open_ops == [], open_ops  # open on purpose (web.security.OPEN_PATHS): no lock


def test_favicon_is_served(client: TestClient) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/x-icon"
    assert response.content == (WEB_DIR / "static" / "favicon.ico").read_bytes()
    assert response.content[:4] == b"\0\0\1\0"  # an ICO header
