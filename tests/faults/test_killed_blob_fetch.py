"""A worker killed (SIGKILL) in the middle of fetching a blob: its temp file stays behind, never
named as the blob; the next fetch on that host removes it once idle for two socket timeouts,
leaves a live download's temp file alone, and fetches the blob whole."""

from __future__ import annotations

import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.artifacts.blobfetch import Needed, blob_store, ensure_local
from orchestrator.core.config import Settings
from tests.waiting import process_gone

from .procs import REPO, wait_until

DATA = os.urandom(3_000_000)
SHA = hashlib.sha256(DATA).hexdigest()
FETCH = ("import sys\n"
         "from orchestrator.artifacts.blobfetch import Needed, blob_store, ensure_local\n"
         "from orchestrator.core.config import Settings\n"
         "s = Settings()\n"
         "ensure_local(s, blob_store(s), [Needed(sys.argv[1], int(sys.argv[2]), 'blob')])\n")


class _Blob(http.server.BaseHTTPRequestHandler):
    """Serves DATA; with ``stall`` set, sends half of it and then waits (until released)."""

    stall: threading.Event | None = None

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(DATA)))
        self.end_headers()
        if self.stall is None:
            self.wfile.write(DATA)
            return
        self.wfile.write(DATA[: len(DATA) // 2])
        self.wfile.flush()
        self.stall.wait(120)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[tuple[str, str]]:
    """(URL of a server that stalls mid-blob, URL of one that serves it whole)."""
    release = threading.Event()
    made = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) for handler in (
        type("Stalls", (_Blob,), {"stall": release}), _Blob)]
    for server in made:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield tuple(f"http://127.0.0.1:{s.server_address[1]}" for s in made)  # type: ignore[misc]
    finally:
        release.set()
        for server in made:
            server.shutdown()
            server.server_close()


def test_killed_fetch_leaves_a_temp_file_that_the_next_fetch_sweeps(
        tmp_path: Path, servers: tuple[str, str]) -> None:
    stalling, whole = servers
    home = tmp_path / "worker"
    env = dict(os.environ, EDGEFLEET_HOME=str(home), EDGEFLEET_CONTROL_PLANE_URL=stalling,
               EDGEFLEET_CONTROL_PLANE_TOKEN="ef_test", EDGEFLEET_BLOB_FETCH_TIMEOUT_S="60")
    log = tmp_path / "fetch.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", FETCH, SHA, str(len(DATA))], env=env,
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    blobs = home / "blobs"
    # The fetch reads 1 MiB at a time: its first MiB is written, then it waits for more.
    temp = wait_until(lambda: [p for p in blobs.glob(".fetch-*") if p.stat().st_size > 0],
                      "part of the blob written to a temp file", proc=proc, log=log)[0]
    proc.send_signal(signal.SIGKILL)
    assert process_gone(proc.pid, 30)
    proc.wait()
    assert temp.exists() and not (blobs / SHA[:2] / SHA).exists()  # left, never the blob

    # Later: the dead download's file has been idle past two socket timeouts (its mtime set
    # back), while another process's download is writing right now (fresh mtime).
    long_ago = time.time() - 121
    os.utime(temp, (long_ago, long_ago))
    live = blobs / ".fetch-live-download"
    live.write_bytes(b"in progress")

    settings = Settings(home=home, control_plane_url=whole, control_plane_token="ef_test",
                        blob_fetch_timeout_s=60)
    store = blob_store(settings)
    assert ensure_local(settings, store, [Needed(SHA, len(DATA), "blob")]) == len(DATA)
    assert store.path(SHA).read_bytes() == DATA
    assert not temp.exists() and live.exists()
