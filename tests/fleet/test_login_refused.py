"""A login the device refuses says why when it can tell: a key protected by a passphrase
(EdgeFleet never prompts, so the key is skipped and sshd answers "Permission denied"), with
the fix; otherwise which inventory variables to check. Real sshd, both SSH connectors; the
key-format check on keys ssh-keygen made in each format."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.transport.keyfile import passphrase_protected

from ..conftest import Cli
from .sshd import write_inventory


def keygen(path: Path, passphrase: str, *fmt: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519" if not fmt else "rsa", "-N", passphrase,
                    "-f", str(path), *fmt], check=True, capture_output=True)
    return path


def test_encrypted_keys_are_told_from_plain_ones_in_each_format(tmp_path: Path) -> None:
    assert passphrase_protected(str(keygen(tmp_path / "a", "secret")))
    assert not passphrase_protected(str(keygen(tmp_path / "b", "")))
    assert passphrase_protected(str(keygen(tmp_path / "c", "secret", "-m", "PEM")))
    assert not passphrase_protected(str(keygen(tmp_path / "d", "", "-m", "PEM")))
    (tmp_path / "e").write_text("not a key")
    assert not passphrase_protected(str(tmp_path / "e"))
    assert not passphrase_protected(str(tmp_path / "missing"))


@pytest.mark.parametrize("connector", ["openssh", "paramiko"])
def test_a_passphrase_key_is_named_with_the_fix(cli: Cli, sshd_factory, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                connector: str) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)  # no agent holding it
    (host,) = sshd_factory(1)
    locked = tmp_path / "locked" / "id_ed25519"
    locked.parent.mkdir()
    shutil.copy(host.key_file, locked)
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", "secret", "-f", str(locked)],
                   check=True, capture_output=True)
    inventory = write_inventory(tmp_path / "inventory.yml", [host], extra_host_vars={
        host.name: {"ansible_ssh_private_key_file": str(locked),
                    "ansible_connection": connector}})
    cli("inventory", "sync", inventory)
    cli("devices", "trust", "pis")
    (row,) = cli("telemetry", "pis", "--json", expect=1).json
    assert f"authentication to 127.0.0.1:{host.port} as {host.user} failed" in row["error"]
    assert f"the key {locked} is protected by a passphrase" in row["error"], row["error"]
    assert f"`ssh-add {locked}`" in row["error"]

    # The same key without its passphrase but not authorized: the plain advice.
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "secret", "-N", "", "-f", str(locked)],
                   check=True, capture_output=True)
    other = keygen(tmp_path / "other", "")
    shutil.copy(other, locked)
    (row,) = cli("telemetry", "pis", "--json", expect=1).json
    assert "passphrase" not in row["error"]
    assert "check ansible_user and ansible_ssh_private_key_file" in row["error"], row["error"]
