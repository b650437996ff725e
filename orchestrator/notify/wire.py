"""What goes on the wire for one webhook attempt: the signed JSON body and headers, the POST
itself (bounded, never redirected), and the check a receiver runs (:func:`verify_signature`).

Apart from ``webhooks`` (which decides when and how often to try) because this part needs no
database and is what a receiver's author reads: the signature is ``X-EdgeFleet-Signature:
sha256=HEX``, the HMAC-SHA256 of ``TIMESTAMP + "." + body`` under the shared secret. Messages
name a URL's host only (:func:`where`): its path or query may carry a token.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from orchestrator import __version__

SIGNATURE_HEADER = "X-EdgeFleet-Signature"
TIMESTAMP_HEADER = "X-EdgeFleet-Timestamp"
EVENT_HEADER = "X-EdgeFleet-Event"
DELIVERY_HEADER = "X-EdgeFleet-Delivery"
TOLERANCE_S = 300  # how far a receiver should accept a timestamp from its own clock
RETRY_STATUSES = frozenset({408, 425, 429})  # and every 5xx


def sign(secret: bytes, timestamp: int | str, body: bytes) -> str:
    """The ``X-EdgeFleet-Signature`` value of ``body`` sent at ``timestamp``."""
    message = str(timestamp).encode("ascii") + b"." + body
    return "sha256=" + hmac.new(secret, message, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes | str, body: bytes, timestamp: str | None,
                     signature: str | None, *, tolerance_s: float = TOLERANCE_S,
                     now: float | None = None) -> bool:
    """What a receiver checks (README "Alerts"): the signature matches the exact bytes
    received and the timestamp, in constant time, and the timestamp is within ``tolerance_s``
    of ``now`` (a replay of a captured request is refused once that has passed)."""
    if not timestamp or not signature:
        return False
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_s:
        return False
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.compare_digest(sign(key, sent, body), signature)


def body_of(payload: dict[str, Any]) -> bytes:
    """The bytes POSTed (and signed): compact JSON, keys sorted, UTF-8."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str).encode()


def where(url: str) -> str:
    """A URL's host[:port] for messages: never its credentials, path or query (a token)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        return f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "an invalid URL"


def _scrubbed(text: str, url: str, secret: bytes | None) -> str:
    """``text`` (an exception's words) without the URL, its path and query, or the secret."""
    parts = urlsplit(url)
    for piece in (url, parts.netloc, parts.path, parts.query,
                  secret.decode(errors="replace") if secret else ""):
        if len(piece) > 1 and piece != where(url):
            text = text.replace(piece, "[redacted]")
    return text


ATTEMPT_TIMEOUTS = 3  # a whole attempt: as long as connect, send and receive each timing out


class _Deadline:
    """Shuts down the attempt's sockets once ``limit_s`` has passed (a timer thread), so a
    receiver that answers slowly but steadily cannot hold an attempt longer than that."""

    def __init__(self, limit_s: float) -> None:
        import threading

        self.limit_s = limit_s
        self.expired = False
        self._socks: list[Any] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(limit_s, self._cut)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def handlers(self) -> list[Any]:
        """urllib handlers whose connections register their sockets here; starts the timer."""
        import http.client
        import urllib.request

        watch = self

        class Http(http.client.HTTPConnection):
            def connect(self) -> None:
                super().connect()
                watch._track(self.sock)

        class Https(http.client.HTTPSConnection):
            def connect(self) -> None:
                super().connect()
                watch._track(self.sock)

        class HttpHandler(urllib.request.HTTPHandler):
            def http_open(self, req: Any) -> Any:
                return self.do_open(Http, req)

        class HttpsHandler(urllib.request.HTTPSHandler):
            def https_open(self, req: Any) -> Any:
                return self.do_open(Https, req, context=self._context)

        self._timer.start()
        return [HttpHandler, HttpsHandler]

    def _track(self, sock: Any) -> None:
        with self._lock:
            self._socks.append(sock)
            if self.expired:
                self._shut(sock)

    def _cut(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._socks:
                self._shut(sock)

    @staticmethod
    def _shut(sock: Any) -> None:
        import socket

        with contextlib.suppress(OSError):  # closed already
            sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()

    def result(self, host: str) -> AttemptResult:
        return AttemptResult(False, True, f"{host} did not finish answering within "
                                          f"{self.limit_s:g} s")


@dataclass
class AttemptResult:
    ok: bool
    retry: bool = False
    error: str | None = None
    retry_after_s: float | None = None


def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float,
         secret: bytes | None = None) -> AttemptResult:
    """One POST; what happened, in words that name the host only."""
    # Here, not at the top: urllib.request imports http.client, email and ssl, which the CLI's
    # light commands never need.
    import http.client
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None  # a 3xx becomes an HTTPError: a webhook does not move

    host = where(url)
    # The whole attempt is bounded, not only each socket operation: a receiver sending a
    # byte every 50 ms kept a 0.2 s-timeout attempt busy for 7 s (and could for hours), holding
    # one of the process's delivery threads, and another process's sweep then sent the alert
    # again once the claim (3 timeouts) lapsed. At the deadline the socket is shut down.
    watch = _Deadline(ATTEMPT_TIMEOUTS * timeout_s)
    try:
        scheme = urlsplit(url).scheme
    except ValueError:  # its text would repeat the URL
        return AttemptResult(False, error="the webhook URL is not valid")
    if scheme not in ("http", "https"):
        return AttemptResult(False, error="the webhook URL is not http:// or https://")
    try:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        opener = urllib.request.build_opener(NoRedirect, *watch.handlers())
        with watch, opener.open(request, timeout=timeout_s) as response:
            response.read(65536)
            status = response.status
        if watch.expired:  # a body cut short by the deadline reads as its end: not a success
            return watch.result(host)
        retry_after = None
    except urllib.error.HTTPError as exc:
        if watch.expired:
            return watch.result(host)
        status = exc.code
        retry_after = exc.headers.get("Retry-After") if exc.headers else None
        exc.close()
    except TimeoutError:
        return AttemptResult(False, True, f"{host} did not answer within {timeout_s:g} s")
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        if watch.expired:
            return watch.result(host)
        reason = getattr(exc, "reason", None) or exc
        words = _scrubbed(str(reason), url, secret) or type(exc).__name__
        if "timed out" in words:
            return AttemptResult(False, True, f"{host} did not answer within {timeout_s:g} s")
        return AttemptResult(False, True, f"could not reach {host}: {words}")
    except ValueError:  # a URL urllib cannot use; its text would repeat the URL
        return AttemptResult(False, error="the webhook URL is not valid")
    except Exception as exc:  # anything else: its name only, never its words (the URL)
        if watch.expired:
            return watch.result(host)
        return AttemptResult(False, True, f"could not reach {host}: {type(exc).__name__}")
    finally:
        watch.cancel()
    if 200 <= status < 300:
        return AttemptResult(True)
    retry = status >= 500 or status in RETRY_STATUSES
    error = f"{host} answered HTTP {status}"
    if 300 <= status < 400:
        error += " (a redirect: webhooks are not redirected; give the final URL)"
    return AttemptResult(False, retry, error, retry_after_s(retry_after))


def retry_after_s(header: str | None) -> float | None:
    """A Retry-After header's delay in seconds, or None: only ASCII digits count (the
    receiver's text: "²" passes ``str.isdigit`` and then failed ``float``, outside any
    handler, and the alert was retried for ever), and at most 9 of them."""
    text = (header or "").strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 9):
        return None
    return float(text)


def headers_for(kind: str, alert_id: int, attempt: int, body: bytes,
                secret: bytes | None, timestamp: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    headers = {"Content-Type": "application/json", "User-Agent": f"EdgeFleet/{__version__}",
               EVENT_HEADER: kind, DELIVERY_HEADER: str(alert_id),
               TIMESTAMP_HEADER: str(timestamp), "X-EdgeFleet-Attempt": str(attempt)}
    if secret is not None:
        headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
    return headers
