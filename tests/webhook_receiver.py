"""A real webhook receiver for alert tests: ``http.server`` on 127.0.0.1 in a thread, recording
every request (headers and the exact body bytes) and answering as a test scripts it.

- ``receiver`` fixture: a started :class:`Receiver`, stopped (hanging handlers released) when
  the test ends.
- ``Receiver.statuses``: the statuses to answer, one per request, in order (then 200).
- ``Receiver.hang``: set, handlers hold the request without answering until ``release()``
  (a receiver that hangs).
- ``Receiver.drip_s``: set, the answer goes out one byte per ``drip_s`` (slow but steady).
- ``Receiver.wait_for(n, timeout)``: block until ``n`` requests arrived (a condition variable,
  no sleeping).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Received:
    path: str
    headers: Message  # names are case-insensitive, as in HTTP (urllib sends them Title-Cased)
    body: bytes
    at: float  # time.monotonic() when it arrived


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.statuses: list[int] = []
        self.hang = False
        self.retry_after: str | None = None  # a Retry-After header on answers not 2xx
        # Set: the answer's bytes go out one per drip_s (a slow-loris receiver: each read is
        # quick, the whole answer takes hours); the fault itself, not a synchronisation.
        self.drip_s: float | None = None
        self._released = threading.Event()
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._cond:
                    receiver.requests.append(Received(self.path, self.headers,
                                                      body, time.monotonic()))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    hang = receiver.hang
                    receiver._cond.notify_all()
                if hang:
                    receiver._released.wait(60)
                    return  # the client gave up long ago; say nothing
                if receiver.drip_s is not None:
                    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000
                    for byte in answer:
                        if receiver._released.wait(receiver.drip_s):
                            return
                        try:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                        except OSError:  # the client shut the connection: what is tested
                            return
                    return
                self.send_response(status)
                if receiver.retry_after is not None and status >= 300:
                    self.send_header("Retry-After", receiver.retry_after)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        name="webhook-receiver")
        self._thread.start()

    def wait_for(self, n: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.requests)} webhook request(s) arrived in "
                                         f"{timeout} s, expected {n}")
                self._cond.wait(left)
            return list(self.requests)

    def release(self) -> None:
        self._released.set()

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()
