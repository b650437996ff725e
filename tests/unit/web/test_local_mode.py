"""The tokenless server's gate (web/local_mode.py): Host names, the peer's uid from recorded
``/proc/net/tcp`` tables, and the gate applied to every path until an admin token exists."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from orchestrator.access import auth
from orchestrator.core.config import Settings
from web.app import create_app
from web.local_mode import host_name, peer_uid

# Recorded from `cat /proc/net/tcp` and `/proc/net/tcp6` on a Debian 12 machine: a server on
# 127.0.0.1:8000 (0x1F40) with one client (port 0xC350 = 50000, uid 1000) and the server's
# accepted socket (uid 0); a v6 client [::1]:50001 -> [::1]:8000 (uid 1001) and an IPv4-mapped
# one ::ffff:127.0.0.1:50002 -> :8000 (uid 1002).
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:C350 0100007F:1F40 01 00000000:00000000 00:00000000 00000000  1000        0 2 1
   2: 0100007F:1F40 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:C351 00000000000000000000000001000000:1F40 01 00000000:00000000 00:00000000 00000000  1001        0 4 1
   1: 0000000000000000FFFF00000100007F:C352 0000000000000000FFFF00000100007F:1F40 01 00000000:00000000 00:00000000 00000000  1002        0 5 1
"""  # noqa: E501 - recorded lines


@pytest.mark.parametrize(("header", "name"), [
    ("127.0.0.1:8000", "127.0.0.1"), ("localhost", "localhost"), ("[::1]:8000", "::1"),
    ("[::1]", "::1"), ("evil.example:8000", "evil.example"), ("", "")])
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


def test_peer_uid_reads_the_clients_end_of_the_connection(tmp_path: Path) -> None:
    tcp, tcp6 = tmp_path / "tcp", tmp_path / "tcp6"
    tcp.write_text(TCP)
    tcp6.write_text(TCP6)
    tables = (tcp, tcp6)
    assert peer_uid(("127.0.0.1", 50000), ("127.0.0.1", 8000), tables) == 1000
    assert peer_uid(("::1", 50001), ("::1", 8000), tables) == 1001
    assert peer_uid(("::ffff:127.0.0.1", 50002), ("::ffff:127.0.0.1", 8000), tables) == 1002
    assert peer_uid(("127.0.0.1", 50003), ("127.0.0.1", 8000), tables) is None


def test_peer_uid_of_a_real_connection_is_ours() -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, addr = server.accept()
        try:
            assert peer_uid(addr, server.getsockname()) == os.getuid()
        finally:
            accepted.close()
            client.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


def test_without_a_token_only_loopback_names_are_served_on_every_path(
        settings: Settings) -> None:
    client = TestClient(create_app(settings, run_jobs=False), base_url="http://evil.example")
    for path in ("/api/devices", "/", "/metrics", "/docs", "/static/app.css", "/login"):
        response = client.get(path)
        assert response.status_code == 403, path
        assert "evil.example" in response.json()["detail"]
    ok = TestClient(create_app(settings, run_jobs=False), base_url="http://127.0.0.1:8000")
    assert ok.get("/api/devices").status_code == 200


def test_with_an_admin_token_the_name_is_not_the_gate(settings: Settings) -> None:
    _, secret = auth.create_token(settings, "me", "admin")
    client = TestClient(create_app(settings, run_jobs=False), base_url="http://fleet.lab")
    assert client.get("/api/devices").status_code == 401
    bearer = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/devices", headers=bearer).status_code == 200
