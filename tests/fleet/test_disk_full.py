"""A full disk on the device, over real SSH, on a real (tiny) tmpfs: refused or failed with a
clear error, and nothing lost — the previous bundle stays active, no .part or staging is left."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.demo.model import make_large_model

from ..conftest import Cli
from ..small_disk import mounted_tmpfs
from .test_push_e2e import active_manifest, model_folder, setup_fleet


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 12 MiB tmpfs."""
    with mounted_tmpfs(tmp_path / "small-disk", "12m") as mount:
        yield mount


def leftovers(root: Path) -> list[Path]:
    return [*root.glob("incoming/*.part"), *root.glob("versions/.staging-*")]


def big_bundle(cli: Cli, tmp_path: Path, megabytes: float, seed: int) -> dict:
    folder = tmp_path / f"big-{seed}"
    make_large_model(folder / "model.onnx", megabytes, seed=seed)
    return cli("bundle", "build", folder, "--name", "m", "--json").json


def test_too_big_is_refused_before_any_byte_moves(cli: Cli, sshd_factory, tmpfs: Path,
                                                 tmp_path: Path) -> None:
    host = sshd_factory(1)[0]
    host.root = tmpfs / "root"
    setup_fleet(cli, tmp_path, [host], **{host.name: {"edgefleet_root": str(host.root)}})
    cli("bundle", "build", model_folder(tmp_path), "--name", "m")
    cli("push", "m@1", host.name)
    big = big_bundle(cli, tmp_path, 14, seed=1)
    failed = cli("push", f"m@{big['version']}", host.name, "--json", expect=1).json[0]
    assert failed["state"] == "failed" and failed["bytes_sent"] == 0
    assert "not enough disk space" in failed["error"] and "Nothing was sent" in failed["error"]
    assert active_manifest(host)["version"] == "1" and not leftovers(host.root)


def test_disk_filling_up_mid_transfer_loses_nothing(cli: Cli, sshd_factory, tmpfs: Path,
                                                    tmp_path: Path) -> None:
    """Two devices share the disk: each plan sees room for its own copy, together they do not
    fit, so at least one runs out of space while receiving (or, if they happen to run one after
    the other, the second is refused up front)."""
    hosts = sshd_factory(2)
    roots = {h.name: {"edgefleet_root": str(tmpfs / h.name)} for h in hosts}
    for host in hosts:
        host.root = tmpfs / host.name
    setup_fleet(cli, tmp_path, hosts, **roots)
    cli("bundle", "build", model_folder(tmp_path), "--name", "m")
    cli("push", "m@1", "pis")
    big = big_bundle(cli, tmp_path, 7, seed=2)
    results = cli("push", f"m@{big['version']}", "pis", "--forks", "2", "--json", expect=1).json
    failed = [r for r in results if r["state"] == "failed"]
    assert failed, results
    for result, host in zip(results, hosts, strict=True):
        assert not leftovers(host.root)
        if result["state"] == "failed":
            # Either refused up front or run out of space while receiving: both name the file
            # or the sizes, and say nothing was activated or sent.
            assert ("while receiving model.onnx" in result["error"]
                    or "not enough disk space" in result["error"]), result
            assert active_manifest(host)["version"] == "1"
        else:
            assert result["state"] == "active"
            assert active_manifest(host)["version"] == big["version"]
