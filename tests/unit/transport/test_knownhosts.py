"""transport.knownhosts decides, without paramiko, what paramiko's HostKeys decide: the same
files (written with real ssh-keygen keys, hashed lines, markers, odd spacing, key types
paramiko cannot load) give the same trusted key per type for every host name."""

from __future__ import annotations

import subprocess
from pathlib import Path

import paramiko
import pytest

from orchestrator.core.errors import HostKeyError
from orchestrator.transport import knownhosts


def public(tmp_path: Path, name: str, *args: str) -> tuple[str, str]:
    """(type, base64) of a fresh ssh-keygen key."""
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", *args, "-N", "", "-C", "t", "-f", str(path)],
                   check=True, capture_output=True)
    key_type, blob = path.with_name(name + ".pub").read_text().split()[:2]
    return key_type, blob


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("keys")
    return {"ed1": public(tmp, "ed1", "-t", "ed25519"), "ed2": public(tmp, "ed2", "-t", "ed25519"),
            "ec256": public(tmp, "ec256", "-t", "ecdsa", "-b", "256"),
            "ec384": public(tmp, "ec384", "-t", "ecdsa", "-b", "384"),
            "rsa": public(tmp, "rsa", "-t", "rsa", "-b", "1024")}


HOSTS = ["h1", "h2", "h3", "[h1]:2222", "h4", "h5", "h6", "h7", "h8", "h9", "pi.local",
         "nothere"]


def paramiko_view(db: list[tuple[str, str, str]], files: list[Path],
                  hostname: str) -> dict[str, str]:
    """What ``hostkeys.load_known`` then ``lookup`` hold, as {type: base64}."""
    import base64

    known = paramiko.HostKeys()
    for entry, key_type, blob in db:
        known.add(entry, key_type, paramiko.PKey.from_type_string(key_type,
                                                                   base64.b64decode(blob)))
    for path in files:
        known.load(str(path))
    found = known.lookup(hostname) or {}
    return {name: found[name].get_base64() for name in found}


def test_same_keys_as_paramiko_per_host_and_type(tmp_path: Path,
                                                 keys: dict[str, tuple[str, str]]) -> None:
    ed1, ed2, ec256, ec384, rsa = (" ".join(keys[k]) for k in
                                   ("ed1", "ed2", "ec256", "ec384", "rsa"))
    hashed = paramiko.HostKeys.hash_host("h3")
    legacy = tmp_path / "legacy"
    legacy.write_text("\n".join([
        "# a comment", "",
        f"h1 {ed1}",
        f"h2,h1 {ec256}",
        f"{hashed} {ed2}",
        f"[h1]:2222 {ed2}",
        f"h1 {ed2}",  # a second ed25519 for h1: the first one counts
        f"h4 rsa-sha2-512 {keys['rsa'][1]}",  # looked up as ssh-rsa
        f"h5 ssh-ed25519 {keys['ec256'][1]}",  # type and key disagree: skipped
        "h1 ssh-dss AAAAB3NzaC1kc3MAAACBAA==",  # a type paramiko does not load
        f"h1 sk-ssh-ed25519@openssh.com {keys['ed2'][1]}",
        f"h7\t{keys['ed1'][0]}\t{keys['ed1'][1]}",
        f"h8 {ed1} a comment with spaces",
        f"h9 ecdsa-sha2-nistp256 {keys['ec384'][1]}",  # the key's own curve names it
        f"*.local {ed1}",  # no patterns in paramiko
        "",
    ]))
    user = tmp_path / "user"
    user.write_text("\n".join([f"h1 {ec384}", f"h2 {ed2}", f"h3 {ed1}", f"h9 {rsa}",
                               f"nothere,h7 {ec256}", ""]))
    db = [("h2", keys["ed1"][0], keys["ed1"][1]), ("h8", keys["ed2"][0], keys["ed2"][1])]
    for files in ([legacy], [user], [legacy, user], [user, legacy]):
        for host in HOSTS:
            for rows in ([], db):
                ours = knownhosts.effective([(t, b) for e, t, b in rows if e == host], files,
                                            host)
                assert ours == paramiko_view(rows, files, host), (host, files, rows)
    # Spot checks of what the comparison covered.
    both = knownhosts.effective([], [legacy, user], "h1")
    assert both == {"ssh-ed25519": keys["ed1"][1], "ecdsa-sha2-nistp256": keys["ec256"][1],
                    "ecdsa-sha2-nistp384": keys["ec384"][1]}
    assert knownhosts.effective([], [legacy], "h3") == {"ssh-ed25519": keys["ed2"][1]}
    assert knownhosts.effective([], [legacy], "h4") == {"ssh-rsa": keys["rsa"][1]}
    assert knownhosts.effective([], [legacy], "h9") == {"ecdsa-sha2-nistp384": keys["ec384"][1]}
    assert knownhosts.effective([db[1][1:]], [legacy], "h8") == {"ssh-ed25519": keys["ed2"][1]}


@pytest.mark.parametrize("line", [
    "h1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5A",  # cut short: not base64
    "@revoked h1 ssh-ed25519 {ed}",  # markers: paramiko reads the type as the key
    "@cert-authority *.lan ssh-ed25519 {ed}",
    "h6  ssh-ed25519 {ed}",  # two spaces: an empty field, the type read as the key
])
def test_a_line_paramiko_cannot_read_is_an_error_for_both(
        line: str, tmp_path: Path, keys: dict[str, tuple[str, str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Even on another host's line (paramiko decodes every line): refusing to connect is the
    safe reading of a file with a revocation neither reader can honour."""
    from orchestrator.core.envsettings import EnvSettings
    from orchestrator.transport.hostkeys import load_known

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    bad = home / ".ssh" / "known_hosts"
    bad.write_text(f"h2 {' '.join(keys['ed2'])}\n{line.format(ed=keys['ed1'][1])}\n")
    with pytest.raises(HostKeyError, match=f"cannot read known_hosts file {bad}: line 2"):
        knownhosts.effective([], [bad], "h2")
    monkeypatch.setattr("orchestrator.transport.hostkeys.db_rows", lambda *a: [])
    with pytest.raises(HostKeyError, match=f"cannot read known_hosts file {bad}"):
        load_known(EnvSettings(tmp_path / "ef"), "h2")
    assert knownhosts.effective([], [tmp_path / "missing"], "h1") == {}
