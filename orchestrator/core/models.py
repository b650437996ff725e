"""SQLModel tables. The schema changes only through alembic migrations in migrations/.

What leaves through the API is declared in web/schemas.py (response models), built by the
services' ``*_public`` functions, so no key path or environment value leaves by accident.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, LargeBinary, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.types import DateTime, TypeDecorator
from sqlmodel import Field, SQLModel

from orchestrator.core.utc import as_utc, utcnow


class UTCDateTime(TypeDecorator[datetime]):
    """The type of every datetime column (orchestrator.core.utc says why): stored as UTC, read back
    aware in UTC, a naive datetime refused on write (ValueError) rather than guessed at.

    Its impl is the ``DateTime(timezone=True)`` the migrations create, so the schema is
    unchanged and alembic's type comparison (tests/unit/core/test_db.py) sees no difference.
    Declared on each column, not left to SQLModel's default for ``datetime`` fields, which
    differs between SQLModel versions (older ones give a naive ``DateTime``).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} for a UTC column: make it "
                             "aware (orchestrator.core.utc.as_utc reads a naive input as UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


class DeviceBase(SQLModel):
    name: str = Field(index=True, unique=True)
    address: str
    port: int = 22
    connection: str = "ssh"
    groups: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    labels: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    simulated: bool = False
    agent_version: str | None = None
    active_bundle: str | None = None  # "name@version"
    active_digest: str | None = None
    last_seen: datetime | None = Field(sa_type=UTCDateTime, default=None)


class Device(DeviceBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    user: str | None = None
    key_file: str | None = None
    root: str = "~/.edgefleet"
    python: str = "python3"
    agent_python: str | None = None  # interpreter proven to run the agent (venv after --with-deps)
    env: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    facts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    source: str | None = None  # inventory file:line
    created_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    updated_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)


class BundleBase(SQLModel):
    name: str = Field(index=True)
    version: str
    digest: str = Field(index=True, unique=True)
    size_bytes: int = Field(sa_type=BigInteger)  # 64-bit: migration 0009
    precision: str | None = None
    created_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)


class Bundle(BundleBase, table=True):
    __table_args__ = (UniqueConstraint("name", "version", name="uq_bundle_name_version"),)
    id: int | None = Field(default=None, primary_key=True)
    manifest_json: str  # canonical manifest bytes (utf-8); sha256 of these is ``digest``
    # Issue 15 (migration 0011): the armoured SSHSIG signature of agent.protocol.signed_message
    # (name, version, digest), the key that made it and its fingerprint; None: unsigned. Only
    # public values: a signature is checked on the device against its own pinned keys.
    signature: str | None = None
    signed_by: str | None = None
    signed_fingerprint: str | None = None
    signed_at: datetime | None = Field(sa_type=UTCDateTime, default=None)


class DatasetBase(SQLModel):
    """An evaluation dataset: labelled samples (audio at a model's rate, or input tensors)
    whose canonical manifest's sha256 is its identity, like a bundle's."""

    name: str = Field(index=True)
    version: str
    digest: str = Field(index=True, unique=True)
    format: str  # audio | tensors
    sampling_rate: int | None = None
    samples: int
    labels: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    size_bytes: int = Field(sa_type=BigInteger)  # 64-bit: migration 0009
    created_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)


class Dataset(DatasetBase, table=True):
    __table_args__ = (UniqueConstraint("name", "version", name="uq_dataset_name_version"),)
    id: int | None = Field(default=None, primary_key=True)
    manifest_json: str  # canonical manifest bytes (utf-8); sha256 of these is ``digest``


class DeploymentBase(SQLModel):
    device_name: str = Field(index=True)
    operation: str = "push"  # push | rollback | recover (a change the device's journal reverted)
    bundle_name: str | None = None
    bundle_version: str | None = None
    bundle_digest: str | None = None
    # pending | active | unchanged | failed | interrupted; recover rows: reverted | repaired
    state: str = "pending"
    bytes_sent: int = Field(default=0, sa_type=BigInteger)
    duration_s: float | None = None
    error: str | None = None
    started_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    finished_at: datetime | None = Field(sa_type=UTCDateTime, default=None)
    job_id: int | None = Field(default=None, index=True)  # finalized with it after a crash


class Deployment(DeploymentBase, table=True):
    id: int | None = Field(default=None, primary_key=True)


class Run(SQLModel, table=True):
    """One benchmark (later: evaluation) of one bundle over a set of devices."""

    id: int | None = Field(default=None, primary_key=True)
    kind: str = "bench"
    bundle_name: str = Field(index=True)
    bundle_version: str
    bundle_digest: str = Field(index=True)
    targets: str
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_by: str
    state: str = "running"  # running | succeeded | partial | failed | cancelled | interrupted
    created_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    finished_at: datetime | None = Field(sa_type=UTCDateTime, default=None)
    job_id: int | None = Field(default=None, index=True)  # finalized with it after a crash


class Result(SQLModel, table=True):
    """One device x thread count of a run. Aggregates are columns (dashboards query them in
    SQL); every raw latency is kept, compressed, in ``latencies``."""

    # Covering the dashboards' aggregates (trends, version heatmap, thread-count filter): the
    # rows themselves carry the raw blobs, ~2 kB each, so reading columns from them read the
    # blobs' pages too (migration 0009).
    # cpu_p50_ms joined it in 0014: change-point detection reads it.
    __table_args__ = (Index("ix_result_summary", "run_id", "device_name", "precision",
                            "threads", "ok", "valid", "p50_ms", "cpu_p50_ms"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    device_name: str = Field(index=True)
    threads: int | None = Field(default=None, index=True)  # DISTINCT for the pages' filters
    ok: bool = False
    error: str | None = None
    simulated: bool = False
    precision: str | None = None
    n: int | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    # Median CPU time of a timed run (the process's, all threads; agent/bench.py says why):
    # steadier than wall time on a shared machine. None from agents before it and for evals.
    cpu_p50_ms: float | None = None
    load_ms: float | None = None
    first_inference_ms: float | None = None
    peak_rss_mb: float | None = None
    steady_rss_mb: float | None = None
    model_size_mb: float | None = None
    telemetry_status: str | None = None  # clean | throttled | unknown
    temp_c_min: float | None = None
    temp_c_max: float | None = None
    freq_mhz_min: float | None = None
    freq_mhz_max: float | None = None
    throttled_bits: int | None = None
    throttle_flags: dict[str, Any] = Field(default_factory=dict,
                                           sa_column=Column(JSON, nullable=False))
    valid: bool | None = None
    flags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    reasons: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    latencies: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    telemetry_samples: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    created_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)


class DeviceLease(SQLModel, table=True):
    """At most one exclusive operation (push, bench) per device at a time, across processes."""

    device_name: str = Field(primary_key=True)
    holder: str
    operation: str
    acquired_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    # The job whose work holds the device (None: not run as a job), so that a job waiting for
    # it can say "waiting for pi3: bench #12".
    job_id: int | None = None


class TelemetrySnapshot(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    device_name: str = Field(index=True)
    taken_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow, index=True)
    temp_c: float | None = None
    freq_mhz: float | None = None
    throttled_bits: int | None = None
    throttle_flags: dict[str, Any] = Field(default_factory=dict,
                                           sa_column=Column(JSON, nullable=False))
    load_1m: float | None = None
    mem_available_mb: float | None = None
    disk_free_bytes: int | None = Field(default=None, sa_type=BigInteger)


class Job(SQLModel, table=True):
    """A push, benchmark or telemetry poll, queued or running, from the server or the CLI.

    Persisted so that the UI shows CLI-started work and a restart finds what was running
    (marked ``interrupted``, never silently re-run)."""

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(index=True)  # push | bench | telemetry
    state: str = Field(default="queued", index=True)
    # queued | running | succeeded | failed | cancelled | interrupted
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    targets: str = ""
    origin: str = "server"  # server | cli | schedule
    created_by: str = ""
    progress: dict[str, Any] = Field(default_factory=dict,
                                     sa_column=Column(JSON, nullable=False))
    result: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    error: str | None = None
    run_id: int | None = None
    schedule_id: int | None = None
    cancel_requested: bool = False
    worker: str | None = None  # host:pid of the process running it
    created_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow, index=True)
    started_at: datetime | None = Field(sa_type=UTCDateTime, default=None)
    finished_at: datetime | None = Field(sa_type=UTCDateTime, default=None)
    # Renewed by the process running the job (orchestrator.jobs.liveness): a running job whose
    # heartbeat is older than EDGEFLEET_JOB_TTL_S was left by a dead process, on any host.
    heartbeat_at: datetime | None = Field(sa_type=UTCDateTime, default=None)
    # When that heartbeat lapses: its time + the beating process's own TTL (0015), which the
    # sweep compares, not the sweeper's TTL. None: a process older than 0015.
    heartbeat_expires_at: datetime | None = Field(sa_type=UTCDateTime, default=None)


class Schedule(SQLModel, table=True):
    """A job to create later: once at ``run_at``, or on a cron expression."""

    id: int | None = Field(default=None, primary_key=True)
    kind: str
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    targets: str = ""
    cron: str | None = None
    run_at: datetime | None = Field(sa_type=UTCDateTime, default=None)
    next_run_at: datetime | None = Field(sa_type=UTCDateTime, default=None, index=True)
    enabled: bool = True
    created_by: str = ""
    created_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    last_job_id: int | None = None


class ApiToken(SQLModel, table=True):
    """A bearer token. Only its hash is stored; the secret is shown once, at creation."""

    id: int | None = Field(default=None, primary_key=True)
    name: str
    role: str  # viewer | operator | admin
    token_hash: str = Field(index=True, unique=True)
    prefix: str  # first characters, to recognise a token in lists
    created_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    last_used_at: datetime | None = Field(sa_type=UTCDateTime, default=None)
    revoked: bool = False


class BrowserSession(SQLModel, table=True):
    """A logged-in browser (``POST /login``). The cookie carries a random session id; only its
    SHA-256 is stored, so the table is no key to anyone's session. Logout deletes the row, so
    a copied cookie dies with it."""

    id_hash: str = Field(primary_key=True)
    token_id: int = Field(index=True)
    created_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    expires_at: datetime = Field(sa_type=UTCDateTime)


class AuditEvent(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow, index=True)
    actor: str  # token name, or the OS user for the CLI
    action: str  # push | bench | inventory.sync | token.create | ...
    target: str = ""
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class SigningKey(SQLModel, table=True):
    """A bundle-signing key (orchestrator.artifacts.signing). Only its public half: the
    private key is a 0600 OpenSSH key file under ``EDGEFLEET_HOME/keys``, never in the DB."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    public_key: str  # "ssh-ed25519 BASE64", as pinned on devices
    fingerprint: str  # SHA256:..., as ssh-keygen -l prints it
    encrypted: bool = False  # the key file is passphrase-protected
    created_by: str = ""
    created_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)


class Alert(SQLModel, table=True):
    """An event worth telling someone about (orchestrator.fleet.alerts) and its webhook delivery
    (orchestrator.notify.webhooks). ``dedupe_key`` is unique: the same outage, transition,
    failed job or change point is recorded, and sent, once, whichever process notices it
    first. Neither the URL (it may carry a token) nor the signing secret is stored."""

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(index=True)  # regression | device_offline | device_throttled | job_failed
    subject: str = ""  # the device, "job:<id>", or the series of a change point
    dedupe_key: str = Field(index=True, unique=True)
    summary: str
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # pending | delivered | failed | off (no webhook configured for the kind when it happened)
    state: str = Field(default="pending", index=True)
    attempts: int = 0
    last_error: str | None = None
    created_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow, index=True)
    next_attempt_at: datetime | None = Field(sa_type=UTCDateTime, default=None)
    # The process delivering it (webhooks.CLAIM), until when: another process takes over a
    # pending alert only once that has passed (its deliverer died or exited).
    claimed_by: str | None = None
    claimed_until: datetime | None = Field(sa_type=UTCDateTime, default=None)
    delivered_at: datetime | None = Field(sa_type=UTCDateTime, default=None)


class HostKey(SQLModel, table=True):
    """A trusted SSH host key (``edgefleet devices trust``), shared by every process on the
    database: a job claimed by a worker on another host checks the device against the same
    keys (orchestrator.transport.hostkeys). ``entry`` is the known_hosts name (``addr`` or
    ``[addr]:port``); one key per entry and type, as in OpenSSH. A public key, no secret."""

    __table_args__ = (UniqueConstraint("entry", "key_type", name="uq_host_key_entry_type"),)

    id: int | None = Field(default=None, primary_key=True)
    entry: str = Field(index=True)
    key_type: str
    key_base64: str
    fingerprint: str
    added_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
