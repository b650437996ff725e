"""`keys create/list`, `bundle build --sign` (with its INT8 variant), `bundle sign`, `bundle show`
and `bundle list` on a real SQLite DB through migrations: who signed is shown everywhere, the
private key nowhere, and a signature that no longer fits its bundle is called invalid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import select

from orchestrator.core.config import get_settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Bundle
from orchestrator.demo.model import make_demo_classifier
from tests.conftest import Cli


def private_lines(home: Path, name: str) -> list[str]:
    path = home / "keys" / "signing" / name
    return [line for line in path.read_text().splitlines() if not line.startswith("-----")]


def test_build_sign_show_list(cli: Cli, home: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_demo_classifier(tmp_path / "model.onnx", seed=0)
    cli("keys", "create", "rel")
    built = cli("bundle", "build", model, "--name", "m", "--quantize", "int8", "--sign", "rel",
                "--json").json
    assert built["bundle"]["signed"]["by"] == "rel"
    assert [v["signed"]["by"] for v in built["variants"]] == ["rel"]
    for ref in ("m@1", "m@1-int8"):
        shown = cli("bundle", "show", ref, "--json").json["signed"]
        assert shown["valid"] and shown["problem"] is None
    listed = {f"{b['name']}@{b['version']}": b["signed"] for b in
              cli("bundle", "list", "--json").json}  # the stdlib read path (listings)
    assert listed["m@1"] == {k: v for k, v in built["bundle"]["signed"].items()}
    everything = cli("bundle", "list", "--json").stdout + json.dumps(built)
    assert not any(line in everything for line in private_lines(home, "rel"))

    # Re-signing with another key (a rotation) replaces the signature; the table says so.
    monkeypatch.setenv("EDGEFLEET_KEY_PASSPHRASE", "pw")
    cli("keys", "create", "rel2", "--passphrase")
    resigned = cli("bundle", "sign", "m@1", "--key", "rel2", "--json").json
    assert resigned["signed"]["by"] == "rel2"
    assert "by rel2" in cli("bundle", "show", "m@1").stdout

    # The manifest edited in the DB after signing: the check here says so too.
    with session_scope(get_settings()) as session:
        row = session.exec(select(Bundle).where(Bundle.version == "1")).one()
        manifest = json.loads(row.manifest_json)
        manifest["golden"]["rtol"] = 1.0
        row.manifest_json = json.dumps(manifest)
        session.add(row)
    shown = cli("bundle", "show", "m@1", "--json").json["signed"]
    assert not shown["valid"]
    assert "signature INVALID" in cli("bundle", "show", "m@1").stdout
    # ... and it is not signed again over the edit: its digest no longer matches.
    refused = cli("bundle", "sign", "m@1", "--key", "rel", expect=2)
    assert "does not match its digest" in refused.stderr


def test_key_names_and_missing_keys(cli: Cli) -> None:
    assert "not allowed" in cli("keys", "create", "--", "-x", expect=2).stderr
    assert "not allowed" in cli("keys", "create", "a b", expect=2).stderr
    assert cli("keys", "list", "--json").json == []
    missing = cli("bundle", "sign", "m@1", "--key", "nope", "--json", expect=2).json
    assert "no signing key named nope" in missing["error"]
    pinned = cli("agent", "install", "all", "--trust-key", "nope", expect=2)
    assert "no signing key named nope" in pinned.stderr
