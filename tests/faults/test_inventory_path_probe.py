"""An admin request names a file on the server that is not an inventory (``/etc/shadow``,
directly, by ``..``, or through a symlink planted in the inventory directory). The real server
must refuse it without opening it: no error may carry the file's content."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.live_server import Server

SECRET_LINE = "root:s3cr3t-hash-line:20228:0:99999:7:::"


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """A stand-in for /etc/shadow outside the inventory directory (the real one is probed too)."""
    path = tmp_path / "outside" / "shadow"
    path.parent.mkdir()
    path.write_text(SECRET_LINE + "\n")
    return path


def test_files_outside_the_inventory_directory_are_never_read(
        serve: Callable[..., Server], home: Path, secret_file: Path) -> None:
    server = serve()
    planted = home / "innocent.yml"
    planted.symlink_to(secret_file)
    relative = "../" * len(home.parts) + str(secret_file).lstrip("/")
    probes = ["/etc/shadow", str(secret_file), str(planted), relative,
              str(secret_file.with_suffix(".yml"))]
    for path in probes:
        for dry_run in (True, False):
            answer = server.api("POST", "/api/inventory/sync",
                                json={"path": path, "dry_run": dry_run})
            assert answer.status_code == 400, (path, answer.status_code, answer.text)
            assert "root:" not in answer.text and "s3cr3t" not in answer.text
            assert "EDGEFLEET_INVENTORY_DIR" in answer.json()["detail"]
        page = server.api("GET", "/fleet/inventory", params={"path": path})
        assert page.status_code == 400 and "s3cr3t" not in page.text and "root:" not in page.text
    nul = server.api("POST", "/api/inventory/sync", json={"path": "lab\u0000.yml"})
    assert nul.status_code == 400 and "NUL" in nul.json()["detail"]
    assert server.api("GET", "/fleet/inventory", params={"path": "x\x00"}).status_code == 400
    assert server.get("/api/devices") == []
    assert server.get("/api/audit") == []


def test_an_inventory_in_the_directory_is_synced_and_audited(
        serve: Callable[..., Server], home: Path) -> None:
    server = serve()
    (home / "lab.yml").write_text("all:\n  hosts:\n    here: {ansible_connection: local}\n")
    report = server.post("/api/inventory/sync", {"path": "lab.yml"}, status=200)
    assert report["added"] == ["here"] and report["applied"] is True
    (event,) = server.get("/api/audit")
    assert (event["action"], event["target"]) == ("inventory.sync",
                                                  str((home / "lab.yml").resolve()))
