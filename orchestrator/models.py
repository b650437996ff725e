"""SQLModel tables. The schema changes only through alembic migrations in migrations/.

Models follow the Base / table / Public split so API responses never carry more than they should
(no key paths or environment values leave through ``*Public``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


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
    last_seen: datetime | None = None


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
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class DevicePublic(DeviceBase):
    id: int
    root: str
    facts: dict[str, Any]
    source: str | None


class BundleBase(SQLModel):
    name: str = Field(index=True)
    version: str
    digest: str = Field(index=True, unique=True)
    size_bytes: int
    precision: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class Bundle(BundleBase, table=True):
    __table_args__ = (UniqueConstraint("name", "version", name="uq_bundle_name_version"),)
    id: int | None = Field(default=None, primary_key=True)
    manifest_json: str  # canonical manifest bytes (utf-8); sha256 of these is ``digest``


class BundlePublic(BundleBase):
    id: int
    manifest: dict[str, Any]


class DeploymentBase(SQLModel):
    device_name: str = Field(index=True)
    operation: str = "push"  # push | rollback
    bundle_name: str | None = None
    bundle_version: str | None = None
    bundle_digest: str | None = None
    state: str = "pending"  # pending | transferring | verifying | active | unchanged | failed
    bytes_sent: int = 0
    duration_s: float | None = None
    error: str | None = None
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class Deployment(DeploymentBase, table=True):
    id: int | None = Field(default=None, primary_key=True)


class DeploymentPublic(DeploymentBase):
    id: int
