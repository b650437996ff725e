"""A real ``edgefleet serve`` subprocess for end-to-end tests (browser and fault scenarios).

- ``serve``: ``serve(token=...) -> Server`` starts a real ``edgefleet serve`` subprocess on a
  free 127.0.0.1 port, with ``EDGEFLEET_HOME`` = the test's home, and returns once
  ``GET /api/devices`` answers 200 with a JSON list (polled against a deadline). Every server
  it started is stopped (terminate, wait; kill if it hangs) when the test ends, and its log is
  printed if the test failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fleet.sshd import free_port

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
REPO = Path(__file__).resolve().parents[1]


def failed(request: pytest.FixtureRequest) -> bool:
    """Whether the test's setup or call failed (reports kept by tests/conftest.py's hook)."""
    return any(getattr(getattr(request.node, f"report_{when}", None), "failed", False)
               for when in ("setup", "call"))


# ``python -m orchestrator.cli.main`` would run cli.py as ``__main__``, a second copy of the module
# that the serve/tokens/bundle commands do not register on; call the entry point instead.
SERVE_ARGV = [sys.executable, "-c", "from orchestrator.cli.main import main; main()", "serve"]


class Server:
    """One ``edgefleet serve`` process on 127.0.0.1."""

    def __init__(self, home: Path, log_path: Path, token: str | None,
                 port: int | None = None) -> None:
        self.home, self.log_path, self.token = home, log_path, token
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, EDGEFLEET_HOME=str(home))
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
    if failed(request):
        for server in servers:
            print(f"--- {server.log_path.name} (port {server.port}, "
                  f"exit {server.proc.returncode}) ---\n{server.log()[-20_000:]}")


