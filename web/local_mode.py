"""Who may use a server that has no admin token: this machine's own user, by loopback names.

Without an admin token every request is the local admin (no login on a one-person laptop), so
the server must make sure the request really comes from that person. Three ways in are closed,
for every path (pages, API, ``/metrics``, ``/docs``, static files):

- **Other machines**: ``edgefleet serve`` refuses to bind beyond loopback (``auth.check_bind``),
  and a peer address that is not loopback is refused here too (a server started some other way).
- **Web pages the user visits (DNS rebinding)**: a page on ``evil.example`` can make its own
  name resolve to 127.0.0.1 and then talk to this server as a same-origin page. Its requests
  carry ``Host: evil.example``, so only the Host names ``localhost``, ``127.0.0.1`` (any
  loopback address) and ``[::1]``, any port, are served. (Cross-site requests with a loopback
  Host are refused by ``security.csrf_protect``'s Origin check.)
- **Other users of the same machine** (a shared lab workstation): on Linux the owner of the
  client's end of a loopback TCP connection is in ``/proc/net/tcp{,6}``; only the server's own
  uid is served. A token would protect no more than this: any process of the server's user
  can read its state directory anyway. Where the owner cannot be read (another OS), the
  check is skipped and the server says so when it starts.

With an admin token none of this applies: every request then needs a token or a session.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.access import auth
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope

PROC_NET = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
LOOPBACK_NAMES = "localhost, 127.0.0.1 or [::1]"
_ESTABLISHED = "01"


def host_name(host_header: str) -> str:
    """The name part of a Host header: ``[::1]:8000`` -> ``::1``, ``a.b:80`` -> ``a.b``."""
    host = host_header.strip()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _proc_addr(field: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """``0100007F:1F40`` (IPv4) or 32 hex digits (IPv6), each 32-bit word in host byte order,
    as the kernel prints them; IPv4-mapped IPv6 comes back as IPv4."""
    hex_addr, hex_port = field.split(":")
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    addr: Any = ipaddress.ip_address(words)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr, int(hex_port, 16)


def _normal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(host)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def peer_uid(client: tuple[str, int], server: tuple[str, int],
             tables: tuple[Path, ...] = PROC_NET) -> int | None:
    """The uid owning the client's end of the TCP connection ``client`` -> ``server`` (the
    socket whose local address is ``client`` and remote address ``server``), or None if no
    table lists it."""
    want_local = (_normal(client[0]), client[1])
    want_remote = (_normal(server[0]), server[1])
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 8 or fields[3] != _ESTABLISHED:
                continue
            if _proc_addr(fields[1]) == want_local and _proc_addr(fields[2]) == want_remote:
                return int(fields[7])
    return None


def can_check_peers() -> bool:
    return PROC_NET[0].exists()


IN_PROCESS_CLIENT = "testclient"  # the peer name starlette.testclient gives its requests
FORWARDED = {"x-forwarded-for", "forwarded"}  # headers a proxy-trusting server takes a peer from


def refusal(scope: Scope, headers: dict[str, str]) -> str | None:
    """Why a tokenless server must not answer this request, or None if it may."""
    host = headers.get("host", "")
    if not auth.is_loopback(host_name(host)):
        return (f"Host {host[:100]!r} refused: without an admin token this server answers "
                f"only to {LOOPBACK_NAMES} (a web page may not rebind its own name to it). "
                "To serve other names, create one: `edgefleet tokens create --role admin`")
    client, server = scope.get("client"), scope.get("server")
    if client and client[0] == IN_PROCESS_CLIENT and not FORWARDED.intersection(headers):
        # Starlette's in-process test client: there is no socket peer to check. Not when the
        # name came from a forwarding header: behind a server that trusts them from loopback
        # (uvicorn's default proxy_headers), `X-Forwarded-For: testclient` from another local
        # user would otherwise pass for it.
        return None
    try:
        client_ip = _normal(client[0]) if client else None
    except ValueError:  # not an address: never taken on trust (a forged forwarding header)
        client_ip = None
    if client_ip is None or not client_ip.is_loopback:
        return ("connections from other machines are refused: no admin token exists "
                "(`edgefleet tokens create --role admin`)")
    if server and can_check_peers():
        uid = peer_uid((client[0], client[1]), (server[0], server[1]))
        if uid != os.getuid():
            return ("refused: without an admin token this server serves only the user who "
                    "started it. Ask them for a token, or start your own server")
    return None


class LocalModeGuard:
    """ASGI middleware applying :func:`refusal` while no admin token exists (checked per
    request only when the request would be refused, so the owner's requests cost no query)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        reason = refusal(scope, headers)
        if reason is not None:
            with session_scope(self.settings) as session:
                configured = auth.auth_configured(session)
            if not configured:
                await _forbid(scope, send, reason)
                return
        await self.app(scope, receive, send)


async def _forbid(scope: Scope, send: Send, reason: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"detail": reason}).encode()
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
