"""The few settings a push needs to reach its devices, read from the environment with the
standard library.

Why not ``config.Settings``: a CLI push starts its device work before pydantic is imported
(``cli.quick``, ``fleet.early``: ~0.3 s of a fresh process). These fields are read by
Settings' own rules (``EDGEFLEET_`` prefix, names case-insensitive, the last of two spellings
winning); a value Settings would refuse (an empty one too) gives None here, so the command
takes its ordinary path and Settings says what is wrong.
tests/unit/core/test_envsettings.py checks both read the same.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from orchestrator.core.dbfile import default_home

CONNECTORS = ("auto", "openssh", "paramiko")


@dataclass(frozen=True)
class EnvSettings:
    home: Path
    timeout_s: float = 30.0
    max_line_mb: float | None = None
    max_output_mb: float | None = None
    ssh_connector: str = "auto"
    ssh_key_file: Path | None = None  # this worker's own SSH key (transport.factory.worker_key)
    ssh_persist_s: int = 90  # ControlPersist (config.Settings.ssh_persist_s)
    ssh_login_timeout_s: float | None = None  # config.Settings.ssh_login_timeout_s

    @property
    def blob_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def known_hosts(self) -> Path:
        return self.home / "known_hosts"


def _float(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def from_env() -> EnvSettings | None:
    """What Settings() would say for these fields; None when it would refuse a value."""
    env = {key.lower(): value for key, value in os.environ.items()}
    home = Path(env["edgefleet_home"]) if "edgefleet_home" in env else default_home()
    timeout = _float(env["edgefleet_timeout_s"]) if "edgefleet_timeout_s" in env else 30.0
    limits: list[float | None] = []
    for name in ("edgefleet_max_line_mb", "edgefleet_max_output_mb"):
        value = _float(env[name]) if name in env else None
        if name in env and (value is None or value <= 0):
            return None
        limits.append(value)
    connector = env.get("edgefleet_ssh_connector", "auto")
    if timeout is None or connector not in CONNECTORS:
        return None
    key_file = Path(env["edgefleet_ssh_key_file"]) if "edgefleet_ssh_key_file" in env else None
    persist = _seconds(env["edgefleet_ssh_persist_s"]) if "edgefleet_ssh_persist_s" in env else 90
    if persist is None:
        return None
    login = None
    if "edgefleet_ssh_login_timeout_s" in env:
        login = _float(env["edgefleet_ssh_login_timeout_s"])
        if login is None or login <= 0:
            return None
    return EnvSettings(home, timeout, limits[0], limits[1], connector, key_file, persist, login)


def _seconds(text: str) -> int | None:
    """A whole number of seconds, 0 to a day, as pydantic reads an int from a string (``" 60 "``
    and ``60.0`` too, not ``1e2``); None where it would refuse."""
    match = re.fullmatch(r"\s*\+?(\d+)(?:\.0*)?\s*", text)
    if match is None or int(match.group(1)) > 86_400:
        return None
    return int(match.group(1))
