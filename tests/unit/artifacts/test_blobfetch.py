"""A worker's blob fetch, piece by piece: what ``BlobStore.add_verified`` keeps and refuses, and
the control plane source's handling of its token (a real HTTP server on loopback that redirects
elsewhere). The whole path against a real ``edgefleet serve`` and sshd is
tests/fleet/test_shared_state.py."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.artifacts.blobfetch import (
    BlobFetchError,
    HttpSource,
    Needed,
    blob_store,
    ensure_local,
    redacted_origin,
)
from orchestrator.artifacts.blobstore import BlobIntegrityError, BlobStore
from orchestrator.core.config import Settings

DATA = bytes(range(256)) * 1000
SHA = hashlib.sha256(DATA).hexdigest()


def files_in(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def chunks(data: bytes, size: int = 4096) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_verified_bytes_are_stored(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    assert store.add_verified(SHA, len(DATA), chunks(DATA), "test") == len(DATA)
    assert store.path(SHA).read_bytes() == DATA
    assert files_in(store.root) == [store.path(SHA)]


@pytest.mark.parametrize(("body", "message"), [
    (DATA[:100] + bytes([DATA[100] ^ 1]) + DATA[101:], "hash to"),
    (DATA[: len(DATA) // 2], f"cut short at {len(DATA) // 2} of {len(DATA)} bytes"),
    (DATA + b"x", f"more than its {len(DATA)} bytes"),
], ids=["flipped-byte", "cut-short", "too-long"])
def test_wrong_bytes_are_refused_and_nothing_kept(tmp_path: Path, body: bytes,
                                                  message: str) -> None:
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(BlobIntegrityError, match=message) as refused:
        store.add_verified(SHA, len(DATA), chunks(body), "the control plane http://cp:8000")
    assert f"blob {SHA} from the control plane http://cp:8000" in str(refused.value)
    assert files_in(store.root) == [] and not store.has(SHA)


def test_an_interrupted_download_leaves_nothing(tmp_path: Path) -> None:
    def dropped() -> Iterator[bytes]:
        yield DATA[:4096]
        raise KeyboardInterrupt  # Ctrl-C, or a socket error, mid-download

    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(KeyboardInterrupt):
        store.add_verified(SHA, len(DATA), dropped(), "test")
    assert files_in(store.root) == []


def test_origin_in_errors_has_no_credentials() -> None:
    assert redacted_origin("https://me:pa55@cp.lab:8443/x?token=ef_1") == "https://cp.lab:8443"
    assert redacted_origin("http://[::1]:8000") == "http://[::1]:8000"


def test_nothing_fetched_when_present_and_no_source_named(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    store = blob_store(settings)
    store.add_verified(SHA, len(DATA), chunks(DATA), "test")
    assert ensure_local(settings, store, [Needed(SHA, len(DATA), "model.onnx of m@1")]) == 0
    other = Needed("cd" * 32, 3, "config.json of m@1")
    with pytest.raises(BlobFetchError, match="no source is configured") as refused:
        ensure_local(settings, store, [other])
    assert "config.json of m@1" in str(refused.value)
    assert "EDGEFLEET_CONTROL_PLANE_URL" in str(refused.value)


def test_a_token_is_required(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", control_plane_url="http://127.0.0.1:9")
    with pytest.raises(BlobFetchError, match="EDGEFLEET_CONTROL_PLANE_TOKEN is not set"):
        HttpSource(settings)


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str | None]
    redirect_to: str | None = None

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.seen.append(self.headers.get("Authorization"))
        if self.redirect_to:
            self.send_response(302)
            self.send_header("Location", self.redirect_to + self.path)
            self.send_header("Content-Length", "0")
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(DATA)))
        self.end_headers()
        if not self.redirect_to:
            self.wfile.write(DATA)

    def log_message(self, *args: object) -> None:
        pass


def serve(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_redirect_is_not_followed_so_the_token_goes_nowhere_else(tmp_path: Path) -> None:
    elsewhere_seen: list[str | None] = []
    cp_seen: list[str | None] = []
    elsewhere = serve(type("Elsewhere", (_Recorder,), {"seen": elsewhere_seen}))
    other_url = f"http://127.0.0.1:{elsewhere.server_address[1]}"
    control = serve(type("Cp", (_Recorder,), {"seen": cp_seen, "redirect_to": other_url}))
    try:
        token = "ef_secret-worker-token"
        settings = Settings(home=tmp_path / "home", control_plane_token=token,
                            control_plane_url=f"http://127.0.0.1:{control.server_address[1]}")
        store = blob_store(settings)
        with pytest.raises(BlobFetchError, match="redirect .HTTP 302., which is not followed"
                           ) as refused:
            ensure_local(settings, store, [Needed(SHA, len(DATA), "model.onnx of m@1")])
        assert token not in str(refused.value)
        assert cp_seen == [f"Bearer {token}"] and elsewhere_seen == []
        assert files_in(store.root) == []
    finally:
        for server in (control, elsewhere):
            server.shutdown()
            server.server_close()
