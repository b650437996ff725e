"""A device slow to log in and start its command is waited for, within its own allowance.

On a controller whose CPU is the bottleneck (200 logins at once on 2 cores), or on a Pi whose
``.bashrc`` runs a ``pyenv init``, the time before a command's first output is the login and
the shell's start, not a hung command. Before ``Channel.start_s`` the silence timeout
(``EDGEFLEET_TIMEOUT_S``) counted it: devices only waiting their turn were failed with "no
output for 30s" (README, "1,000 devices"). Now a command may stay silent for
``EDGEFLEET_SSH_LOGIN_TIMEOUT_S`` more until its first output, then the silence timeout alone
applies. Injected for real: the device's sshd makes every login shell source a script that
takes 3 s (``SetEnv BASH_ENV``), over both SSH transports.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from ..conftest import Cli
from .test_push_e2e import setup_fleet


def test_a_slow_shell_start_is_waited_for_then_bounded(cli: Cli, sshd_factory, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    shell = pwd.getpwuid(os.getuid()).pw_shell
    assert shell.endswith("/bash"), f"the test's user logs in with {shell}, not bash"
    slow = tmp_path / "slow-shell-start.sh"
    slow.write_text("unset BASH_ENV\n")
    (host,) = sshd_factory(1, shell_start=slow)
    setup_fleet(cli, tmp_path, [host])
    slow.write_text("unset BASH_ENV\nsleep 3\n")  # the fault: each login shell takes 3 s
    monkeypatch.setenv("EDGEFLEET_TIMEOUT_S", "1.5")

    monkeypatch.setenv("EDGEFLEET_SSH_LOGIN_TIMEOUT_S", "30")
    for connector in ("openssh", "paramiko"):
        monkeypatch.setenv("EDGEFLEET_SSH_CONNECTOR", connector)
        (polled,) = cli("telemetry", host.name, "--json").json
        assert polled["state"] == "ok", (connector, polled)

    monkeypatch.setenv("EDGEFLEET_SSH_LOGIN_TIMEOUT_S", "0.5")  # 1.5 + 0.5 s < 3 s
    for connector in ("openssh", "paramiko"):
        monkeypatch.setenv("EDGEFLEET_SSH_CONNECTOR", connector)
        (failed,) = cli("telemetry", host.name, "--json", expect=None).json
        assert failed["state"] != "ok", (connector, failed)
        assert "no output for 2s (1.5s + 0.5s to log in and start" in failed["error"], failed
