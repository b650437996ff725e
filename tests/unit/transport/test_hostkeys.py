"""Host keys against OpenSSH itself: ssh-keygen for fingerprints and lookups, a real sshd for
trust-on-request, the user's own known_hosts honoured."""

from __future__ import annotations

import base64
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from sqlmodel import select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import HostKeyError
from orchestrator.core.models import HostKey
from orchestrator.transport import Target, connect
from orchestrator.transport.hostkeys import fingerprint, known_hosts_entry, load_known, trust
from tests.fleet.sshd import SshdHost, UserKey, generate_user_key


def keygen(path: Path, key_type: str) -> Path:
    extra = ["-b", "1024"] if key_type == "rsa" else []
    subprocess.run(["ssh-keygen", "-q", "-t", key_type, *extra, "-N", "", "-C", "test",
                    "-f", str(path)], check=True, capture_output=True)
    return path


def ssh_keygen_fingerprint(path: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return out.split()[1]


@pytest.fixture(scope="module")
def user_key(tmp_path_factory: pytest.TempPathFactory) -> UserKey:
    return generate_user_key(tmp_path_factory.mktemp("user-key"))


@pytest.fixture
def host(tmp_path: Path, user_key: UserKey) -> Iterator[SshdHost]:
    with SshdHost("pi1", tmp_path / "fleet", user_key) as started:
        yield started


@pytest.fixture
def empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME with no ~/.ssh: only what a test writes is trusted."""
    home = tmp_path / "user-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def target_for(host: SshdHost, connection: str = "ssh") -> Target:
    return Target(name=host.name, address=host.address, port=host.port, user=host.user,
                  key_file=str(host.key_file), root=str(host.root), connection=connection)


CONNECTORS = pytest.mark.parametrize("connector", ["paramiko", "openssh"])


def contact(host: SshdHost, settings: Settings, connector: str) -> None:
    """Connect and run a command: paramiko refuses a key at connect, the OpenSSH transport
    at the first command (each command is an ``ssh`` process)."""
    with connect(target_for(host, connector), settings, timeout=10) as conn:
        assert conn.run(["true"]).exit_code == 0


# -- fingerprints and entries -----------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa", "rsa"])
def test_fingerprint_matches_ssh_keygen(tmp_path: Path, key_type: str) -> None:
    private = keygen(tmp_path / f"id_{key_type}", key_type)
    public = private.with_name(private.name + ".pub")
    expected = ssh_keygen_fingerprint(public)
    assert expected.startswith("SHA256:")
    assert fingerprint(paramiko.PKey.from_path(private)) == expected
    key_type_name, blob = public.read_text().split()[:2]
    from_line = paramiko.PKey.from_type_string(key_type_name, base64.b64decode(blob))
    assert fingerprint(from_line) == expected


@pytest.mark.parametrize(
    ("address", "port", "entry"),
    [
        ("192.168.40.11", 22, "192.168.40.11"),
        ("192.168.40.20", 2222, "[192.168.40.20]:2222"),
        ("pi5-a.local", 22, "pi5-a.local"),
        ("pi5-a.local", 22022, "[pi5-a.local]:22022"),
    ],
)
def test_known_hosts_entry_is_what_openssh_looks_up(tmp_path: Path, address: str, port: int,
                                                    entry: str) -> None:
    assert known_hosts_entry(address, port) == entry
    private = keygen(tmp_path / "host_key", "ed25519")
    key_line = " ".join(private.with_name("host_key.pub").read_text().split()[:2])
    known = tmp_path / "known_hosts"
    known.write_text(f"{entry} {key_line}\n")
    # OpenSSH's own lookup, with the host written the way ssh would for this port.
    query = address if port == 22 else f"[{address}]:{port}"
    found = subprocess.run(["ssh-keygen", "-F", query, "-f", str(known)], capture_output=True,
                           text=True, check=False)
    assert found.returncode == 0 and key_line in found.stdout
    other_port = subprocess.run(["ssh-keygen", "-F", f"[{address}]:{port + 1}", "-f",
                                 str(known)], capture_output=True, check=False)
    assert other_port.returncode != 0


# -- trust against a real sshd ----------------------------------------------------------------


def db_lines(settings: Settings) -> list[str]:
    """The database's trusted keys as known_hosts lines (``entry type base64``)."""
    with session_scope(settings) as session:
        rows = session.exec(select(HostKey).order_by(HostKey.id)).all()  # type: ignore[arg-type]
    return [f"{r.entry} {r.key_type} {r.key_base64}" for r in rows]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "edgefleet-home")


def test_trust_records_once_refuses_a_changed_key_and_replaces_on_request(
    host: SshdHost, settings: Settings, empty_home: Path
) -> None:
    entry = f"[127.0.0.1]:{host.port}"
    first = trust("pi1", host.address, host.port, settings, 10)
    assert (first.status, first.entry, first.key_type) == ("added", entry, "ssh-ed25519")
    assert first.fingerprint == host.host_key_fingerprint
    assert first.previous_fingerprint is None
    assert db_lines(settings) == [host.known_hosts_line]
    assert not settings.known_hosts.exists()  # the database, not a file of this host

    again = trust("pi1", host.address, host.port, settings, 10)
    assert again.status == "already trusted"
    assert db_lines(settings) == [host.known_hosts_line]  # recorded once

    old_fp, old_line = host.host_key_fingerprint, host.known_hosts_line
    new_fp = host.regenerate_host_key()
    assert new_fp != old_fp
    with pytest.raises(HostKeyError) as refused:
        trust("pi1", host.address, host.port, settings, 10)
    message = str(refused.value)
    assert message.startswith(f"pi1: HOST KEY CHANGED for {entry}")
    assert new_fp in message and old_fp in message
    assert message.index(new_fp) < message.index(old_fp)  # "offered X but Y is trusted"
    assert "edgefleet devices trust pi1 --replace" in message
    assert db_lines(settings) == [old_line]  # refused: nothing written

    replaced = trust("pi1", host.address, host.port, settings, 10, replace=True)
    assert (replaced.status, replaced.fingerprint) == ("replaced", new_fp)
    assert replaced.previous_fingerprint == old_fp
    assert db_lines(settings) == [host.known_hosts_line]
    assert trust("pi1", host.address, host.port, settings, 10).status == "already trusted"


def test_trust_keeps_other_hosts(host: SshdHost, tmp_path: Path, settings: Settings,
                                 empty_home: Path) -> None:
    other = keygen(tmp_path / "other", "ed25519")
    key_type, blob = other.with_name("other.pub").read_text().split()[:2]
    with session_scope(settings) as session:
        session.add(HostKey(entry="[10.9.9.9]:2222", key_type=key_type, key_base64=blob,
                            fingerprint="-"))
    trust("pi1", host.address, host.port, settings, 10)
    assert db_lines(settings) == [f"[10.9.9.9]:2222 {key_type} {blob}", host.known_hosts_line]


def test_trust_cannot_reach(settings: Settings, empty_home: Path) -> None:
    with pytest.raises(OSError):
        # A port nothing listens on: the caller (devices trust) turns this into a clear error.
        trust("pi9", "127.0.0.1", _closed_port(), settings, 5)
    assert db_lines(settings) == []


# -- the pre-database EDGEFLEET_HOME/known_hosts ------------------------------------------------


def test_legacy_known_hosts_file_still_trusted_and_trust_shares_it(
        host: SshdHost, settings: Settings, empty_home: Path) -> None:
    """An install from before the database keeps connecting with its file; `devices trust`
    copies the key it confirms into the database (for the other workers), file untouched."""
    settings.home.mkdir(parents=True)
    host.write_known_hosts(settings.known_hosts)
    with connect(target_for(host), settings, timeout=10) as conn:
        assert conn.run(["true"]).exit_code == 0
    assert db_lines(settings) == []
    assert trust("pi1", host.address, host.port, settings, 10).status == "already trusted"
    assert db_lines(settings) == [host.known_hosts_line]
    assert settings.known_hosts.read_text() == host.known_hosts_line + "\n"


@CONNECTORS
def test_database_key_wins_over_a_stale_legacy_file_line(
        host: SshdHost, settings: Settings, empty_home: Path, connector: str) -> None:
    settings.home.mkdir(parents=True)
    stale_line, stale_fp = host.known_hosts_line, host.host_key_fingerprint
    host.write_known_hosts(settings.known_hosts)
    host.regenerate_host_key()
    with pytest.raises(HostKeyError, match="HOST KEY CHANGED") as refused:
        contact(host, settings, connector)
    assert stale_fp in str(refused.value)
    replaced = trust("pi1", host.address, host.port, settings, 10, replace=True)
    assert (replaced.status, replaced.previous_fingerprint) == ("replaced", stale_fp)
    assert settings.known_hosts.read_text() == stale_line + "\n"  # the file is never written
    contact(host, settings, connector)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the user's ~/.ssh/known_hosts ------------------------------------------------------------


def write_user_known_hosts(home: Path, line: str, hashed: bool) -> Path:
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(exist_ok=True)
    path = ssh_dir / "known_hosts"
    path.write_text(line + "\n")
    if hashed:  # as with HashKnownHosts yes (Debian's default)
        subprocess.run(["ssh-keygen", "-H", "-f", str(path)], check=True, capture_output=True)
        assert path.read_text().startswith("|1|")
    return path


@CONNECTORS
@pytest.mark.parametrize("hashed", [False, True], ids=["plain", "hashed"])
def test_user_known_hosts_is_honoured(host: SshdHost, tmp_path: Path, empty_home: Path,
                                      hashed: bool, connector: str) -> None:
    write_user_known_hosts(empty_home, host.known_hosts_line, hashed)
    settings = Settings(home=tmp_path / "edgefleet-home")
    assert not settings.known_hosts.exists()

    with connect(target_for(host, connector), settings, timeout=10) as conn:
        result = conn.run(["printf", "%s", "hello from $(hostname)"])
    assert (result.exit_code, result.stdout) == (0, "hello from $(hostname)")

    # trust sees it too: already trusted, now shared through the database.
    assert load_known(settings).lookup(f"[127.0.0.1]:{host.port}") is not None
    status = trust("pi1", host.address, host.port, settings, 10)
    assert status.status == "already trusted"
    assert not settings.known_hosts.exists()
    assert db_lines(settings) == [host.known_hosts_line]


@CONNECTORS
def test_unknown_host_key_is_refused(host: SshdHost, tmp_path: Path, empty_home: Path,
                                     connector: str) -> None:
    settings = Settings(home=tmp_path / "edgefleet-home")
    with pytest.raises(HostKeyError) as refused:
        contact(host, settings, connector)
    message = str(refused.value)
    assert message.startswith("pi1: host key of ")
    assert host.host_key_fingerprint in message and "edgefleet devices trust pi1" in message
    assert not settings.known_hosts.exists() and db_lines(settings) == []  # never accepted


@CONNECTORS
@pytest.mark.parametrize("hashed", [False, True], ids=["plain", "hashed"])
def test_changed_key_in_user_known_hosts_is_refused_until_replaced(
    host: SshdHost, tmp_path: Path, empty_home: Path, hashed: bool, connector: str
) -> None:
    stale_line, stale_fp = host.known_hosts_line, host.host_key_fingerprint
    host.regenerate_host_key()
    write_user_known_hosts(empty_home, stale_line, hashed)
    settings = Settings(home=tmp_path / "edgefleet-home")
    with pytest.raises(HostKeyError, match="HOST KEY CHANGED") as refused:
        contact(host, settings, connector)
    assert stale_fp in str(refused.value) and host.host_key_fingerprint in str(refused.value)
    with pytest.raises(HostKeyError, match="--replace"):
        trust("pi1", host.address, host.port, settings, 10)

    # What the message tells the user to do: afterwards the database's key wins over the stale
    # line in ~/.ssh/known_hosts, for trust and for connections.
    replaced = trust("pi1", host.address, host.port, settings, 10, replace=True)
    assert (replaced.status, replaced.previous_fingerprint) == ("replaced", stale_fp)
    again = trust("pi1", host.address, host.port, settings, 10)
    assert again.status == "already trusted"
    contact(host, settings, connector)


# -- the database's keys, through both transports --------------------------------------------


def add_db_key(settings: Settings, entry: str, public_line: str) -> None:
    """A trusted key recorded the way `devices trust` records it (by another worker, say)."""
    key_type, blob = public_line.split()[:2]
    with session_scope(settings) as session:
        session.add(HostKey(entry=entry, key_type=key_type, key_base64=blob,
                            fingerprint=fingerprint(paramiko.PKey.from_type_string(
                                key_type, base64.b64decode(blob)))))


@pytest.mark.parametrize("read", ["orm", "sqlite3"])
def test_openssh_trusts_a_key_only_in_the_database_and_refuses_it_changed(
        host: SshdHost, settings: Settings, empty_home: Path, read: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No known_hosts file anywhere: the database's row is what the OpenSSH transport trusts,
    read through the ORM (Settings) or, as a push started before the ORM loads does, with
    sqlite3 (EnvSettings); a changed key is refused naming the device, both fingerprints and
    the command, and nothing is learnt."""
    from orchestrator.core.envsettings import from_env

    if read == "sqlite3" and database_url_is_set():
        pytest.skip("the sqlite3 read is for a SQLite database only (fleet.early)")
    add_db_key(settings, f"[127.0.0.1]:{host.port}", host.host_public_key_line)
    monkeypatch.setenv("EDGEFLEET_HOME", str(settings.home))
    reader = settings if read == "orm" else from_env()
    assert reader is not None
    old_fp = host.host_key_fingerprint
    with connect(target_for(host, "openssh"), reader, timeout=10) as conn:
        assert conn.run(["true"]).exit_code == 0
    assert not settings.known_hosts.exists() and not (empty_home / ".ssh").exists()

    new_fp = host.regenerate_host_key()
    with connect(target_for(host, "openssh"), reader, timeout=10) as conn, \
            pytest.raises(HostKeyError) as changed:
        conn.run(["touch", str(host.root)])
    message = str(changed.value)
    assert message.startswith(f"pi1: HOST KEY CHANGED for [127.0.0.1]:{host.port}")
    assert new_fp in message and old_fp in message
    assert "`edgefleet devices trust pi1 --replace`" in message
    assert not host.root.exists()  # the command never ran
    with session_scope(settings) as session:
        assert [r.fingerprint for r in session.exec(select(HostKey)).all()] == [old_fp]


@CONNECTORS
def test_a_file_line_does_not_outvote_the_database_key(
        host: SshdHost, settings: Settings, empty_home: Path, tmp_path: Path,
        connector: str) -> None:
    """The database records another key of this type for the host (`devices trust --replace`
    after a reinstall, say); the key the host offers is only in ~/.ssh/known_hosts (stale).
    paramiko checks the first key per type, the database's; OpenSSH, given both files, would
    accept a key found in any of them. Both transports refuse it."""
    other = keygen(tmp_path / "other", "ed25519").with_name("other.pub").read_text()
    add_db_key(settings, f"[127.0.0.1]:{host.port}", other)
    write_user_known_hosts(empty_home, host.known_hosts_line, hashed=False)
    with pytest.raises(HostKeyError, match="HOST KEY CHANGED") as refused:
        contact(host, settings, connector)
    assert host.host_key_fingerprint in str(refused.value)
    assert not host.root.exists()


def database_url_is_set() -> bool:
    import os

    return bool(os.environ.get("DATABASE_URL"))
