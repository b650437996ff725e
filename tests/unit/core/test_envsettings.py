"""core.envsettings reads what config.Settings reads for the fields a push needs, or gives up
(None) where Settings would refuse the value."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator.core.config import Settings
from orchestrator.core.envsettings import from_env

FIELDS = ("home", "timeout_s", "max_line_mb", "max_output_mb", "ssh_connector", "blob_dir",
          "known_hosts", "ssh_key_file", "ssh_persist_s", "ssh_login_timeout_s")
NAMES = ("EDGEFLEET_HOME", "EDGEFLEET_TIMEOUT_S", "EDGEFLEET_MAX_LINE_MB",
         "EDGEFLEET_MAX_OUTPUT_MB", "EDGEFLEET_SSH_CONNECTOR", "EDGEFLEET_SSH_KEY_FILE",
         "EDGEFLEET_SSH_PERSIST_S", "EDGEFLEET_SSH_LOGIN_TIMEOUT_S")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.mark.parametrize("env", [
    {},
    {"EDGEFLEET_HOME": "/tmp/ef home", "EDGEFLEET_TIMEOUT_S": "12.5"},
    {"edgefleet_timeout_s": "3", "EDGEFLEET_SSH_CONNECTOR": "paramiko"},
    {"EDGEFLEET_MAX_LINE_MB": "0.5", "EDGEFLEET_MAX_OUTPUT_MB": "1024"},
    {"EDGEFLEET_SSH_CONNECTOR": "openssh"},
    {"EDGEFLEET_SSH_KEY_FILE": "/srv/worker/id_ed25519"},
    {"edgefleet_ssh_key_file": "~/keys/id ed25519"},
    {"EDGEFLEET_SSH_KEY_FILE": ""},
    {"EDGEFLEET_SSH_PERSIST_S": "0"},
    {"edgefleet_ssh_persist_s": " 300 "},
    {"EDGEFLEET_SSH_PERSIST_S": "60.0"},
    {"EDGEFLEET_SSH_LOGIN_TIMEOUT_S": "120"},
    {"edgefleet_ssh_login_timeout_s": " 2.5 "},
])
def test_reads_what_settings_reads(env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                   tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # the default home, when none is set
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    quick, full = from_env(), Settings()
    assert quick is not None
    assert {f: getattr(quick, f) for f in FIELDS} == {f: getattr(full, f) for f in FIELDS}


@pytest.mark.parametrize("env", [
    {"EDGEFLEET_TIMEOUT_S": "soon"},
    {"EDGEFLEET_MAX_LINE_MB": "0"},
    {"EDGEFLEET_MAX_LINE_MB": ""},
    {"EDGEFLEET_TIMEOUT_S": ""},
    {"EDGEFLEET_MAX_OUTPUT_MB": "-1"},
    {"EDGEFLEET_SSH_CONNECTOR": "putty"},
    {"EDGEFLEET_SSH_PERSIST_S": "-1"},
    {"EDGEFLEET_SSH_PERSIST_S": "1.5"},
    {"EDGEFLEET_SSH_PERSIST_S": "forever"},
    {"EDGEFLEET_SSH_PERSIST_S": ""},
    {"EDGEFLEET_SSH_PERSIST_S": "1e2"},
    {"EDGEFLEET_SSH_PERSIST_S": "86401"},
    {"EDGEFLEET_SSH_LOGIN_TIMEOUT_S": "0"},
    {"EDGEFLEET_SSH_LOGIN_TIMEOUT_S": "-5"},
    {"EDGEFLEET_SSH_LOGIN_TIMEOUT_S": "soon"},
])
def test_gives_up_where_settings_refuses(env: dict[str, str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert from_env() is None
    with pytest.raises(ValidationError):
        Settings()
