"""Shared state across workers (issue 14 item 4), end to end: a second EDGEFLEET_HOME (another
"host": empty blob store, no known_hosts file, its own SSH key) pushes to a real sshd device
after fetching the bundle's blobs from a real running control plane (``edgefleet serve`` on
loopback) and checking the device against the host key in the database. Corrupted and cut-short
downloads, and requests without a valid token, are refused for real."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.live_server import REPO, Server

from ..conftest import Cli
from .sshd import SshdHost, write_inventory
from .test_push_e2e import model_folder

CLI = [sys.executable, "-c", "from orchestrator.cli.main import main; main()"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ControlPlane:
    """Host A: the inventory loaded, the host key trusted (into the DB), the agent installed,
    a bundle built, an admin and an operator token, ``edgefleet serve`` running."""

    def __init__(self, cli: Cli, tmp_path: Path, host: SshdHost, server: Server,
                 operator: str, viewer: str, bundle: dict) -> None:
        self.cli, self.tmp_path, self.host, self.server = cli, tmp_path, host, server
        self.operator, self.viewer, self.bundle = operator, viewer, bundle

    def blob_path(self, sha: str) -> Path:
        return self.cli.home / "blobs" / sha[:2] / sha


@pytest.fixture
def control_plane(cli: Cli, tmp_path: Path, sshd_factory, serve) -> ControlPlane:
    (host,) = sshd_factory(1)
    # Host A's copy of the login key: the inventory names it, and host B never has it.
    a_key = tmp_path / "host-a-keys" / "id_ed25519"
    a_key.parent.mkdir()
    shutil.copy(host.key_file, a_key)
    inventory = write_inventory(tmp_path / "inventory.yml", [host], extra_host_vars={
        host.name: {"ansible_ssh_private_key_file": str(a_key)}})
    cli("inventory", "sync", inventory, "--json")
    trusted = cli("devices", "trust", "pis", "--json").json
    assert [t["fingerprint"] for t in trusted] == [host.host_key_fingerprint]
    assert not (cli.home / "known_hosts").exists()  # the key is in the database
    assert cli("agent", "install", "pis", "--json").json[0]["state"] == "installed"
    bundle = cli("bundle", "build", model_folder(tmp_path, 0), "--name", "first-crack",
                 "--json").json
    admin = cli("tokens", "create", "--role", "admin", "--name", "me", "--json").json["secret"]
    operator = cli("tokens", "create", "--role", "operator", "--name", "worker-b",
                   "--json").json["secret"]
    viewer = cli("tokens", "create", "--role", "viewer", "--name", "dash", "--json").json["secret"]
    server = serve(token=admin)
    a_key.unlink()  # from here on, only host B's own key logs in
    return ControlPlane(cli, tmp_path, host, server, operator, viewer, bundle)


def host_b_env(cp: ControlPlane, **overrides: str) -> dict[str, str]:
    """Host B's environment: its own home, blob store and SSH key, the shared database, the
    control plane's URL and the operator token; a HOME with no ~/.ssh."""
    home_b = cp.tmp_path / "host-b"
    user_home = cp.tmp_path / "host-b-user"
    user_home.mkdir(exist_ok=True)
    key = home_b / "keys" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True)
        shutil.copy(cp.host.key_file, key)
    env = dict(os.environ, EDGEFLEET_HOME=str(home_b), HOME=str(user_home),
               EDGEFLEET_SSH_KEY_FILE=str(key), EDGEFLEET_CONTROL_PLANE_URL=cp.server.url,
               EDGEFLEET_CONTROL_PLANE_TOKEN=cp.operator)
    # SQLite: host A's file stands in for the shared server; PostgreSQL: DATABASE_URL is set.
    env.setdefault("DATABASE_URL", f"sqlite:///{cp.cli.home / 'edgefleet.db'}")
    env.update(overrides)
    return env


class Pushed:
    """``edgefleet push first-crack pis --json`` run as host B; ``text`` is stdout + stderr
    (with --json an error is a JSON object on stdout)."""

    def __init__(self, env: dict[str, str]) -> None:
        done = subprocess.run([*CLI, "push", "first-crack", "pis", "--json"], env=env,
                              cwd=REPO, capture_output=True, text=True, timeout=180,
                              check=False)
        self.returncode, self.stdout, self.text = done.returncode, done.stdout, \
            done.stdout + done.stderr


def push_from_b(cp: ControlPlane, env: dict[str, str]) -> Pushed:
    return Pushed(env)


def blobs_of(home: Path) -> list[str]:
    """Every file under ``home/blobs`` (a temp file left behind would show here)."""
    root = home / "blobs"
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_worker_on_another_host_fetches_blobs_and_pushes(control_plane: ControlPlane) -> None:
    cp = control_plane
    env = host_b_env(cp)
    home_b = Path(env["EDGEFLEET_HOME"])

    # A flipped byte in the control plane's copy: served, refused, nothing kept.
    model = next(f for f in cp.bundle["files"] if f["path"] == "model.onnx")
    served = cp.blob_path(model["sha256"])
    original = served.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    served.write_bytes(bytes(flipped))
    failed = push_from_b(cp, env)
    assert failed.returncode != 0, failed.text
    assert f"blob {model['sha256']} from the control plane" in failed.text
    assert "refused, nothing kept" in failed.text
    assert cp.operator not in failed.text
    assert model["sha256"] not in blobs_of(home_b)
    assert not [n for n in blobs_of(home_b) if n.startswith(".")]
    served.write_bytes(original)

    pushed = push_from_b(cp, env)
    assert pushed.returncode == 0, pushed.text
    (outcome,) = json.loads(pushed.stdout)
    assert outcome["state"] == "active" and outcome["bytes_sent"] == cp.bundle["size_bytes"]
    for entry in cp.bundle["files"]:
        assert sha256(cp.host.root / "current" / entry["path"]) == entry["sha256"]
    assert blobs_of(home_b) == sorted({f["sha256"] for f in cp.bundle["files"]})
    assert not (home_b / "known_hosts").exists()  # the host key came from the database
    # Host A's key path (in the inventory) is gone: B logged in with EDGEFLEET_SSH_KEY_FILE.
    without_key = push_from_b(cp, {k: v for k, v in env.items()
                                   if k != "EDGEFLEET_SSH_KEY_FILE"})
    assert "is not on this host; set EDGEFLEET_SSH_KEY_FILE" in without_key.text, without_key.text

    # The device is reinstalled: host B, which never ran `devices trust`, refuses its new key
    # by the database's record, naming the device and what to run.
    old_fp = cp.host.host_key_fingerprint
    new_fp = cp.host.regenerate_host_key()
    changed = push_from_b(cp, env)
    assert changed.returncode == 1, changed.text
    (outcome,) = json.loads(changed.stdout)
    assert outcome["state"] == "failed"
    assert f"{cp.host.name}: HOST KEY CHANGED" in outcome["error"]
    assert old_fp in outcome["error"] and new_fp in outcome["error"]
    assert f"edgefleet devices trust {cp.host.name} --replace" in outcome["error"]


def test_blob_endpoint_needs_an_operator_token(control_plane: ControlPlane) -> None:
    cp = control_plane
    sha = cp.bundle["files"][0]["sha256"]
    url = f"{cp.server.url}/api/blobs/{sha}"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer ef_not-a-token"}).status_code == 401
    viewer = httpx.get(url, headers={"Authorization": f"Bearer {cp.viewer}"})
    assert viewer.status_code == 403
    ok = httpx.get(url, headers={"Authorization": f"Bearer {cp.operator}"})
    assert ok.status_code == 200 and hashlib.sha256(ok.content).hexdigest() == sha
    missing = httpx.get(f"{cp.server.url}/api/blobs/{'0' * 64}",
                        headers={"Authorization": f"Bearer {cp.operator}"})
    assert missing.status_code == 404
    assert httpx.get(f"{cp.server.url}/api/blobs/..%2F..%2Fsecret_key",
                     headers={"Authorization": f"Bearer {cp.operator}"}).status_code in (404, 422)

    # A worker with a wrong token is told which setting to fix, and the token is not echoed.
    bad = "ef_wrong-token-for-this-test"
    refused = push_from_b(cp, host_b_env(cp, EDGEFLEET_CONTROL_PLANE_TOKEN=bad))
    assert refused.returncode != 0
    assert "refused this worker's token (HTTP 401)" in refused.text
    assert bad not in refused.text
    # No source configured at all: named, with the settings to set.
    alone = {k: v for k, v in host_b_env(cp).items() if not k.startswith("EDGEFLEET_CONTROL")}
    none = push_from_b(cp, alone)
    assert "no source is configured" in none.text and "EDGEFLEET_CONTROL_PLANE_URL" in none.text


class _CutShort(http.server.BaseHTTPRequestHandler):
    """Announces the whole blob, sends half of it, closes: a link dropped mid-download."""

    body = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body[: len(self.body) // 2])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def cut_short_server(control_plane: ControlPlane) -> Iterator[str]:
    model = next(f for f in control_plane.bundle["files"] if f["path"] == "model.onnx")
    handler = type("Handler", (_CutShort,), {"body": control_plane.blob_path(
        model["sha256"]).read_bytes()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_cut_short_download_is_refused_and_leaves_nothing(control_plane: ControlPlane,
                                                          cut_short_server: str) -> None:
    cp = control_plane
    # Every other blob is already here: the model is the one fetched (from the cut-short server).
    env = host_b_env(cp, EDGEFLEET_CONTROL_PLANE_URL=cut_short_server)
    home_b = Path(env["EDGEFLEET_HOME"])
    model = next(f for f in cp.bundle["files"] if f["path"] == "model.onnx")
    for entry in cp.bundle["files"]:
        if entry is not model:
            dest = home_b / "blobs" / entry["sha256"][:2] / entry["sha256"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(cp.blob_path(entry["sha256"]), dest)
    before = blobs_of(home_b)
    failed = push_from_b(cp, env)
    assert failed.returncode != 0, failed.text
    assert f"blob {model['sha256']}" in failed.text
    assert f"cut short at {model['size'] // 2} of {model['size']} bytes" in failed.text
    assert blobs_of(home_b) == before  # no partial blob, no temp file
    assert not (cp.host.root / "current").exists()  # the device was never touched
