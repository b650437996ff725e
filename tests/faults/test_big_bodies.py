"""Anonymous request bodies past every legitimate size, against a real ``edgefleet serve``
with an admin token (so it may face a network): refused with 413, and the server's memory
stays where it was. Before: FastAPI and the login form read a body whole before checking who
sent it (a 300 MB POST to /login took the server from 160 to 747 MB).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from tests.conftest import Cli
from tests.live_server import Server
from web.bodylimit import MAX_REQUEST_BYTES

MiB = 1024 * 1024


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def exchange(server: Server, head: bytes, chunks: Iterator[bytes]) -> bytes:
    """Send ``head`` and then as much of ``chunks`` as the server takes; its answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.sendall(head)
        try:
            for chunk in chunks:
                conn.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: what it said is in the buffer
        answer = b""
        while data := conn.recv(65536):
            answer += data
            if b"\r\n\r\n" in answer:
                break
        return answer


def test_bodies_past_the_cap_are_refused_unread(serve: Callable[..., Server], cli: Cli) -> None:
    secret = cli("tokens", "create", "--role", "admin", "--name", "me", "--json").json["secret"]
    server = serve(token=secret)
    before = peak_rss_mb(server.proc.pid)
    # Declared: refused before a byte of the body is read (none is ever sent).
    declared = (b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: %d\r\n\r\n" % (300 * MiB))
    assert status_of(exchange(server, declared, iter(()))) == 413
    # Chunked, no length: counted as it arrives; 64 MiB offered, refused past the cap.
    chunk = b"a" * MiB
    chunked = (b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    framed = (b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(64))
    assert status_of(exchange(server, chunked, framed)) == 413
    assert peak_rss_mb(server.proc.pid) - before < MAX_REQUEST_BYTES / MiB + 30
    # A body under the cap is read and judged as before: the token decides.
    small = server.api("POST", "/api/jobs", json={"kind": "telemetry", "targets": "all"})
    assert small.status_code == 422 and "no devices yet" in small.text, small.text
    anonymous = httpx.post(server.url + "/api/jobs", json={"kind": "telemetry"}, timeout=10)
    assert anonymous.status_code == 401
    assert server.get("/api/devices") == []  # still serving
