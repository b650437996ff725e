"""What this host's ``ssh`` client offers, asked without connecting (``ssh -G``), once per
process: whether it knows ``KnownHostsCommand`` (to turn it off), and the key exchanges a
telemetry poll offers. Apart from ``openssh.py`` because neither needs a device.
"""

from __future__ import annotations

import shutil
import subprocess

# The name ssh looks the host's key up by in the private known_hosts file (HostKeyAlias):
# fixed, so no address, port or ~/.ssh/config HostName changes which line is checked.
HOST_KEY_ALIAS = "edgefleet-device"
_known_hosts_command: dict[str, bool] = {}  # ssh binary -> whether it knows KnownHostsCommand


def available() -> bool:
    """Whether a system ``ssh`` client is on PATH (``auto`` picks this transport then)."""
    return shutil.which("ssh") is not None


def knows_known_hosts_command(ssh: str) -> bool:
    """Whether ``ssh`` (OpenSSH >= 8.5) has ``KnownHostsCommand``, which a user's config could
    use to add keys; asked once per process (``ssh -G``, no connection), since an older ssh
    refuses the option that turns it off."""
    if ssh not in _known_hosts_command:
        try:
            probe = subprocess.run(  # noqa: S603 - fixed argv
                [ssh, "-F", "/dev/null", "-G", "-o", "KnownHostsCommand=none", HOST_KEY_ALIAS],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                timeout=30, check=False)
            _known_hosts_command[ssh] = probe.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            _known_hosts_command[ssh] = False
    return _known_hosts_command[ssh]


# A poll's key exchange (``poll_kex``): the classical ones first.
CLASSICAL_KEX = ("curve25519-sha256", "curve25519-sha256@libssh.org")
_poll_kex: dict[tuple[str, str], str | None] = {}  # (ssh binary, host) -> KexAlgorithms


def poll_kex(ssh: str, host: str) -> str | None:
    """The key exchanges a telemetry poll offers: this host's own list (``ssh -G``: the user's
    config, else OpenSSH's defaults; no connection), with Curve25519 moved first; None when the
    list has none (then nothing is changed).

    Why: OpenSSH 9's default, sntrup761x25519 (post-quantum hybrid), cost ~60 ms of the
    control plane's CPU per connection here and as much on the device, against ~9 ms for
    Curve25519: at 1,000 devices polled every minute, a whole core for key exchanges. A
    poll carries sensor readings, so the post-quantum half (confidentiality against a future
    quantum adversary recording today's traffic) buys nothing there; host keys and the login
    are checked exactly as before. Pushes, benchmarks and every other operation keep the
    default order (a model may be worth keeping secret). The device still decides: a server
    without Curve25519 negotiates the next one in the list."""
    key = (ssh, host)
    if key not in _poll_kex:
        offered: str | None = None
        try:
            probe = subprocess.run(  # noqa: S603 - fixed argv
                [ssh, "-G", "--", host], stdin=subprocess.DEVNULL, capture_output=True,
                text=True, timeout=30, check=False)
            for line in probe.stdout.splitlines():
                name, _, value = line.partition(" ")
                if name == "kexalgorithms" and probe.returncode == 0:
                    algorithms = value.strip().split(",")
                    first = [a for a in CLASSICAL_KEX if a in algorithms]
                    if first:
                        offered = ",".join(first + [a for a in algorithms if a not in first])
        except (OSError, subprocess.TimeoutExpired):
            offered = None
        _poll_kex[key] = offered
    return _poll_kex[key]
