"""The ``edgefleet`` CLI in-process: inventory sync, devices list/show, --json everywhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.demo.model import make_demo_classifier
from tests.conftest import Cli

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "inventory" / "example.yml"
BAD = Path(__file__).resolve().parents[1] / "data" / "inventories"
NAMES = ["pi4-lab", "pi5-a", "pi5-b"]  # devices list orders by name
PUBLIC_KEYS = {
    "name", "address", "port", "connection", "groups", "labels", "simulated", "agent_version",
    "active_bundle", "active_digest", "last_seen", "pi_model", "arch", "cores", "ram_mb",
    "onnxruntime", "temp_c", "throttled_hex", "throttle_flags", "source",
}
# What example.yml says that must never leave through device output: the key path and the
# environment (names and values).
SECRETS = ("edgefleet_ed25519", ".ssh", "PASSIVE", "OMP_WAIT_POLICY", "ORT_LOG_LEVEL")


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.yml"
    shutil.copyfile(EXAMPLE, path)
    return path


@pytest.fixture
def synced(cli: Cli, inventory: Path) -> Path:
    cli("inventory", "sync", inventory)
    return inventory


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def sync_json(cli: Cli, path: Path, *args: str) -> dict[str, Any]:
    return cli("inventory", "sync", path, *args, "--json").json


def walk(obj: Any) -> list[Any]:
    """Every key and value in a JSON document."""
    if isinstance(obj, dict):
        return [x for k, v in obj.items() for x in (k, *walk(v))]
    if isinstance(obj, list):
        return [x for v in obj for x in walk(v)]
    return [obj]


# -- inventory sync ---------------------------------------------------------------------------


def test_first_sync_adds_and_second_is_idempotent(cli: Cli, inventory: Path) -> None:
    first = sync_json(cli, inventory)
    assert first == {"added": ["pi5-a", "pi5-b", "pi4-lab"], "changed": {}, "removed": [],
                     "unchanged": [], "file": str(inventory), "applied": True}
    second = sync_json(cli, inventory)
    assert (second["added"], second["changed"], second["removed"]) == ([], {}, [])
    assert second["unchanged"] == ["pi5-a", "pi5-b", "pi4-lab"]
    human = cli("inventory", "sync", inventory).stdout
    assert f"{inventory}: 0 added, 0 changed, 0 removed, 3 unchanged" in human


def test_editing_a_var_shows_old_and_new(cli: Cli, synced: Path) -> None:
    edit(synced, "ansible_port: 2222", "ansible_port: 2223")
    edit(synced, "mic: rear", "mic: side")
    report = sync_json(cli, synced)
    assert report["added"] == [] and report["removed"] == []
    assert report["changed"]["pi4-lab"] == {"port": [2222, 2223]}
    old, new = report["changed"]["pi5-b"]["labels"]
    assert (old["mic"], new["mic"]) == ("rear", "side")
    assert {k: v for k, v in old.items() if k != "mic"} == {
        k: v for k, v in new.items() if k != "mic"}
    assert set(report["changed"]) == {"pi4-lab", "pi5-b"}
    assert report["unchanged"] == ["pi5-a"]
    assert cli("devices", "show", "pi4-lab", "--json").json["port"] == 2223

    edit(synced, "ansible_port: 2223", "ansible_port: 2224")
    human = cli("inventory", "sync", synced).stdout
    assert "pi4-lab" in human and "[~] changed" in human and "port: 2223 -> 2224" in human
    assert f"{synced}: 0 added, 1 changed, 0 removed, 2 unchanged" in human


def test_removing_a_host(cli: Cli, synced: Path) -> None:
    doc = yaml.safe_load(synced.read_text())
    del doc["all"]["children"]["roastery"]["children"]["lab"]
    synced.write_text(yaml.safe_dump(doc))
    report = sync_json(cli, synced)
    assert (report["added"], report["changed"], report["removed"]) == ([], {}, ["pi4-lab"])
    assert [d["name"] for d in cli("devices", "list", "--json").json] == ["pi5-a", "pi5-b"]
    gone = cli("devices", "show", "pi4-lab", expect=2)
    assert "no device named 'pi4-lab'" in gone.stderr


def test_dry_run_changes_nothing(cli: Cli, inventory: Path) -> None:
    would = sync_json(cli, inventory, "--dry-run")
    assert would["added"] == ["pi5-a", "pi5-b", "pi4-lab"] and would["applied"] is False
    empty = cli("devices", "list", expect=2)
    assert "no devices yet: run `edgefleet inventory sync FILE` first" in empty.stderr

    sync_json(cli, inventory)
    before = cli("devices", "list", "--json").json
    edit(inventory, "ansible_port: 2222", "ansible_port: 2223")
    doc = yaml.safe_load(inventory.read_text())
    doc["all"]["children"]["roastery"]["children"]["lab"]["hosts"]["pi4-lab2"] = {
        "ansible_host": "192.168.40.21"}
    del doc["all"]["children"]["roastery"]["children"]["roaster_line_1"]["hosts"]["pi5-b"]
    inventory.write_text(yaml.safe_dump(doc))
    for _ in range(2):  # still only a prediction the second time
        report = sync_json(cli, inventory, "--dry-run")
        assert report["applied"] is False
        assert report["added"] == ["pi4-lab2"] and report["removed"] == ["pi5-b"]
        assert report["changed"] == {"pi4-lab": {"port": [2222, 2223]}}
    human = cli("inventory", "sync", inventory, "--dry-run").stdout
    assert "1 added, 1 changed, 1 removed, 1 unchanged would be" in human
    assert cli("devices", "list", "--json").json == before


def test_inventory_from_the_environment(cli: Cli, inventory: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_INVENTORY", str(inventory))
    assert cli("inventory", "sync", "--json").json["added"] == ["pi5-a", "pi5-b", "pi4-lab"]


@pytest.mark.parametrize(
    ("name", "line", "detail"),
    [
        ("bad_port.yml", 6, "ansible_port must be a whole number from 1 to 65535"),
        ("syntax_error.yml", 5, "invalid YAML"),
        ("tab_indent.yml", 4, "invalid YAML"),
    ],
)
def test_broken_inventory_names_file_and_line(cli: Cli, synced: Path, tmp_path: Path,
                                              name: str, line: int, detail: str) -> None:
    # Under a long path: the message must not be wrapped mid-path on a narrow stderr.
    bad = tmp_path / ("a-rather-long-folder-name-" * 3) / name
    bad.parent.mkdir()
    shutil.copyfile(BAD / name, bad)
    before = cli("devices", "list", "--json").json
    result = cli("inventory", "sync", bad, expect=2)
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {bad}:{line}: {detail}")
    assert result.stderr.count("\n") == 1
    as_json = cli("inventory", "sync", bad, "--json", expect=2).json
    assert as_json["error"].startswith(f"{bad}:{line}: {detail}")
    assert cli("devices", "list", "--json").json == before  # nothing changed


def test_missing_inventory_file(cli: Cli, tmp_path: Path) -> None:
    result = cli("inventory", "sync", tmp_path / "nope.yml", expect=2)
    assert f"{tmp_path / 'nope.yml'}: no such inventory file" in result.stderr


# -- devices ----------------------------------------------------------------------------------


def test_devices_list_json_shape_and_no_secrets(cli: Cli, synced: Path) -> None:
    result = cli("devices", "list", "--json")
    devices = result.json
    assert [d["name"] for d in devices] == NAMES
    for device in devices:
        assert set(device) == PUBLIC_KEYS
    by_name = {d["name"]: d for d in devices}
    lab = by_name["pi4-lab"]
    assert (lab["address"], lab["port"], lab["connection"]) == ("192.168.40.20", 2222, "ssh")
    assert lab["groups"] == ["lab", "roastery"]
    assert lab["labels"]["notes"] == "spare; used for accuracy evaluation"
    assert lab["simulated"] is False and lab["agent_version"] is None
    line = synced.read_text().splitlines().index("            pi4-lab:") + 1
    assert lab["source"] == f"{synced}:{line}"
    assert by_name["pi5-b"]["labels"]["cooler"] == "none"
    for secret in SECRETS:
        assert secret not in result.stdout
    assert not {"key_file", "env", "user", "python", "root"} & set(walk(devices))


@pytest.mark.parametrize(
    ("pattern", "names"),
    [
        ("roastery:!pi5-b", ["pi4-lab", "pi5-a"]),
        ("roaster_line_1", ["pi5-a", "pi5-b"]),
        ("roastery:&pi5*:!pi5-b", ["pi5-a"]),
        ("pi4-lab,pi5-b", ["pi4-lab", "pi5-b"]),
        ("!pi4-lab", ["pi5-a", "pi5-b"]),
        ("all", NAMES),
        ("pi5-?", ["pi5-a", "pi5-b"]),
    ],
)
def test_devices_list_pattern(cli: Cli, synced: Path, pattern: str, names: list[str]) -> None:
    assert [d["name"] for d in cli("devices", "list", pattern, "--json").json] == names


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("roastery:nope", "'nope' is neither a host nor a group"),
        ("pi5-a:!nope", "'nope' is neither a host nor a group"),
        ("zz*", "zz*"),
    ],
)
def test_devices_list_unknown_term(cli: Cli, synced: Path, pattern: str, message: str) -> None:
    result = cli("devices", "list", pattern, expect=2)
    assert message in result.stderr and result.stdout == ""
    assert message in cli("devices", "list", pattern, "--json", expect=2).json["error"]


def test_devices_show_json(cli: Cli, synced: Path) -> None:
    result = cli("devices", "show", "pi5-b", "--json")
    device = result.json
    assert set(device) == PUBLIC_KEYS | {"root", "facts", "deployments"}
    assert (device["name"], device["address"], device["port"]) == ("pi5-b", "192.168.40.12", 22)
    assert device["labels"]["mic"] == "rear" and device["labels"]["psu"] == "generic-15w"
    assert device["root"] == "~/.edgefleet"
    assert device["facts"] == {} and device["deployments"] == []
    for secret in SECRETS:
        assert secret not in result.stdout
    human = cli("devices", "show", "pi5-b").stdout
    assert "192.168.40.12" in human and "psu=generic-15w" in human
    missing = cli("devices", "show", "pi9", "--json", expect=2).json
    assert missing == {"error": "no device named 'pi9'; see `edgefleet devices list`"}


MARKUP_INVENTORY = """\
all:
  hosts:
    box:
      ansible_host: 10.0.0.9
      note: "[red]x[/red]"
      closing: "[/bold]"
"""


def test_markup_in_labels_is_shown_literally(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "markup.yml"
    path.write_text(MARKUP_INVENTORY)
    cli("inventory", "sync", path)
    listed = cli("devices", "list").stdout
    assert "note=[red]x[/red]" in listed and "closing=[/bold]" in listed
    shown = cli("devices", "show", "box").stdout
    assert "note=[red]x[/red]" in shown
    assert cli("devices", "show", "box", "--json").json["labels"] == {
        "note": "[red]x[/red]", "closing": "[/bold]"}

    path.write_text(MARKUP_INVENTORY.replace("[red]x[/red]", "[blink]y[/blink]"))
    synced = cli("inventory", "sync", path).stdout
    assert "'[red]x[/red]'" in synced and "'[blink]y[/blink]'" in synced


def test_markup_in_an_error_is_shown_literally(cli: Cli, synced: Path) -> None:
    result = cli("devices", "show", "[bold]pi[/bold]", expect=2)
    assert result.stderr == ("error: no device named '[bold]pi[/bold]'; "
                             "see `edgefleet devices list`\n")
    unbalanced = cli("devices", "show", "[/red]", expect=2)
    assert "no device named '[/red]'" in unbalanced.stderr


# -- --json everywhere ------------------------------------------------------------------------


@pytest.fixture
def fleet(cli: Cli, synced: Path, tmp_path: Path) -> dict[str, Path]:
    built = make_demo_classifier(tmp_path / "built.onnx")
    cli("bundle", "build", built, "--name", "fc")
    bad_model = tmp_path / "bad.onnx"
    bad_model.write_text("not a model")
    return {
        "inventory": synced,
        "model": make_demo_classifier(tmp_path / "new.onnx", seed=3),
        "bad_model": bad_model,
        "bad_inventory": BAD / "bad_port.yml",
        "missing": tmp_path / "missing.yml",
    }


OK_COMMANDS: dict[str, list[str]] = {
    "inventory-sync": ["inventory", "sync", "{inventory}"],
    "inventory-sync-dry-run": ["inventory", "sync", "{inventory}", "--dry-run"],
    "devices-list": ["devices", "list"],
    "devices-list-pattern": ["devices", "list", "roastery:!pi5-b"],
    "devices-show": ["devices", "show", "pi5-a"],
    "bundle-build": ["bundle", "build", "{model}", "--name", "fc"],
    "bundle-build-unchanged": ["bundle", "build", "{model}", "--name", "other"],
    "bundle-list": ["bundle", "list"],
    "bundle-show": ["bundle", "show", "fc"],
    "bundle-show-version": ["bundle", "show", "fc@1"],
}
ERROR_COMMANDS: dict[str, list[str]] = {
    "inventory-missing": ["inventory", "sync", "{missing}"],
    "inventory-broken": ["inventory", "sync", "{bad_inventory}"],
    "devices-unknown-term": ["devices", "list", "nope"],
    "devices-show-unknown": ["devices", "show", "nope"],
    "bundle-build-bad-model": ["bundle", "build", "{bad_model}", "--name", "fc"],
    "bundle-build-bad-name": ["bundle", "build", "{model}", "--name", "a;b"],
    "bundle-show-unknown-version": ["bundle", "show", "fc@9"],
    "bundle-show-unknown": ["bundle", "show", "nope"],
}


def _argv(template: list[str], paths: dict[str, Path]) -> list[str]:
    return [arg.format(**{k: str(v) for k, v in paths.items()}) for arg in template]


@pytest.mark.parametrize("template", OK_COMMANDS.values(), ids=OK_COMMANDS.keys())
def test_json_everywhere(cli: Cli, fleet: dict[str, Path], template: list[str]) -> None:
    result = cli(*_argv(template, fleet), "--json")
    parsed = json.loads(result.stdout)  # the whole of stdout, nothing else
    assert isinstance(parsed, dict | list) and parsed
    assert result.stdout.endswith("}\n") or result.stdout.endswith("]\n")


@pytest.mark.parametrize("template", ERROR_COMMANDS.values(), ids=ERROR_COMMANDS.keys())
def test_json_errors(cli: Cli, fleet: dict[str, Path], template: list[str]) -> None:
    argv = _argv(template, fleet)
    result = cli(*argv, "--json", expect=2)
    parsed = json.loads(result.stdout)
    assert list(parsed) == ["error"] and isinstance(parsed["error"], str) and parsed["error"]
    human = cli(*argv, expect=2)
    assert human.stdout == ""
    assert human.stderr == f"error: {parsed['error']}\n"


def test_sync_diff_never_prints_env_values(cli, tmp_path) -> None:
    """edgefleet_env may hold tokens: a changed env shows variable names, not values."""
    inventory = tmp_path / "inv.yml"
    inventory.write_text("all:\n  hosts:\n    pi:\n      edgefleet_env: {TOKEN: old-secret}\n")
    cli("inventory", "sync", inventory)
    inventory.write_text("all:\n  hosts:\n    pi:\n      edgefleet_env: {TOKEN: new-secret}\n")
    human = cli("inventory", "sync", inventory, "--dry-run")
    as_json = cli("inventory", "sync", inventory, "--json")
    for out in (human.stdout, as_json.stdout):
        assert "TOKEN" in out and "secret" not in out
    assert as_json.json["changed"]["pi"]["env"] == [{"TOKEN": "<redacted>"}] * 2


def test_sync_diff_never_prints_key_paths(cli, tmp_path) -> None:
    """The README promises key paths are not printed: a changed key file shows that there is
    one, not where (before, both paths were in the diff, the API's answer and the audit)."""
    inventory = tmp_path / "inv.yml"
    inventory.write_text("all:\n  hosts:\n    pi: {}\n")
    cli("inventory", "sync", inventory)
    inventory.write_text("all:\n  hosts:\n    pi:\n"
                         "      ansible_ssh_private_key_file: keys/lab-secret-key\n")
    human = cli("inventory", "sync", inventory, "--dry-run")
    as_json = cli("inventory", "sync", inventory, "--json")
    for out in (human.stdout, as_json.stdout):
        assert "key_file" in out and "lab-secret-key" not in out
    assert as_json.json["changed"]["pi"]["key_file"] == [None, "<a key file>"]


def test_every_command_has_working_help(cli: Cli) -> None:
    """Help text is rendered with rich markup: a stray ``[...]`` in a help string crashes
    ``--help`` of that command only, so walk every command and group."""
    import typer.main

    from orchestrator.cli.main import get_app

    root = typer.main.get_command(get_app())

    def walk(group: Any, path: list[str]) -> list[list[str]]:
        found = [path]
        for name, command in getattr(group, "commands", {}).items():
            found += walk(command, [*path, name])
        return found

    paths = walk(root, [])
    assert len(paths) > 25
    for path in paths:
        result = cli(*path, "--help")
        assert "Usage" in result.stdout, path


def test_streaming_profile_is_stored_with_the_bundle(cli: Cli, tmp_path: Path) -> None:
    model = make_demo_classifier(tmp_path / "m.onnx")
    profile = tmp_path / "profile.yml"
    profile.write_text("window_s: 10\noverlap: 0.3\nthreshold: 0.9\nmin_positive: 3\n"
                       "confirm_windows: 3\n")
    built = cli("bundle", "build", model, "--name", "fc", "--streaming-profile", profile,
                "--json").json
    assert built["streaming"]["hop_s"] == 7.0 and built["streaming"]["threshold"] == 0.9
    # The profile is part of the identity: same files, another profile -> a new version.
    profile.write_text("window_s: 10\nhop_s: 3\n")
    again = cli("bundle", "build", model, "--name", "fc", "--streaming-profile", profile,
                "--json").json
    assert again["created"] and again["version"] == "2" and again["streaming"]["hop_s"] == 3.0
    profile.write_text("window_s: 10\nhop_s: 30\n")
    bad = cli("bundle", "build", model, "--name", "fc", "--streaming-profile", profile,
              expect=2)
    assert "hop" in bad.stderr and str(profile) in bad.stderr


@pytest.mark.parametrize("args", [
    ("runs", "show", "{}"), ("runs", "show", "{}", "--json"), ("runs", "compare", "1", "{}"),
    ("runs", "verdict", "{}"), ("tokens", "revoke", "{}"), ("jobs", "show", "{}"),
    ("jobs", "cancel", "{}", "--json")])
@pytest.mark.parametrize("value", ["99999999999999999999", "9223372036854775808", "0"])
def test_an_id_no_row_can_have_is_a_usage_error_not_a_traceback(
        cli: Cli, args: tuple[str, ...], value: str) -> None:
    """Ids are 1..2^63-1 (SQLite INTEGER keys): a larger one used to reach the DB driver and
    print an OverflowError traceback. It is now refused before the command runs, exit 2."""
    result = cli(*(a.replace("{}", value) for a in args), expect=2)
    what = {"tokens": "token", "jobs": "job"}.get(args[0], "run")
    text = " ".join(result.stderr.replace("│", " ").split())  # rich boxes and wraps the error
    assert (f"{what} id {value} is out of range: {what} ids are 1 to 9223372036854775807"
            in text), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "OverflowError" not in result.stderr + result.stdout


def test_an_id_that_is_not_a_number_says_so(cli: Cli) -> None:
    result = cli("runs", "show", "seven", expect=2)
    assert "'seven' is not a run id (a whole number)" in result.stderr
    # in range but absent: the command runs and says which run is missing
    assert "no run 7" in cli("runs", "show", "7", expect=2).stderr


def test_a_port_no_socket_can_bind_is_a_usage_error(cli: Cli) -> None:
    """uvicorn's bind() raised OverflowError ("port must be 0-65535") as a traceback."""
    result = cli("serve", "--port", "99999999999999999999", expect=2)
    assert "'--port'" in result.stderr and "Traceback" not in result.stderr + result.stdout


def test_jobs_are_listed_shown_and_cancelled_from_the_cli(cli: Cli, synced: Path,
                                                           home: Path) -> None:
    """A job queued elsewhere (the web, a schedule) is followed and stopped from a terminal:
    the same service as /api/jobs, the cancel audited as the OS user."""
    from orchestrator.core.config import Settings
    from orchestrator.jobs import queue

    job = queue.submit(Settings(home=home), "telemetry", {}, "all", actor="alice")
    (listed,) = cli("jobs", "list", "--state", "queued", "--json").json
    assert (listed["id"], listed["state"], listed["created_by"]) == (job.id, "queued", "alice")
    assert cli("jobs", "list", "--state", "running", "--json").json == []
    table = cli("jobs", "list").stdout
    assert "telemetry" in table and "queued" in table and "alice (server)" in table

    cancelled = cli("jobs", "cancel", str(job.id), "--json").json
    assert cancelled["state"] == "cancelled" and cancelled["cancel_requested"]
    shown = cli("jobs", "show", str(job.id)).stdout
    assert f"job {job.id} telemetry all: cancelled" in shown
    again = cli("jobs", "cancel", str(job.id), "--json", expect=2).json
    assert again == {"error": f"job {job.id} already finished (cancelled); nothing to cancel"}
    assert "no job 99" in cli("jobs", "show", "99", expect=2).stderr
    bad = cli("jobs", "list", "--kind", "nap", expect=2).stderr
    assert "job kind 'nap': choose one of push, bench" in bad
    from sqlmodel import select

    from orchestrator.access.audit import local_actor
    from orchestrator.core.db import session_scope
    from orchestrator.core.models import AuditEvent

    with session_scope(Settings(home=home)) as session:
        events = session.exec(select(AuditEvent).where(AuditEvent.action == "job.cancel")).all()
        assert [(e.actor, e.target) for e in events] == [(local_actor(), f"job:{job.id}")]


def test_schedules_from_the_cli(cli: Cli, fleet: dict[str, Path], home: Path) -> None:
    """A nightly benchmark scheduled from a terminal: checked now (a typo fails here, not at
    3 a.m.), listed, paused, resumed, run now (a queued job linked to it), deleted; each step
    through jobs.schedules, audited as the OS user."""
    from sqlmodel import select

    from orchestrator.access.audit import local_actor
    from orchestrator.core.config import Settings
    from orchestrator.core.db import session_scope
    from orchestrator.core.models import AuditEvent

    added = cli("schedules", "add", "bench", "roastery", "--cron", "0  3 * * *",
                "--bundle", "fc", "--threads", "1,2", "--param", "runs=7", "--json").json
    assert (added["kind"], added["targets"], added["cron"], added["state"]) == (
        "bench", "roastery", "0 3 * * *", "active")
    assert added["params"]["threads"] == [1, 2] and added["params"]["runs"] == 7
    sid = str(added["id"])
    assert "0 3 * * *" in cli("schedules", "list").stdout
    assert cli("schedules", "pause", sid, "--json").json["state"] == "paused"
    assert cli("schedules", "resume", sid, "--json").json["state"] == "active"
    job = cli("schedules", "run", sid, "--json").json
    assert (job["kind"], job["state"], job["schedule_id"]) == ("bench", "queued", added["id"])
    assert cli("schedules", "list", "--json").json[0]["last_job_id"] == job["id"]
    assert cli("schedules", "delete", sid, "--json").json == {"id": added["id"],
                                                              "deleted": True}
    assert cli("schedules", "list", "--json").json == []

    for args, message in [
            (["bench", "all", "--cron", "0 3 * *", "--bundle", "fc"], "has 4 field(s)"),
            (["bench", "all", "--at", "tomorrow", "--bundle", "fc"], "time 'tomorrow'"),
            (["bench", "all", "--bundle", "nope", "--cron", "0 3 * * *"], "nope"),
            (["bench", "all", "--bundle", "fc"], "exactly one of cron"),
            (["bench", "all", "--cron", "0 3 * * *", "--param", "runs"], "give KEY=VALUE")]:
        refused = cli("schedules", "add", *args, "--json", expect=2).json
        assert message in refused["error"], (args, refused)
    assert cli("schedules", "list", "--json").json == []  # nothing half-made
    assert "no schedule 9" in cli("schedules", "pause", "9", expect=2).stderr
    with session_scope(Settings(home=home)) as session:
        actions = [e.action for e in session.exec(select(AuditEvent).where(
            AuditEvent.actor == local_actor(), AuditEvent.target == f"schedule:{sid}"))]
    assert actions == ["schedule.create", "schedule.pause", "schedule.resume",
                       "schedule.delete"]


@pytest.mark.parametrize(("option", "message"), [
    (["--shape", "nosuch=1x2"], "--shape names 'nosuch', which is not an input of the model"),
    (["--input", "nosuch=3"], "--input names 'nosuch', which is not an input of the model"),
    (["--shape", "input=1x2x3"], "--shape input=1x2x3 has 3 dimensions but input 'input'"),
])
def test_a_bench_input_the_model_lacks_is_refused_before_any_device(
        cli: Cli, fleet: dict[str, Path], option: list[str], message: str) -> None:
    """Checked against the bundle by the device's own code when the job is submitted: it used
    to reach every device, fail there, and leave a failed run, a failed job and an alert."""
    model_input = cli("bundle", "show", "fc", "--json").json["model"]["inputs"][0]["name"]
    option = [o.replace("input=", f"{model_input}=") for o in option]
    message = message.replace("input=", f"{model_input}=").replace("'input'", f"'{model_input}'")
    refused = cli("bench", "fc", "all", *option, "--json", expect=2).json
    assert message in refused["error"] and "(bundle fc@1)" in refused["error"], refused
    assert cli("jobs", "list", "--json").json == []
    assert cli("runs", "list", "--json").json == []
