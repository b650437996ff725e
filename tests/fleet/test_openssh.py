"""The OpenSSH-binary transport and the paramiko one, on real sshd hosts: a push through each,
unknown and changed host keys refused with a clear error, and a CLI push that starts before its
job is recorded (``fleet.early``) adopted, or left alone when the device is leased."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import HostKeyError
from orchestrator.core.models import Deployment, HostKey, Job
from orchestrator.fleet import early
from orchestrator.fleet.leases import acquire, release
from orchestrator.inventory.devices import get_device, to_target
from orchestrator.transport import connect
from orchestrator.transport.factory import ssh_connector
from orchestrator.transport.openssh import OpenSshConnection

from ..conftest import Cli
from ..unit.cli.test_cli_startup import imported_by
from .sshd import write_inventory
from .test_push_e2e import active_manifest, model_folder, setup_fleet, sha256


def _settings(home: Path, **overrides: object) -> Settings:
    return Settings(home=home, **overrides)  # type: ignore[arg-type]


def test_connector_choice(home: Path, sshd_factory, tmp_path: Path, cli: Cli) -> None:
    host = sshd_factory(1)[0]
    inventory = write_inventory(tmp_path / "inventory.yml", [host], extra_host_vars={
        host.name: {"ansible_connection": "paramiko"}})
    cli("inventory", "sync", inventory)
    with session_scope(_settings(home)) as session:
        target = to_target(get_device(session, host.name))
    assert target.connection == "paramiko"
    assert ssh_connector(target, _settings(home, ssh_connector="openssh")) == "paramiko"
    plain = type(target)(name="x", address="127.0.0.1")
    assert ssh_connector(plain, _settings(home)) == "openssh"  # `ssh` is on PATH here
    assert ssh_connector(plain, _settings(home, ssh_connector="paramiko")) == "paramiko"


@pytest.mark.parametrize("connection", ["openssh", "paramiko"])
def test_push_through_each_transport(connection: str, cli: Cli, sshd_factory,
                                     tmp_path: Path) -> None:
    """Install (a file put), push (a session with streamed blobs), re-push, rollback."""
    hosts = sshd_factory(2)
    setup_fleet(cli, tmp_path, hosts, **{h.name: {"ansible_connection": connection}
                                          for h in hosts})
    v1 = cli("bundle", "build", model_folder(tmp_path, 0), "--name", "m", "--json").json
    v2 = cli("bundle", "build", model_folder(tmp_path, 1), "--name", "m", "--json").json
    held: set[str] = set()  # blobs already on the devices (v2 shares config.json with v1)
    for bundle in (v1, v2):
        pushed = cli("push", f"m@{bundle['version']}", "pis", "--json").json
        new = sum(f["size"] for f in bundle["files"] if f["sha256"] not in held)
        assert [(p["state"], p["bytes_sent"]) for p in pushed] == [("active", new)] * 2, pushed
        held |= {f["sha256"] for f in bundle["files"]}
        assert all(p["smoke"]["ok"] for p in pushed)
        for host in hosts:
            for entry in bundle["files"]:
                assert sha256(host.root / "current" / entry["path"]) == entry["sha256"]
    again = cli("push", "m@2", "pis", "--json").json
    assert [(p["state"], p["bytes_sent"]) for p in again] == [("unchanged", 0)] * 2
    back = cli("rollback", "pis", "--json").json
    assert [b["state"] for b in back] == ["rolled-back"] * 2


def test_openssh_refuses_unknown_and_changed_host_keys(cli: Cli, sshd_factory, home: Path,
                                                       tmp_path: Path) -> None:
    host = sshd_factory(1)[0]
    inventory = write_inventory(tmp_path / "inventory.yml", [host], extra_host_vars={
        host.name: {"ansible_connection": "openssh"}})
    cli("inventory", "sync", inventory)
    settings = _settings(home)
    with session_scope(settings) as session:
        target = to_target(get_device(session, host.name))

    # Unknown: nothing in EdgeFleet's known_hosts (nor in ~/.ssh/known_hosts for this port).
    with connect(target, settings) as conn:
        assert isinstance(conn, OpenSshConnection)
        with pytest.raises(HostKeyError) as unknown:
            conn.run(["mkdir", "-p", str(host.root)])
    message = str(unknown.value)
    assert "is not trusted" in message and host.host_key_fingerprint in message
    assert f"edgefleet devices trust {host.name}" in message
    assert not host.root.exists()  # the command never ran

    cli("devices", "trust", host.name)
    with connect(target, settings) as conn:
        assert conn.run(["true"]).exit_code == 0

    # Changed: the host was "reinstalled" after we trusted it.
    old = host.host_key_fingerprint
    new = host.regenerate_host_key()
    with connect(target, settings) as conn, pytest.raises(HostKeyError) as changed:
        conn.run(["mkdir", "-p", str(host.root)])
    message = str(changed.value)
    assert "HOST KEY CHANGED" in message and old in message and new in message
    assert f"edgefleet devices trust {host.name} --replace" in message
    assert not host.root.exists()
    # ssh did not learn the new key behind our back (UpdateHostKeys=no, no prompt): the
    # database still holds the old one, and no known_hosts file was written.
    with session_scope(settings) as session:
        rows = session.exec(select(HostKey)).all()
    assert [r.fingerprint for r in rows] == [old]
    assert not (home / "known_hosts").exists()


def test_cli_push_starts_early_and_is_adopted(cli: Cli, sshd_factory, home: Path,
                                              tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """What a CLI push may do before its job is recorded (open a session, plan, stream
    verified blobs) changes nothing the device runs; the session it opened is the one the push
    adopts and activates through, recorded as a job like any push."""
    host = sshd_factory(1)[0]
    setup_fleet(cli, tmp_path, [host])
    v1 = cli("bundle", "build", model_folder(tmp_path, 0), "--name", "m", "--json").json
    settings = _settings(home)
    assert early.start(settings, "m", host.name, 10, None) == 1  # "m": its latest, like the ORM
    begun = early.claim(host.name, v1["digest"])
    assert begun is not None
    begun.wait_sent(lambda n: None)
    assert begun.sent == v1["size_bytes"]
    early.discard_all()  # as the command does when it ends: the next one starts afresh
    begun.discard()
    assert not (host.root / "current").exists()  # streamed, verified, not activated
    with session_scope(settings) as session:
        assert not session.exec(select(Job)).all() and not session.exec(select(Deployment)).all()

    claimed: list[object] = []
    real_claim = early.claim

    def spy(*args: object) -> object:
        claimed.append(real_claim(*args))  # type: ignore[arg-type]
        return claimed[-1]

    monkeypatch.setattr(early, "claim", spy)
    v2 = cli("bundle", "build", model_folder(tmp_path, 1), "--name", "m", "--json").json
    pushed = cli("push", "m", host.name, "--json").json
    held = {f["sha256"] for f in v1["files"]}
    new = sum(f["size"] for f in v2["files"] if f["sha256"] not in held)
    assert (pushed[0]["state"], pushed[0]["bytes_sent"]) == ("active", new), pushed
    assert len(claimed) == 1 and isinstance(claimed[0], early.EarlyPush)
    assert active_manifest(host)["version"] == "2"
    with session_scope(settings) as session:
        job = session.exec(select(Job)).one()
        deployment = session.exec(select(Deployment)).one()
        assert (job.kind, job.state, job.origin) == ("push", "succeeded", "cli")
        assert (deployment.job_id, deployment.state) == (job.id, "active")
    assert not early._started  # noqa: SLF001 - nothing left behind


def test_leased_device_is_not_started_early(cli: Cli, sshd_factory, home: Path,
                                            tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A device another operation holds gets no early session: the push says it is busy and
    not a byte reaches the device (a benchmark there is not disturbed)."""
    monkeypatch.setenv("EDGEFLEET_LEASE_WAIT_S", "0")  # fail at once rather than wait for it
    host = sshd_factory(1)[0]
    setup_fleet(cli, tmp_path, [host])
    bundle = cli("bundle", "build", model_folder(tmp_path), "--name", "m", "--json").json
    settings = _settings(home)
    acquire(settings, host.name, "bench", "otherhost:1:abcd")
    try:
        assert early.start(settings, "m@1", host.name, 10, None) == 0
        early.discard_all()
        pushed = cli("push", "m@1", host.name, "--json", expect=1).json
        assert pushed[0]["state"] == "failed" and "busy with a bench" in pushed[0]["error"]
        assert pushed[0]["bytes_sent"] == 0
        incoming = host.root / "incoming"
        assert not incoming.exists() or not any(incoming.iterdir())
        assert not (host.root / "blobs").exists() or not any(
            p.name.startswith(bundle["files"][0]["sha256"][:8])
            for p in (host.root / "blobs").rglob("*"))
    finally:
        release(settings, host.name, "otherhost:1:abcd")


def test_a_fresh_push_process_never_loads_paramiko(cli: Cli, sshd_factory, home: Path,
                                                   tmp_path: Path) -> None:
    """The OpenSSH path of `edgefleet push`, as a user runs it (its own process, through
    cli.quick and fleet.early): paramiko and fabric (~0.25 s) are not imported at all."""
    host = sshd_factory(1)[0]
    setup_fleet(cli, tmp_path, [host])
    bundle = cli("bundle", "build", model_folder(tmp_path), "--name", "m", "--json").json
    modules, pushed = imported_by(home, tmp_path, "push", "m@1", host.name, "--json")
    assert (pushed[0]["state"], pushed[0]["bytes_sent"]) == ("active", bundle["size_bytes"])
    assert not modules & {"paramiko", "fabric", "onnx", "onnxruntime"}, modules


def test_a_bundle_with_a_blob_missing_here_is_not_started_early(
        cli: Cli, sshd_factory, home: Path, tmp_path: Path) -> None:
    """This host must fetch a blob first (artifacts.blobfetch, in deploy.push): nothing is
    started before the job; the push then says what is missing, in its words, having sent
    nothing."""
    host = sshd_factory(1)[0]
    setup_fleet(cli, tmp_path, [host])
    bundle = cli("bundle", "build", model_folder(tmp_path), "--name", "m", "--json").json
    blob = bundle["files"][0]["sha256"]
    paths = [p for p in (home / "blobs").rglob(f"{blob}*") if p.is_file()]
    assert paths
    for path in paths:
        path.unlink()
    assert early.start(_settings(home), "m@1", host.name, 10, None) == 0
    early.discard_all()
    refused = cli("push", "m@1", host.name, "--json", expect=2).json
    assert "not in this host's blob store" in refused["error"], refused
    assert not (host.root / "incoming").exists() or not any((host.root / "incoming").iterdir())
