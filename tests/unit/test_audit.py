"""The audit log: events are written, listed newest first, carry no secrets, and token
management records itself (from the CLI under the OS user, as the service for a given actor)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from orchestrator import audit, auth
from orchestrator.config import Settings
from orchestrator.db import session_scope
from web.app import create_app

from ..conftest import Cli


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


def events(settings: Settings, limit: int = 200) -> list[dict]:
    with session_scope(settings) as session:
        return [audit.event_public(e) for e in audit.list_events(session, limit)]


def test_record_and_list_newest_first(settings: Settings) -> None:
    for i, action in enumerate(("inventory.sync", "push", "bench")):
        audit.record(settings, "alice", action, f"target-{i}", {"n": i})
    listed = events(settings)
    assert [e["action"] for e in listed] == ["bench", "push", "inventory.sync"]
    assert listed[0] == listed[0] | {"actor": "alice", "target": "target-2", "detail": {"n": 2}}
    assert datetime.fromisoformat(listed[0]["at"]).tzinfo is not None
    assert [e["action"] for e in events(settings, limit=2)] == ["bench", "push"]
    assert set(audit.ACTIONS) >= {"push", "bench", "rollback", "inventory.sync", "job.cancel",
                                  "schedule.create", "schedule.delete", "token.create",
                                  "token.revoke"}


def test_secrets_in_detail_are_redacted(settings: Settings) -> None:
    token = "ef_" + "Q" * 43
    audit.record(settings, "bob", "push", "all",
                 {"password": "hunter2", "env": {"API_KEY": "k", "mode": "fast"},
                  "note": f"used {token} here", "items": [{"secret": "s"}]})
    detail = events(settings)[0]["detail"]
    assert detail["password"] == audit.REDACTED and detail["env"]["API_KEY"] == audit.REDACTED
    assert detail["env"]["mode"] == "fast" and detail["items"] == [{"secret": audit.REDACTED}]
    assert token not in detail["note"] and detail["note"].startswith("used ")


def test_token_create_and_revoke_are_audited(settings: Settings) -> None:
    keep, _ = auth.create_token(settings, "keeper", "admin", actor="root-admin")
    token, secret = auth.create_token(settings, "ci", "operator", actor="root-admin")
    auth.revoke_token(settings, token.id, actor="alice")  # type: ignore[arg-type]
    auth.revoke_token(settings, token.id, actor="alice")  # type: ignore[arg-type]  # no-op
    listed = events(settings)
    assert [(e["action"], e["actor"], e["target"]) for e in listed] == [
        ("token.revoke", "alice", f"token:{token.id}"),
        ("token.create", "root-admin", f"token:{token.id}"),
        ("token.create", "root-admin", f"token:{keep.id}"),
    ]
    assert listed[1]["detail"] == {"name": "ci", "role": "operator", "prefix": token.prefix}
    assert secret not in str(listed) and token.token_hash not in str(listed)


def test_cli_token_actions_are_audited_under_the_os_user(cli: Cli, home: Path) -> None:
    made = cli("tokens", "create", "--role", "viewer", "--name", "wall", "--json").json
    cli("tokens", "revoke", str(made["id"]), "--json")
    listed = events(Settings(home=home))
    assert [e["action"] for e in listed] == ["token.revoke", "token.create"]
    assert {e["actor"] for e in listed} == {audit.local_actor()}


def test_the_audit_api_is_for_admins(settings: Settings) -> None:
    _, admin = auth.create_token(settings, "boss", "admin")
    _, viewer = auth.create_token(settings, "wall", "viewer")
    with TestClient(create_app(settings, run_jobs=False), base_url="http://localhost") as client:
        assert client.get("/api/audit",
                          headers={"Authorization": f"Bearer {viewer}"}).status_code == 403
        r = client.get("/api/audit", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200
    assert [(e["action"], e["detail"]["name"]) for e in r.json()] == [
        ("token.create", "wall"), ("token.create", "boss")]
    assert admin not in r.text and viewer not in r.text
