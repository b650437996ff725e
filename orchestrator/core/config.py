"""Settings for the control plane.

Everything stateful lives under ``EDGEFLEET_HOME`` so that a demo, a test or a second fleet can
be kept apart by pointing one variable somewhere else.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.core.dbfile import default_home


class Settings(BaseSettings):
    """Read from the environment (``EDGEFLEET_*``) and ``DATABASE_URL``."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", extra="ignore")

    home: Path = Field(default_factory=default_home)
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    forks: int = 10
    # A device lease lives this long past its holder's last heartbeat (orchestrator.fleet.leases).
    lease_ttl_s: float = 60.0
    # Where the server may read inventories that a web/API request names
    # (orchestrator.inventory.sync.readable_path); default: ``home``.
    inventory_dir: Path | None = None
    timeout_s: float = 30.0
    # What one device may send per command, in MiB: the longest line and stdout + stderr in
    # all (orchestrator.transport.base.OutputLimits); None keeps the defaults defined there.
    max_line_mb: float | None = Field(default=None, gt=0)
    max_output_mb: float | None = Field(default=None, gt=0)

    @cached_property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'edgefleet.db'}"

    @property
    def inventory_root(self) -> Path:
        return self.inventory_dir or self.home

    @property
    def blob_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def known_hosts(self) -> Path:
        return self.home / "known_hosts"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    def ensure_dirs(self) -> None:
        for path in (self.home, self.blob_dir, self.keys_dir):
            path.mkdir(parents=True, exist_ok=True)


def get_settings() -> Settings:
    """A fresh read each call: tests and the demo switch EDGEFLEET_HOME at run time."""
    return Settings()
