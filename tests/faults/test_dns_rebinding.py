"""A web page rebinds its own name to 127.0.0.1 and drives a tokenless server; another user of
the same machine connects to it. Both must be refused, and nothing may be queued or synced.

Real ``edgefleet serve`` on loopback; the attacker's requests are real HTTP requests carrying
the Host and Origin a rebound page's browser would send, and the other user is a real process
running as ``nobody``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import Cli
from tests.fleet.sshd import free_port
from tests.live_server import REPO, Server

EXAMPLE = Path(__file__).resolve().parents[2] / "inventory" / "example.yml"


def _as_evil(server: Server, method: str, path: str, **kwargs: object) -> httpx.Response:
    evil = f"evil.example:{server.port}"
    headers = {"Host": evil, "Origin": f"http://{evil}"}
    return httpx.request(method, server.url + path, headers=headers, timeout=10.0,
                         **kwargs)  # type: ignore[arg-type]


def test_a_rebound_name_is_refused_and_changes_nothing(serve: Callable[..., Server]) -> None:
    server = serve()
    for path in ("/api/devices", "/", "/metrics", "/docs", "/openapi.json", "/api/audit"):
        refused = _as_evil(server, "GET", path)
        assert refused.status_code == 403, (path, refused.status_code, refused.text[:200])
        assert "tokens create --role admin" in refused.json()["detail"]
    queued = _as_evil(server, "POST", "/api/jobs", json={"kind": "telemetry",
                                                         "targets": "all"})
    synced = _as_evil(server, "POST", "/api/inventory/sync", json={"path": str(EXAMPLE)})
    assert (queued.status_code, synced.status_code) == (403, 403)
    # The owner, by a loopback name, still gets everything, and nothing was done.
    assert server.get("/api/jobs") == []
    assert server.get("/api/devices") == []
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "[::1]", "localhost"):
        answer = httpx.get(server.url + "/api/devices", headers={"Host": host}, timeout=10.0)
        assert answer.status_code == 200, (host, answer.text)


def test_with_an_admin_token_other_names_need_the_token(serve: Callable[..., Server],
                                                        cli: Cli) -> None:
    secret = cli("tokens", "create", "--role", "admin", "--name", "me", "--json").json["secret"]
    server = serve(token=secret)
    assert _as_evil(server, "GET", "/api/devices").status_code == 401
    named = httpx.get(server.url + "/api/devices", timeout=10.0,
                      headers={"Host": "fleet.lab.example", "Authorization": f"Bearer {secret}"})
    assert named.status_code == 200


PROBE = """
import json, sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1], headers=json.loads(sys.argv[2]))
try:
    with urllib.request.urlopen(request, timeout=10) as r:
        print(json.dumps([r.status, r.read().decode()]))
except urllib.error.HTTPError as e:
    print(json.dumps([e.code, e.read().decode()]))
"""


def _get_as(user: str | None, url: str, headers: dict[str, str] | None = None,
            ) -> tuple[int, str]:
    python = "/usr/bin/python3"
    argv = [python, "-c", PROBE, url, json.dumps(headers or {})]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    status, body = json.loads(out.stdout)
    return status, body


@pytest.mark.skipif(os.getuid() != 0, reason="starting a process as another user needs root")
def test_another_user_of_the_machine_is_refused(serve: Callable[..., Server]) -> None:
    assert shutil.which("runuser") and Path("/usr/bin/python3").exists()
    server = serve()
    status, body = _get_as("nobody", server.url + "/api/devices")
    assert status == 403, body
    assert "only the user who started it" in body
    # Nor by naming another client: uvicorn's proxy headers (trusted from loopback by
    # default) would make the peer "x" (not an address) or the owner's own connection.
    for forged in ("x", "127.0.0.1", "[::1]:1"):
        for header in ("X-Forwarded-For", "X-Real-IP", "Forwarded"):
            status, body = _get_as("nobody", server.url + "/api/devices", {header: forged})
            assert status == 403, (header, forged, body)
    # The same request from the server's own user is served.
    assert _get_as(None, server.url + "/api/devices") == (200, "[]")


class ProxyTrustingServer(Server):
    """The app under plain ``uvicorn --factory`` (as a user may run it, or behind gunicorn):
    uvicorn's default proxy_headers takes the peer from X-Forwarded-For sent from loopback."""

    def __init__(self, home: Path, log_path: Path) -> None:  # noqa: D107 - see the class
        self.home, self.log_path, self.token = home, log_path, None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, EDGEFLEET_HOME=str(home))
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", "web.app:create_app",
                 "--host", "127.0.0.1", "--port", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=REPO)


@pytest.mark.skipif(os.getuid() != 0, reason="starting a process as another user needs root")
def test_another_user_naming_the_in_process_test_client_is_refused(home: Path,
                                                                   tmp_path: Path) -> None:
    """``testclient`` is the peer Starlette's in-process test client has (no socket to check);
    sent as X-Forwarded-For through a proxy-trusting server, it used to pass the gate."""
    server = ProxyTrustingServer(home, tmp_path / "uvicorn.log")
    try:
        server.wait_ready()
        for header in ("X-Forwarded-For", "Forwarded"):
            forged = "testclient" if header == "X-Forwarded-For" else "for=testclient"
            status, body = _get_as("nobody", server.url + "/api/devices", {header: forged})
            assert status == 403, (header, body)
        assert _get_as(None, server.url + "/api/devices") == (200, "[]")
    finally:
        server.proc.terminate()
        server.proc.wait(30)
