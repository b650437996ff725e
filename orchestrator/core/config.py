"""Settings for the control plane.

Everything stateful lives under ``EDGEFLEET_HOME`` so that a demo, a test or a second fleet can
be kept apart by pointing one variable somewhere else.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.core.dbfile import default_home


class Settings(BaseSettings):
    """Read from the environment (``EDGEFLEET_*``) and ``DATABASE_URL``."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", extra="ignore")

    home: Path = Field(default_factory=default_home)
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    forks: int = 10
    # A device lease lives this long past its holder's last heartbeat (orchestrator.fleet.leases),
    # and a running job as long past its process's (orchestrator.jobs.liveness): then any
    # worker, on any host, frees the lease or marks the job interrupted. With ``tick_s`` (how
    # often workers look) a dead worker's jobs and devices are freed within a minute.
    lease_ttl_s: float = Field(default=45.0, gt=0)
    job_ttl_s: float = Field(default=45.0, gt=0)
    # How often a worker passes over schedules and dead workers' jobs, in whole seconds (on
    # PostgreSQL a procrastinate periodic task: its cron has a seconds column).
    tick_s: int = Field(default=5, ge=1, le=60)
    # The workers' telemetry poll of every device, every 60 s (off: only `edgefleet telemetry`
    # and telemetry jobs asked for).
    telemetry_poll: bool = True
    # How long a job waits for a device another operation holds before that device fails
    # "busy" (the job shows "waiting for pi3: bench #12" meanwhile).
    lease_wait_s: float = Field(default=1800.0, ge=0)
    # Where the server may read inventories that a web/API request names
    # (orchestrator.inventory.sync.readable_path); default: ``home``.
    inventory_dir: Path | None = None
    timeout_s: float = 30.0
    # How long an SSH login may take (TCP, key exchange, authentication), and how much longer
    # than timeout_s a command may stay silent before its first output (the login, the
    # device's shell start, the agent's imports: transport.base.Channel.start_s). None: as
    # timeout_s. Raise it where the controller's CPU is the bottleneck (many forks at once).
    ssh_login_timeout_s: float | None = Field(default=None, gt=0)
    # Which SSH client reaches an ``ansible_connection: ssh`` device (orchestrator.transport.
    # factory.ssh_connector): the system ``ssh`` ("openssh"), paramiko, or "auto" (OpenSSH where
    # ``ssh`` is on PATH). A device's ``ansible_connection: openssh|paramiko`` wins.
    ssh_connector: Literal["auto", "openssh", "paramiko"] = "auto"
    # How long (s) an OpenSSH connection to a device stays open, idle, after the operation
    # that opened it (ControlPersist, as ansible-core's 60 s; 90 here, longer than the 60 s
    # telemetry poll), so the next command to that device skips the TCP connect, key exchange
    # and login (transport.sshpersist); 0: each operation has its own, closed with it.
    ssh_persist_s: int = Field(default=90, ge=0, le=86_400)
    # What one device may send per command, in MiB: the longest line and stdout + stderr in
    # all (orchestrator.transport.base.OutputLimits); None keeps the defaults defined there.
    max_line_mb: float | None = Field(default=None, gt=0)
    max_output_mb: float | None = Field(default=None, gt=0)

    # Alerts (orchestrator.fleet.alerts, delivered by orchestrator.notify.webhooks; README
    # "Alerts"): the webhook of every event kind, a kind's own URL overriding it ("" or "off"
    # turns that kind off). URLs are not validated here: an error naming a bad value would print
    # it, and a URL may carry a token; delivery refuses one that is not http(s) without
    # repeating it.
    webhook_url: str | None = None
    webhook_url_regression: str | None = None
    webhook_url_device_offline: str | None = None
    webhook_url_device_throttled: str | None = None
    webhook_url_job_failed: str | None = None
    # The HMAC-SHA256 key of the X-EdgeFleet-Signature header: read from here only, never
    # stored in the DB, never printed (SecretStr shows as '**********').
    webhook_secret: SecretStr | None = None
    webhook_timeout_s: float = Field(default=5.0, gt=0)  # per socket operation of a POST
    webhook_attempts: int = Field(default=5, ge=1)  # a delivery's tries in all
    webhook_backoff_s: float = Field(default=2.0, ge=0)  # the first retry's delay; doubles
    # How long a CLI command waits at exit for alerts still being delivered; the rest stay
    # pending for `edgefleet serve` to deliver.
    webhook_exit_wait_s: float = Field(default=5.0, ge=0)
    alert_offline_minutes: float = Field(default=10.0, ge=0)
    # The same throttle condition on the same device alerts at most once in this window.
    alert_throttle_repeat_minutes: float = Field(default=60.0, ge=0)

    # Shared state across workers (README "Shared state across workers"). A worker whose blob
    # store lacks a blob fetches it from the control plane (GET /api/blobs/{sha256}, with an
    # operator token) or, when a bucket is set, from S3; either is hash-verified into
    # ``blob_dir`` (orchestrator.artifacts.blobfetch). The token is read from here only: never
    # stored, never printed. S3 credentials come from boto3's own chain (AWS_ACCESS_KEY_ID /
    # AWS_SECRET_ACCESS_KEY, ~/.aws, an instance role), never from EdgeFleet's settings.
    control_plane_url: str | None = None
    control_plane_token: SecretStr | None = None
    blob_fetch_timeout_s: float = Field(default=60.0, gt=0)  # per socket operation
    s3_bucket: str | None = None
    s3_prefix: str = "blobs/"
    s3_endpoint_url: str | None = None  # an S3-compatible store (MinIO, Ceph, moto_server)
    s3_region: str | None = None
    # The private key this worker logs in to devices with, replacing the inventory's
    # ansible_ssh_private_key_file (a path on whichever host loaded the inventory). Per worker,
    # never in the DB (orchestrator.transport.factory.worker_key).
    ssh_key_file: Path | None = None

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
