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


@pytest.mark.parametrize("connector", ["openssh", "paramiko"])
def test_logins_that_queue_on_one_lock_are_started_a_few_at_a_time(
        connector: str, sshd_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """16 logical devices behind one sshd whose login shells each hold one lock for 0.4 s (as
    ``pyenv init``'s rehash does in the test machine's ``.bashrc``: 200 logins at once spun on
    it past the 60 s allowance, README "1,000 devices"). Started all at once, the later ones
    waited out their allowance in the queue and failed "no output"; through the start gate at
    most 2 are starting, and each one's allowance counts from its own launch."""
    from orchestrator.fleet.fanout import Outcome, fan_out
    from orchestrator.transport.base import Target
    from orchestrator.transport.hostkeys import keys_from_file
    from orchestrator.transport.openssh import OpenSshConnection
    from orchestrator.transport.ssh import SshConnection

    lock = tmp_path / "shell.lock"
    start = tmp_path / "locked-shell-start.sh"
    # The login shell only (SHLVL 1): the shells its .bashrc starts source BASH_ENV too.
    start.write_text(f'unset BASH_ENV\n[ "${{SHLVL:-1}}" -gt 1 ] || '
                     f'{{ flock 9; sleep 0.4; }} 9>{lock}\n')
    (host,) = sshd_factory(1, shell_start=start)
    keys = keys_from_file(host.write_known_hosts(tmp_path / "known_hosts"))
    offered = {k.get_name(): k.get_base64()
               for k in keys.lookup(f"[127.0.0.1]:{host.port}").values()}
    targets = [Target(f"lg-{i:02}", "127.0.0.1", port=host.port, user=host.user,
                      key_file=str(host.key_file)) for i in range(16)]

    def step(target: Target) -> Outcome:
        conn = (OpenSshConnection(target, offered, 2.0, login_s=1.0)
                if connector == "openssh" else SshConnection(target, keys, 2.0, login_s=1.0))
        with conn:
            result = conn.run(["echo", "up"], timeout=2.0)
        return Outcome(target.name, result.stdout == "up\n", result.stdout)

    monkeypatch.setenv("EDGEFLEET_MAX_STARTING", "2")
    paced = fan_out(targets, step, forks=16)
    assert [o.error for o in paced if not o.ok] == []

    # Second (the shells of the killed commands would hold the lock a while longer).
    monkeypatch.setenv("EDGEFLEET_MAX_STARTING", "0")  # no gate: 16 logins queue on the lock
    crowd = fan_out(targets, step, forks=16)
    assert sum(not o.ok for o in crowd) >= 4, [o.error for o in crowd]
    assert any("no output for 3s (2s + 1s to log in and start" in str(o.error) for o in crowd)
