"""A cap on every request's body, before routing: 413 past ``MAX_REQUEST_BYTES``.

Why here and not in the routes: FastAPI reads and validates a JSON body before a route's
dependencies run, the login form is read before its password is checked, and Starlette keeps
the whole body in memory; an anonymous client could make the server hold any size (a 300 MB
POST to /login took it from 160 to 747 MB). The largest legitimate body, an inventory pasted
into the Fleet page, is a few hundred kB for 1,000 devices; nothing uploads models over HTTP.
A declared Content-Length past the cap is refused before a byte is read; a body without one
(chunked) is counted as it arrives.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_REQUEST_BYTES = 4 * 1024 * 1024
TOO_LARGE = (f"request body larger than {MAX_REQUEST_BYTES // (1024 * 1024)} MiB: refused "
             "(nothing in the API takes more; an inventory goes through `edgefleet inventory "
             "sync FILE`)")


class BodyLimit:
    """ASGI middleware: HTTP bodies up to ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_REQUEST_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _refuse(send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, TOO_LARGE)  # the route's body read ends here
            return message

        await self.app(scope, counted, send)


async def _refuse(send: Send) -> None:
    body = b'{"detail":"' + TOO_LARGE.encode() + b'"}'
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
