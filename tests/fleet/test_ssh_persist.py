"""Persistent OpenSSH connections (transport.sshpersist, ``EDGEFLEET_SSH_PERSIST_S``): the next
command to a device logs in no more; a stopped sshd still fails the next command at once and
says so; a changed trust or key exchange never reuses a connection; the socket directory must be
the user's own. Over real sshd hosts; logins are counted in each host's own log."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.core.config import get_settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import TransportError
from orchestrator.inventory.devices import get_device, to_target
from orchestrator.transport import connect
from orchestrator.transport.base import Target
from orchestrator.transport.sshpersist import (
    STALE_AFTER_S,
    control_dir,
    shared_control_path,
    socket_name,
    sweep,
)

from ..conftest import Cli
from ..waiting import process_gone
from .test_push_e2e import model_folder, setup_fleet


def logins(host) -> int:  # noqa: ANN001 - an SshdHost
    return host.log_text().count("Accepted publickey")


@pytest.fixture
def socket_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This test's own socket directory (short: pytest's tmp_path is too long for a socket)."""
    runtime = Path(tempfile.mkdtemp(prefix="ef-"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    yield runtime / "edgefleet-ssh"
    shutil.rmtree(runtime, ignore_errors=True)


def masters() -> dict[str, int]:
    """socket path -> pid of each live persistent master in this test's directory."""
    directory = control_dir()
    assert directory is not None
    found = {}
    for sock in directory.iterdir():
        if sock.suffix == ".known_hosts":
            continue
        check = subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "check", "x"],
                               capture_output=True, text=True, timeout=30, check=False)
        if match := re.search(r"pid=(\d+)", check.stderr):
            found[str(sock)] = int(match.group(1))
    return found


def test_the_next_command_reuses_the_login_and_a_stopped_sshd_still_fails(
        cli: Cli, sshd_factory, tmp_path: Path, socket_dir: Path) -> None:
    (host,) = sshd_factory(1)
    setup_fleet(cli, tmp_path, [host])  # agent install: a login, left open
    before = logins(host)
    cli("bundle", "build", model_folder(tmp_path), "--name", "first-crack")
    assert cli("push", "first-crack", host.name, "--json").json[0]["state"] == "active"
    assert logins(host) == before  # the push went over the install's connection
    for _ in range(3):
        assert cli("telemetry", host.name, "--json").json[0]["state"] == "ok"
    assert logins(host) == before + 1  # a poll's own (its key exchange), once for three
    live = masters()
    assert len(live) == 2, live  # the install's (default kex) and the polls' (Curve25519)
    for pid in live.values():  # detached: its own session, none of the CLI's pipes
        assert os.getsid(pid) == pid != os.getsid(0)
    host.stop()  # its session processes too: the masters' links end with it
    for pid in live.values():
        assert process_gone(pid, 30), "a master outlived its sshd"
    failed = cli("telemetry", host.name, "--json", expect=1).json[0]
    assert failed["state"] == "failed" and "cannot connect" in failed["error"], failed


def test_persist_0_logs_in_for_every_command(cli: Cli, sshd_factory, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_SSH_PERSIST_S", "0")
    (host,) = sshd_factory(1)
    setup_fleet(cli, tmp_path, [host])
    before = logins(host)
    for _ in range(2):
        assert cli("telemetry", host.name, "--json").json[0]["state"] == "ok"
    assert logins(host) == before + 2


TARGET = Target(name="pi1", address="127.0.0.1", port=2222, user="pi")
KEYS = {"ssh-ed25519": "AAAAC3NzaC1lZDI1NTE5AAAAIOne"}


def test_a_connection_is_shared_only_by_connections_made_and_checked_alike() -> None:
    base = socket_name("ssh", TARGET, KEYS, None)
    assert socket_name("ssh", TARGET, dict(KEYS), None) == base
    others = [
        socket_name("ssh", TARGET, {"ssh-ed25519": "AAAAC3NzaC1lZDI1NTE5AAAAITwo"}, None),
        socket_name("ssh", TARGET, {**KEYS, "ecdsa-sha2-nistp256": "AAAAE2"}, None),
        socket_name("ssh", TARGET, KEYS, "curve25519-sha256"),
        socket_name("ssh", Target(name="pi1", address="127.0.0.1", port=2223, user="pi"), KEYS,
                    None),
        socket_name("ssh", Target(name="pi1", address="127.0.0.1", port=2222, user="root"),
                    KEYS, None),
        socket_name("/opt/ssh", TARGET, KEYS, None),
        socket_name("ssh", Target(name="pi2", address="127.0.0.1", port=2222, user="pi"), KEYS,
                    None),  # another inventory name for the same sshd: its own connection
    ]
    assert base not in others and len(set(others)) == len(others)


@pytest.mark.parametrize("make", ["open to others", "a symlink", "a file"])
def test_a_socket_directory_not_private_to_the_user_is_refused(
        make: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = tmp_path / "edgefleet-ssh"
    if make == "open to others":
        path.mkdir()
        path.chmod(0o777)
    elif make == "a symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        path.symlink_to(tmp_path / "elsewhere")
    else:
        path.write_text("")
    assert control_dir() is None
    assert shared_control_path("ssh", TARGET, KEYS, None) is None  # the operation's own
    assert "not a private directory" in caplog.text and str(path) in caplog.text


def test_the_socket_directory_is_made_private_and_a_long_path_is_not_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    short = Path(tempfile.mkdtemp(prefix="ef-"))  # pytest's tmp_path is too long for a socket
    try:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(short))
        path = shared_control_path("ssh", TARGET, KEYS, None)
        assert path is not None and Path(path).parent == short / "edgefleet-ssh"
        assert (short / "edgefleet-ssh").stat().st_mode & 0o777 == 0o700
        assert shared_control_path("ssh", TARGET, {}, None) is None  # nothing trusted
    finally:
        shutil.rmtree(short)
    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    assert shared_control_path("ssh", TARGET, KEYS, None) is None


def test_an_aborted_command_leaves_the_other_sessions_on_its_connection(
        cli: Cli, sshd_factory, tmp_path: Path, socket_dir: Path) -> None:
    """Two operations on one device share its connection; one aborting a command (an early
    push discarded because the device is busy, an agent error) must not end the other's
    session with it (only a flooding or silent device's abort ends the connection)."""
    (host,) = sshd_factory(1)
    setup_fleet(cli, tmp_path, [host])
    before = logins(host)
    settings = get_settings()
    with session_scope(settings) as session:
        target = to_target(get_device(session, host.name))
    with connect(target, settings) as first, connect(target, settings) as second:
        waiting = first.start(["sh", "-c", 'read line && echo "got $line"'])
        other = second.start(["cat"])
        other.write(b"x\n")
        assert other.readline().strip() == "x"  # both sessions are live
        other.abort()
        waiting.write(b"hi\n")
        assert waiting.readline().strip() == "got hi"
        assert waiting.finish()[0] == 0
    assert logins(host) == before  # both over the install's connection


def test_a_socket_directory_on_its_own_file_system_works(
        cli: Cli, sshd_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd mounts ``$XDG_RUNTIME_DIR`` (/run/user/<uid>) as a tmpfs of its own: the
    known_hosts beside the socket must not be renamed there from the temporary directory
    (EXDEV: every connection failed with a raw OSError)."""
    shm = Path("/dev/shm")
    assert shm.is_dir() and os.stat(shm).st_dev != os.stat(tempfile.gettempdir()).st_dev
    runtime = Path(tempfile.mkdtemp(prefix="ef-", dir=shm))
    try:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
        (host,) = sshd_factory(1)
        setup_fleet(cli, tmp_path, [host])
        assert cli("telemetry", host.name, "--json").json[0]["state"] == "ok"
        assert len(masters()) == 2  # both connections persist in the tmpfs
        assert not [p for p in (runtime / "edgefleet-ssh").iterdir()
                    if p.name.startswith(".known_hosts-")]  # nothing staged left behind
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (sshd's per-connection processes and what they run)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        children = Path(f"/proc/{parent}/task/{parent}/children")
        kids = [int(k) for k in children.read_text().split()] if children.exists() else []
        found += kids
        todo += kids
    return found


def test_a_silent_command_on_a_live_connection_ends_only_itself(
        cli: Cli, sshd_factory, tmp_path: Path, socket_dir: Path) -> None:
    """A command silent past its timeout is killed; its device's shared connection still runs
    a new session, so it stays, and so does another operation's session over it (before, the
    timeout ended the connection, ``ssh -O exit``, and the other session with it)."""
    (host,) = sshd_factory(1)
    setup_fleet(cli, tmp_path, [host])
    settings = get_settings()
    with session_scope(settings) as session:
        target = to_target(get_device(session, host.name))
    before = logins(host)
    with connect(target, settings) as healthy, connect(target, settings, timeout=1.0) as silent:
        running = healthy.start(["sh", "-c", 'echo started; read line; echo "got $line"'])
        assert running.readline() == "started\n"
        stuck = silent.start(["sleep", "60"])
        with pytest.raises(TransportError,
                           match=r"no output for 2s \(1s \+ 1s to log in and start"):
            stuck.readline()
        running.write(b"more\n")
        assert running.readline() == "got more\n"
        assert running.finish()[0] == 0
        assert len(masters()) == 1
    assert logins(host) - before <= 1  # the one connection both used (none if it was warm)


def test_a_session_whose_shared_connection_is_ended_under_it_says_so(
        cli: Cli, sshd_factory, tmp_path: Path, socket_dir: Path) -> None:
    """A dead link (here the device's sshd stopped, SIGSTOP): a silent command's timeout finds
    that its shared connection runs no new session either and ends it (the next command logs
    in afresh); another command on it then ends too, and must say why instead of passing for
    the remote command's own exit 255."""
    (host,) = sshd_factory(1)
    setup_fleet(cli, tmp_path, [host])
    settings = get_settings()
    with session_scope(settings) as session:
        target = to_target(get_device(session, host.name))
    with connect(target, settings) as healthy, connect(target, settings, timeout=1.0) as silent:
        running = healthy.start(["sh", "-c", "echo started; read never; echo unreachable"])
        assert running.readline() == "started\n"
        assert host.pid is not None
        frozen = descendants(host.pid)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            stuck = silent.start(["true"])
            with pytest.raises(TransportError,
                               match=r"no output for 2s \(1s \+ 1s to log in and start"):
                stuck.readline()
            with pytest.raises(TransportError,
                               match="SSH connection to .* ended during the command"):
                running.finish()
            assert masters() == {}
        finally:
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)


def test_stale_known_hosts_files_are_swept(tmp_path: Path) -> None:
    now = time.time()
    old = now - STALE_AFTER_S - 60
    files = {"a" * 32 + ".known_hosts": old,  # its connection long gone: removed
             "b" * 32 + ".known_hosts": old,  # its socket still there: kept
             "c" * 32 + ".known_hosts": now - 5,  # just written, master starting: kept
             ".known_hosts-x1.new": old,  # left by a killed process: removed
             "unrelated.txt": old}
    for name, mtime in files.items():
        (tmp_path / name).write_text("x")
        os.utime(tmp_path / name, (mtime, mtime))
    (tmp_path / ("b" * 32)).write_text("")  # stands for the live socket
    assert sweep(tmp_path, now) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["b" * 32, "b" * 32 + ".known_hosts", "c" * 32 + ".known_hosts", "unrelated.txt"])
    (tmp_path / ("b" * 32)).unlink()
    assert sweep(tmp_path, now + 1) == 0  # at most every SWEEP_EVERY_S


def test_an_aborted_session_does_not_keep_a_reader_thread_for_ever(
        cli: Cli, sshd_factory, tmp_path: Path, socket_dir: Path) -> None:
    """Killing a multiplexed ``ssh`` leaves the master holding its stderr pipe for as long as
    the remote command runs; closing the connection releases our reader of it."""
    (host,) = sshd_factory(1)
    setup_fleet(cli, tmp_path, [host])
    settings = get_settings()
    with session_scope(settings) as session:
        target = to_target(get_device(session, host.name))
    conn = connect(target, settings)
    channel = conn.start(["sh", "-c", "echo up; exec sleep 60"])
    assert channel.readline() == "up\n"
    channel.abort()  # as a discarded early push: this ssh only, the connection stays
    reader = channel._stderr_thread  # noqa: SLF001 - what this test is about
    conn.close()
    reader.join(10)
    assert not reader.is_alive()  # ended within a second of close, not after the sleep
