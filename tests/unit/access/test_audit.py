"""The audit log: one vocabulary (``orchestrator/access/audit.py``), recorded by the services in the
change's own transaction, so the same operation reads the same from the API, the pages and the
CLI; events carry no secrets; CLI work (push, bench, eval, rollback, inventory sync) is in it.

The fleet tests share one module fleet (two local simulated Pis, real agent): the doors are
compared on the same DB, the web app in tokenless local mode (its actor is the OS user, as
the CLI's is)."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlmodel import select

from orchestrator.access import audit, auth
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import AuditEvent, Device, Job, Schedule
from orchestrator.inventory import sync
from orchestrator.jobs import queue, schedules, tracker
from tests.conftest import Cli
from tests.unit.jobs.test_eval_jobs import labelled_fleet
from web.app import create_app


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


def events(settings: Settings, limit: int = 200) -> list[dict]:
    with session_scope(settings) as session:
        return [audit.event_public(e) for e in audit.list_events(session, limit)]


def test_events_are_listed_newest_first_and_only_known_actions_are_stored(
        settings: Settings) -> None:
    for i, action in enumerate(("inventory.sync", "push", "bench")):
        with session_scope(settings) as session:
            audit.add_event(session, "alice", action, f"target-{i}", {"n": i})
    listed = events(settings)
    assert [e["action"] for e in listed] == ["bench", "push", "inventory.sync"]
    assert listed[0] == listed[0] | {"actor": "alice", "target": "target-2", "detail": {"n": 2}}
    assert datetime.fromisoformat(listed[0]["at"]).tzinfo is not None
    assert [e["action"] for e in events(settings, limit=2)] == ["bench", "push"]
    assert audit.ACTIONS == ("push", "bench", "eval", "rollback", "inventory.sync",
                             "job.cancel", "schedule.create", "schedule.delete",
                             "schedule.update", "schedule.pause", "schedule.resume",
                             "token.create", "token.revoke", "devices.trust",
                             "agent.install", "bundle.build", "dataset.build",
                             "key.create", "bundle.sign", "rollout.halt")
    with session_scope(settings) as session, pytest.raises(ValueError, match="telemetry"):
        audit.add_event(session, "alice", "telemetry", "job:1")
    assert len(events(settings)) == 3


def test_secrets_in_detail_are_redacted(settings: Settings) -> None:
    token = "ef_" + "Q" * 43
    with session_scope(settings) as session:
        audit.add_event(session, "bob", "push", "job:1",
                        {"password": "hunter2", "env": {"API_KEY": "k", "mode": "fast"},
                         "note": f"used {token} here", "items": [{"secret": "s"}],
                         "labels": {"ansible_paramiko_pass": "p", "grafana_token": "t",
                                    "bypass": "kept"}})
    detail = events(settings)[0]["detail"]
    assert detail["labels"] == {"ansible_paramiko_pass": audit.REDACTED,
                                "grafana_token": audit.REDACTED, "bypass": "kept"}
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


def test_bundle_and_dataset_builds_are_audited_once_per_new_version(cli: Cli, home: Path,
                                                                   tmp_path: Path) -> None:
    import numpy as np

    from orchestrator.demo.model import make_demo_classifier

    make_demo_classifier(tmp_path / "model" / "model.onnx")
    (tmp_path / "model" / "config.json").write_text('{"id2label": {"0": "no", "1": "yes"}}')
    built = cli("bundle", "build", tmp_path / "model", "--name", "fc", "--json").json
    cli("bundle", "build", tmp_path / "model", "--name", "fc", "--json")  # unchanged: no event
    np.savez(tmp_path / "eval.npz", log_mel=np.zeros((2, 1, 98, 40), np.float32),
             labels=np.array(["no", "yes"]))
    data = cli("dataset", "build", tmp_path / "eval.npz", "--name", "ev", "--for", "fc",
               "--json").json
    made = [e for e in events(Settings(home=home)) if e["action"].endswith(".build")]
    assert [(e["action"], e["target"], e["actor"]) for e in made] == [
        ("dataset.build", "dataset:ev@1", audit.local_actor()),
        ("bundle.build", "bundle:fc@1", audit.local_actor())]
    assert made[1]["detail"]["digest"] == built["digest"]
    assert made[1]["detail"]["source"]["type"] == "folder"
    assert made[0]["detail"]["digest"] == data["digest"]
    assert made[0]["detail"]["for"]["name"] == "fc" and made[0]["detail"]["samples"] == 2


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


# --- one operation, three doors ----------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """pi-a and pi-b (local, real agent) with crack@1 pushed and active, fc@1 built, set@1."""
    return labelled_fleet(tmp_path_factory.mktemp("audit-fleet"))


@pytest.fixture
def doors(fleet: Settings, monkeypatch: pytest.MonkeyPatch) -> tuple[TestClient, Cli]:
    """The web app (no tokens: the local user, as the CLI) and the CLI, on the fleet's DB."""
    monkeypatch.setenv("EDGEFLEET_HOME", str(fleet.home))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    client = TestClient(create_app(fleet, run_jobs=False), base_url="http://localhost")
    return client, Cli(fleet.home)


def last_id(settings: Settings) -> int:
    with session_scope(settings) as session:
        return max(session.exec(select(AuditEvent.id)).all(), default=0) or 0


def since(settings: Settings, after: int) -> list[dict[str, Any]]:
    """The events recorded after id ``after``, oldest first."""
    return [e for e in reversed(events(settings, 1000)) if e["id"] > after]


def job_id(event: dict[str, Any]) -> int:
    match = re.fullmatch(r"job:(\d+)", event["target"])
    assert match, event
    return int(match.group(1))


def test_a_job_is_the_same_event_from_the_api_the_pages_and_the_cli(
        fleet: Settings, doors: tuple[TestClient, Cli]) -> None:
    client, cli = doors
    start = last_id(fleet)
    # push: API and bundle page queue it, the CLI runs it (and makes its own job row).
    assert client.post("/api/jobs", json={"kind": "push", "targets": "all",
                                          "params": {"bundle": "fc@1"}}).status_code == 201
    page = client.post("/bundles/fc@1/push", data={"targets": "all", "forks": "10"},
                       follow_redirects=False)
    assert page.status_code == 303, page.text[:500]
    cli("push", "fc@1", "all", "--json")
    # bench: the API and the CLI, same params.
    bench = {"bundle": "fc@1", "threads": [1], "warmup": 0, "runs": 2}
    assert client.post("/api/jobs", json={"kind": "bench", "targets": "pi-a",
                                          "params": bench}).status_code == 201
    cli("bench", "fc@1", "pi-a", "--threads", "1", "--warmup", "0", "--runs", "2", "--json")
    # eval: the API and the CLI.
    assert client.post("/api/jobs", json={"kind": "eval", "targets": "all", "params": {
        "bundle": "crack@1", "dataset": "set@1", "threads": [1]}}).status_code == 201
    cli("eval", "crack@1", "set@1", "all", "--threads", "1", "--json")

    made = since(fleet, start)
    assert [(e["action"], e["detail"]["origin"]) for e in made] == [
        ("push", "server"), ("push", "server"), ("push", "cli"),
        ("bench", "server"), ("bench", "cli"), ("eval", "server"), ("eval", "cli")]
    assert {e["actor"] for e in made} == {audit.local_actor()}
    with session_scope(fleet) as session:
        for event in made:  # each names its job, whose row says the same
            job = queue.get_job(session, job_id(event))
            assert (job.kind, job.origin) == (event["action"], event["detail"]["origin"])
            assert event["detail"] == {"targets": job.targets, "params": job.params,
                                       "origin": job.origin}
    for kind in ("push", "bench", "eval"):  # the CLI's params are the server's, key for key
        server, *_, local = [e["detail"]["params"] for e in made if e["action"] == kind]
        assert server == local, kind

    # job.cancel: the API and the job page record the same shape.
    api_push, page_push = (job_id(e) for e in made[:2])
    after = last_id(fleet)
    assert client.post(f"/api/jobs/{api_push}/cancel").status_code == 200
    assert client.post(f"/jobs/{page_push}/cancel", follow_redirects=False).status_code == 303
    refused = client.post(f"/api/jobs/{api_push}/cancel")  # finished: no second event
    assert refused.status_code >= 400
    cancels = since(fleet, after)
    assert [(e["action"], e["target"], e["detail"]) for e in cancels] == [
        ("job.cancel", f"job:{n}", {"kind": "push", "targets": "all", "state": "queued"})
        for n in (api_push, page_push)]
    with session_scope(fleet) as session:  # leave nothing queued
        for job in queue.list_jobs(session, state="queued"):
            job.state = "cancelled"
            session.add(job)


def test_schedules_are_the_same_event_from_the_api_and_the_pages(
        fleet: Settings, doors: tuple[TestClient, Cli]) -> None:
    client, _ = doors
    start = last_id(fleet)
    body = {"kind": "bench", "targets": "pi-a", "cron": "0 3 * * *", "params": {
        "bundle": "fc@1", "threads": [1, 2], "warmup": 5, "runs": 30, "min_seconds": 0.5}}
    api = client.post("/api/schedules", json=body).json()
    form = {"bundle": "fc@1", "baseline": "", "targets": "pi-a", "threads": "1, 2",
            "warmup": "5", "runs": "30", "min_seconds": "0.5", "shapes": "", "inputs": "",
            "when": "cron", "cron": "0 3 * * *", "at": ""}
    page = client.post("/benchmarks", data=form, follow_redirects=False)
    assert page.status_code == 303, page.text[:2000]
    with session_scope(fleet) as session:
        page_id = max(session.exec(select(Schedule.id)).all())
    assert client.delete(f"/api/schedules/{api['id']}").status_code == 204
    assert client.post(f"/benchmarks/schedules/{page_id}/delete",
                       follow_redirects=False).status_code == 303
    made = since(fleet, start)
    assert [(e["action"], e["target"]) for e in made] == [
        ("schedule.create", f"schedule:{api['id']}"), ("schedule.create", f"schedule:{page_id}"),
        ("schedule.delete", f"schedule:{api['id']}"), ("schedule.delete", f"schedule:{page_id}")]
    api_made, page_made, api_gone, page_gone = (e["detail"] for e in made)
    assert api_made == page_made and api_gone == page_gone
    assert api_made == api_gone | {"params": api["params"]}
    assert api_gone == {"kind": "bench", "targets": "pi-a", "cron": "0 3 * * *", "run_at": None}


def test_cli_rollback_and_inventory_syncs_are_audited_like_the_webs(
        fleet: Settings, doors: tuple[TestClient, Cli], monkeypatch: pytest.MonkeyPatch) -> None:
    client, cli = doors
    inventory = fleet.home.parent / "inventory.yml"  # make_fleet's, synced from there
    start = last_id(fleet)
    cli("rollback", "all", "--json", expect=None)  # whatever each device has to go back to
    # The same file named three ways: from the CLI's working directory, relative to the
    # server's inventory directory (EDGEFLEET_HOME), and absolute for the page.
    monkeypatch.chdir(inventory.parent)
    cli("inventory", "sync", "inventory.yml", "--json")
    cli("inventory", "sync", "inventory.yml", "--dry-run", "--json")  # not audited
    assert client.post("/api/inventory/sync", json={"path": "../inventory.yml"}).status_code \
        == 200
    digest = hashlib.sha256(inventory.read_bytes()).hexdigest()  # what the preview carries
    applied = client.post("/fleet/inventory/apply", follow_redirects=False,
                          data={"path": str(inventory), "digest": digest})
    assert applied.status_code == 303
    made = since(fleet, start)
    assert [e["action"] for e in made] == ["rollback"] + ["inventory.sync"] * 3
    rollback, *syncs = made
    assert rollback["target"].startswith("job:")  # a job like push's, from every door
    assert rollback["detail"]["targets"] == "all" and rollback["detail"]["origin"] == "cli"
    assert {(e["target"], e["actor"]) for e in syncs} == {
        (str(inventory.resolve()), audit.local_actor())}
    assert [e["detail"] for e in syncs] == [{"added": [], "changed": {}, "removed": [],
                                             "unchanged": ["pi-a", "pi-b"]}] * 3
    monkeypatch.delenv(sync.ENV_VAR, raising=False)
    assert f'value="{inventory.resolve()}"' in client.get("/fleet/inventory").text  # the last


def test_a_change_and_its_event_are_one_transaction(
        fleet: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recording the event fails: the change it describes is rolled back with it."""
    def broken(value: Any) -> Any:
        raise RuntimeError("the audit table is unwritable")

    def counts() -> tuple[int, ...]:
        with session_scope(fleet) as session:
            return tuple(len(session.exec(select(model)).all())
                         for model in (AuditEvent, Job, Schedule, Device))

    before = counts()
    monkeypatch.setattr(audit, "_scrub", broken)
    extra = fleet.home.parent / "more.yml"
    hosts = yaml.safe_load((fleet.home.parent / "inventory.yml").read_text())
    hosts["all"]["hosts"]["pi-new"] = {"ansible_connection": "local"}
    extra.write_text(yaml.safe_dump(hosts))
    attempts = [
        lambda: queue.submit(fleet, "push", {"bundle": "fc@1"}, "all", actor="ada"),
        lambda: schedules.create(fleet, "push", {"bundle": "fc@1"}, "all", actor="ada",
                                 cron="0 3 * * *"),
        lambda: tracker.track(fleet, "push", {"bundle": "fc@1"}, "all").__enter__(),
        lambda: sync.sync_file(fleet, extra, actor="ada"),
    ]
    for attempt in attempts:
        with pytest.raises(RuntimeError, match="unwritable"):
            attempt()
    assert counts() == before
