"""Signed bundles end to end over real OpenSSH (issue 15): keys, signing at build and later,
pinning with ``agent install --trust-key``, and what a device with pinned keys refuses — unsigned,
wrongly signed, tampered in the DB after signing, a signature replayed onto another bundle, an
older signed version — each time keeping its previous version active, while a device without
pinned keys is unaffected; rotation with two keys pinned; ``rollback`` still goes back."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import MetaData, select
from sqlmodel import select as sql_select

from agent.protocol import canonical_json, manifest_digest
from orchestrator.core.config import get_settings
from orchestrator.core.db import get_engine, session_scope
from orchestrator.core.models import AuditEvent, Bundle

from ..conftest import Cli
from .test_push_e2e import active_manifest, model_folder, setup_fleet

PASSPHRASE = "correct horse battery staple"


def versions(hosts: list) -> list[str]:
    return [active_manifest(h)["version"] for h in hosts]


def by_device(rows: list[dict]) -> dict[str, dict]:
    return {r["device"]: r for r in rows}


def every_db_value() -> str:
    """Every value of every table, as text: what a stolen DB would give away."""
    engine = get_engine(get_settings())
    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        return "\n".join(str(row) for table in meta.sorted_tables
                         for row in conn.execute(select(table)))


def key_body(path: Path) -> list[str]:
    """The base64 lines of an OpenSSH private key file (what must never leave it)."""
    return [line for line in path.read_text().splitlines() if not line.startswith("-----")]


def test_keys_are_files_never_in_db_or_json(cli: Cli, home: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    plain = cli("keys", "create", "plain", "--json").json
    monkeypatch.setenv("EDGEFLEET_KEY_PASSPHRASE", PASSPHRASE)
    locked = cli("keys", "create", "locked", "--passphrase", "--json").json
    assert (plain["encrypted"], locked["encrypted"]) == (False, True)
    assert set(plain) == {"name", "public_key", "fingerprint", "encrypted", "created_by",
                          "created_at"}
    files = {name: home / "keys" / "signing" / name for name in ("plain", "locked")}
    for name, path in files.items():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
        body = key_body(path)
        outputs = cli("keys", "list", "--json").stdout + json.dumps(plain) + json.dumps(locked)
        dumped = every_db_value()
        assert not any(line in outputs or line in dumped for line in body), name
    assert "PRIVATE KEY" not in every_db_value()
    # The passphrase-protected file is really encrypted: it does not open without it.
    with pytest.raises((TypeError, ValueError)):
        serialization.load_ssh_private_key(files["locked"].read_bytes(), None)
    serialization.load_ssh_private_key(files["locked"].read_bytes(), PASSPHRASE.encode())
    listed = cli("keys", "list", "--json").json
    assert [k["name"] for k in listed] == ["locked", "plain"]
    assert cli("keys", "create", "plain", expect=2).stderr.count("already exists") == 1
    monkeypatch.setenv("EDGEFLEET_KEY_PASSPHRASE", "wrong")
    folder = model_folder(home.parent, 0)
    refused = cli("bundle", "build", folder, "--name", "m", "--sign", "locked", expect=2)
    assert "wrong passphrase" in refused.stderr
    assert cli("bundle", "list", "--json").json == []  # nothing built before the key opened
    files["plain"].chmod(0o644)
    loose = cli("bundle", "build", folder, "--name", "m", "--sign", "plain", expect=2)
    assert "readable by others" in loose.stderr


def test_pinned_devices_refuse_what_no_pinned_key_signed(
        cli: Cli, sshd_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = sshd_factory(3)
    pinned, free = hosts[:2], hosts[2]
    setup_fleet(cli, tmp_path, hosts)
    monkeypatch.setenv("EDGEFLEET_KEY_PASSPHRASE", PASSPHRASE)
    cli("keys", "create", "release", "--passphrase")
    v1 = cli("bundle", "build", model_folder(tmp_path, 0), "--name", "fc", "--sign", "release",
             "--json").json
    assert v1["signed"]["by"] == "release"
    shown = cli("bundle", "show", "fc@1", "--json").json["signed"]
    assert shown["valid"] and shown["fingerprint"].startswith("SHA256:")
    assert "signed" in cli("bundle", "show", "fc@1").stdout
    assert versions_after(cli, "fc@1", hosts) == ["1", "1", "1"]

    installed = cli("agent", "install", "pis:!pi3", "--trust-key", "release", "--json").json
    assert [o["pinned"] for o in installed] == ["release", "release"]
    assert all((h.root / "trust" / "allowed_signers").is_file() for h in pinned)
    assert not (free.root / "trust" / "allowed_signers").exists()
    facts = {h.name: cli("devices", "show", h.name, "--json").json["facts"] for h in hosts}
    assert [facts[h.name]["pinned_keys"] for h in hosts] == [["release"], ["release"], []]

    # Unsigned: refused by the pinned devices, previous version kept; pi3 takes it.
    v2 = cli("bundle", "build", model_folder(tmp_path, 1), "--name", "fc", "--json").json
    assert v2["signed"] is None
    pushed = by_device(cli("push", "fc@2", "pis", "--json", expect=1).json)
    for host in pinned:
        assert pushed[host.name]["state"] == "failed"
        assert "fc@2 refused: it is not signed" in pushed[host.name]["error"]
        assert "fc@1 stays active" in pushed[host.name]["error"]
        assert pushed[host.name]["bytes_sent"] == 0  # refused at plan: nothing was sent
    assert pushed[free.name]["state"] == "active"
    assert versions(hosts) == ["1", "1", "2"]
    listed = {d["name"]: d["active_bundle"] for d in cli("devices", "list", "--json").json}
    assert listed == {"pi1": "fc@1", "pi2": "fc@1", "pi3": "fc@2"}

    # Signed by a key the devices do not pin.
    cli("keys", "create", "intruder")
    cli("bundle", "sign", "fc@2", "--key", "intruder")
    pushed = by_device(cli("push", "fc@2", "pis:!pi3", "--json", expect=1).json)
    assert all("signed by key 'intruder', which is not pinned" in pushed[h.name]["error"]
               for h in pinned)

    # Signed by the release key, then the manifest edited in the DB (tolerances loosened so a
    # wrong model would pass its smoke test; the digest column recomputed to match).
    signed = cli("bundle", "sign", "fc@2", "--key", "release", "--json").json
    assert signed["signed"]["by"] == "release"
    with session_scope(get_settings()) as session:
        row = session.exec(sql_select(Bundle).where(Bundle.version == "2")).one()
        manifest = json.loads(row.manifest_json)
        manifest["golden"]["atol"] = 1e9
        row.manifest_json = canonical_json(manifest).decode()
        row.digest = manifest_digest(manifest)
        session.add(row)
    check = cli("bundle", "show", "fc@2", "--json").json["signed"]
    assert not check["valid"] and "does not match" in check["problem"]
    pushed = by_device(cli("push", "fc@2", "pis:!pi3", "--json", expect=1).json)
    for host in pinned:
        assert "does not verify against the pinned key 'release'" in pushed[host.name]["error"]

    # A signature replayed onto another bundle: copied in the DB from a signed fc@1.
    other = cli("bundle", "build", model_folder(tmp_path, 2), "--name", "other", "--version",
                "5", "--json").json
    assert other["signed"] is None
    with session_scope(get_settings()) as session:
        source = session.exec(sql_select(Bundle).where(Bundle.name == "fc",
                                                       Bundle.version == "1")).one()
        target = session.exec(sql_select(Bundle).where(Bundle.name == "other")).one()
        for column in ("signature", "signed_by", "signed_fingerprint", "signed_at"):
            setattr(target, column, getattr(source, column))
        session.add(target)
    pushed = by_device(cli("push", "other@5", "pis:!pi3", "--json", expect=1).json)
    assert all("other@5 refused: its signature does not verify" in pushed[h.name]["error"]
               for h in pinned)
    assert versions(pinned) == ["1", "1"]

    # Rotation: both keys pinned while bundles move to the new one; then the old is retired.
    cli("keys", "create", "release-2027")
    rotated = cli("agent", "install", "pis:!pi3", "--trust-key", "release", "--trust-key",
                  "release-2027", "--json").json
    assert {o["pinned"] for o in rotated} == {"release, release-2027"}
    v3 = cli("bundle", "build", model_folder(tmp_path, 3), "--name", "fc", "--sign",
             "release-2027", "--json").json
    assert v3["version"] == "3"
    assert versions_after(cli, "fc@3", pinned) == ["3", "3"]

    # Rollback protection: fc@1, validly signed by a pinned key, is older than fc@3.
    pushed = by_device(cli("push", "fc@1", "pis:!pi3", "--json", expect=1).json)
    for host in pinned:
        assert "older than fc@3, the version committed on this device" in pushed[host.name][
            "error"]
    assert versions(pinned) == ["3", "3"]
    rolled = cli("rollback", "pis:!pi3", "--json").json  # asked for: allowed
    assert [r["state"] for r in rolled] == ["rolled-back"] * 2 and versions(pinned) == ["1", "1"]

    cli("agent", "install", "pis:!pi3", "--trust-key", "release-2027")
    v4 = cli("bundle", "build", model_folder(tmp_path, 4), "--name", "fc", "--sign", "release",
             "--json").json
    pushed = by_device(cli("push", f"fc@{v4['version']}", "pis:!pi3", "--json", expect=1).json)
    assert all("'release', which is not pinned" in pushed[h.name]["error"] for h in pinned)
    cli("bundle", "sign", "fc@4", "--key", "release-2027")
    assert versions_after(cli, "fc@4", pinned) == ["4", "4"]

    # Unpinning is the same command: the devices run unsigned bundles again.
    cli("agent", "install", "pis:!pi3", "--untrust")
    assert not any((h.root / "trust" / "allowed_signers").exists() for h in pinned)
    assert versions_after(cli, "other@5", pinned) == ["5", "5"]  # nothing checks signatures

    with session_scope(get_settings()) as session:
        events = [(e.action, e.target, e.detail) for e in session.exec(sql_select(AuditEvent))]
    assert [t for a, t, _ in events if a == "key.create"] == [
        "key:release", "key:intruder", "key:release-2027"]
    assert ("bundle.sign", "bundle:fc@2") in [(a, t) for a, t, _ in events]
    trust = [d.get("trust") for a, _, d in events if a == "agent.install"]
    assert [None if t is None else [k["name"] for k in t] for t in trust] == [
        None, ["release"], ["release", "release-2027"], ["release-2027"], []]
    assert all(k["fingerprint"].startswith("SHA256:") for t in trust if t for k in t)


def versions_after(cli: Cli, ref: str, hosts: list) -> list[str]:
    names = ":".join(h.name for h in hosts)
    pushed = cli("push", ref, names, "--json").json
    assert {p["state"] for p in pushed} <= {"active", "unchanged"}, pushed
    return versions(hosts)
