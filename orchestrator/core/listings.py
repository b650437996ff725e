"""The JSON shapes of devices, bundles, runs and datasets, and the fast way to list them.

``device_public``, ``bundle_public``, ``run_row_public`` and ``dataset_public`` are what the CLI
and the API print for one row; they read attributes only, so they take ORM rows and the rows
read here alike. ``devices``, ``bundles``, ``runs`` and ``datasets`` list the DB's rows with the
standard library's sqlite3 when the DB is a SQLite file at the newest migration
(``dbfile.open_current``), and return None otherwise (the caller takes the ORM path, which also
creates and migrates). Why a second way to read: the list commands must start at once (issue
12: <= 0.4 s of CPU), and importing SQLAlchemy, SQLModel and pydantic alone costs more than that
here. Column values are converted
by their declared SQL type as the ORM's types do (JSON, BOOLEAN, DATETIME stored as naive
UTC, read by ``utc.parse_utc``: the rule ``models.UTCDateTime`` reads it by);
tests/unit/core/test_listings.py compares both ways on one DB.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar

from orchestrator.core.dbfile import open_current
from orchestrator.core.errors import NotFoundError
from orchestrator.core.numbers import finite
from orchestrator.core.patterns import match
from orchestrator.core.utc import parse_utc

if TYPE_CHECKING:
    from orchestrator.core.models import Bundle, Dataset, Device, Run

T = TypeVar("T")


def device_public(device: Device | SimpleNamespace) -> dict[str, Any]:
    """The JSON shape for one device: no key paths, no environment values. What the device
    reported is typed here again: a row stored before its answers were checked
    (fleet.answers) may hold anything the device sent, and one such row must not fail a
    page for every device."""
    facts = _object(device.facts)
    sensors = _object(facts.get("sensors"))
    hex_word = sensors.get("throttled_hex")
    return {
        "name": device.name,
        "address": device.address,
        "port": device.port,
        "connection": device.connection,
        "groups": device.groups,
        "labels": device.labels,
        "simulated": device.simulated,
        "agent_version": device.agent_version,
        "active_bundle": device.active_bundle,
        "active_digest": device.active_digest,
        "last_seen": device.last_seen.isoformat() if device.last_seen else None,
        "pi_model": facts.get("pi_model"),
        "arch": facts.get("arch"),
        "cores": facts.get("cores"),
        "ram_mb": facts.get("ram_mb"),
        "onnxruntime": _object(facts.get("onnxruntime")).get("version"),
        "temp_c": finite(sensors.get("temp_c")),
        "throttled_hex": hex_word if isinstance(hex_word, str) else None,
        "throttle_flags": sensors.get("throttle_flags")
        if isinstance(sensors.get("throttle_flags"), dict) else None,
        "source": device.source,
    }


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def manifest_of(bundle: Bundle | SimpleNamespace) -> dict[str, Any]:
    return json.loads(bundle.manifest_json)


def bundle_public(bundle: Bundle | SimpleNamespace) -> dict[str, Any]:
    """The JSON shape the CLI and API print for one bundle."""
    manifest = manifest_of(bundle)
    return {
        "name": bundle.name,
        "version": bundle.version,
        "digest": bundle.digest,
        "size_bytes": bundle.size_bytes,
        "precision": bundle.precision,
        "created_at": bundle.created_at.isoformat(),
        "min_onnxruntime": manifest.get("min_onnxruntime"),
        "model": manifest.get("model"),
        "files": manifest.get("files"),
        "source": manifest.get("source"),
        # Issue 5 keys (docs/pipeline.md); None when the bundle has none.
        **{key: manifest.get(key) for key in (
            "labels", "preprocessing", "golden", "parent", "quantization", "streaming")},
        # Issue 13: input sizes (given or assumed, and why) and constants bench defaults to.
        **{key: manifest.get(key) for key in (
            "input_shapes", "shape_defaults", "input_constants")},
        # Issue 15: who signed it (None: unsigned); the signature itself is not shown.
        "signed": _signed(bundle),
    }


def push_signature(bundle: Bundle | SimpleNamespace) -> dict[str, str] | None:
    """The ``signature`` of an agent plan/activate request (agent.signatures.parse_signature):
    the same for an ORM row and a row read here, so a push started before the ORM loads
    (``fleet.early``) carries it too."""
    if not getattr(bundle, "signature", None) or not getattr(bundle, "signed_by", None):
        return None
    return {"key": bundle.signed_by, "sshsig": bundle.signature}  # type: ignore[dict-item]


def _signed(bundle: Bundle | SimpleNamespace) -> dict[str, Any] | None:
    by = getattr(bundle, "signed_by", None)
    if not by or not getattr(bundle, "signature", None):
        return None
    at = getattr(bundle, "signed_at", None)
    return {"by": by, "fingerprint": getattr(bundle, "signed_fingerprint", None),
            "at": at.isoformat() if at is not None else None}


NO_JOB_REASON = ("it stopped before it finished (no job records why); results stored before "
                 "that are kept")


def interrupted_reason(state: str, job: Any) -> str | None:
    """Why a run in ``state`` stopped, from the job that made it (a row with ``id``, ``state``
    and ``error``, or None): who cancelled it, or which process died. None unless
    interrupted."""
    if state != "interrupted":
        return None
    if job is None:
        return NO_JOB_REASON
    if job.error and job.state in ("cancelled", "interrupted", "failed"):
        return f"job {job.id}: {job.error}"
    return f"job {job.id} ended {job.state} before the run finished"


def run_row_public(run: Run | SimpleNamespace, state_reason: str | None = None
                   ) -> dict[str, Any]:
    """The JSON shape of a run without its results (``runs.run_public`` adds them);
    ``state_reason``: ``interrupted_reason`` of an interrupted run."""
    return {"id": run.id, "kind": run.kind, "state": run.state, "state_reason": state_reason,
            "job_id": run.job_id, "bundle": {"name": run.bundle_name, "version": run.bundle_version,
                       "digest": run.bundle_digest},
            "targets": run.targets, "params": run.params, "created_by": run.created_by,
            "created_at": run.created_at.isoformat(),
            "finished_at": run.finished_at.isoformat() if run.finished_at else None}


def dataset_public(dataset: Dataset | SimpleNamespace, samples: bool = False) -> dict[str, Any]:
    """The JSON shape the CLI prints for one dataset (``samples``: every sample too)."""
    manifest = json.loads(dataset.manifest_json)
    counts: dict[str, int] = {}
    for sample in manifest.get("samples", []):
        counts[sample["label"]] = counts.get(sample["label"], 0) + 1
    out = {"name": dataset.name, "version": dataset.version, "digest": dataset.digest,
           "format": dataset.format, "sampling_rate": dataset.sampling_rate,
           "samples": dataset.samples, "labels": dataset.labels,
           "per_label": {label: counts.get(label, 0) for label in dataset.labels},
           "size_bytes": dataset.size_bytes, "created_at": dataset.created_at.isoformat(),
           "source": manifest.get("source"), "for": manifest.get("for"),
           "label_ids": bool(manifest.get("label_ids")),
           "files": len(manifest.get("files", []))}
    if samples:
        out["sample_list"] = manifest.get("samples", [])
    return out


def select_by_pattern(devices: Sequence[T], pattern: str,
                      name_groups: Callable[[T], tuple[str, list[str]]]) -> list[T]:
    """The devices a target pattern selects, in pattern order (``devices.select_devices``)."""
    if not devices:
        raise NotFoundError("no devices yet: run `edgefleet inventory sync FILE` first")
    names = match(pattern, [name_groups(d) for d in devices])
    by_name = {name_groups(d)[0]: d for d in devices}
    return [by_name[name] for name in names]


_CONVERT: dict[str, Callable[[Any], Any]] = {"JSON": json.loads, "BOOLEAN": bool,
                                             "DATETIME": parse_utc}


def _rows(conn: sqlite3.Connection, table: str, order: str) -> list[SimpleNamespace]:
    """Every row of ``table`` (a name of ours, never user input), values converted by the
    column's declared type as the ORM's column types convert them."""
    types = {row[1]: str(row[2]).upper() for row in conn.execute(f"PRAGMA table_info({table})")}
    cursor = conn.execute(f"SELECT * FROM {table} ORDER BY {order}")  # noqa: S608
    names = [d[0] for d in cursor.description]
    convert = [_CONVERT.get(types.get(name, "")) for name in names]
    return [SimpleNamespace(**{name: value if fn is None or value is None else fn(value)
                               for name, fn, value in zip(names, convert, row, strict=True)})
            for row in cursor]


def devices(pattern: str) -> list[dict[str, Any]] | None:
    """``device_public`` of the devices ``pattern`` selects; None: take the ORM path."""
    conn = open_current()
    if conn is None:
        return None
    try:
        rows = _rows(conn, "device", "name")
    finally:
        conn.close()
    return [device_public(d) for d in select_by_pattern(rows, pattern,
                                                        lambda d: (d.name, d.groups))]


def bundles() -> list[dict[str, Any]] | None:
    """``bundle_public`` of every bundle, by name then age; None: take the ORM path."""
    conn = open_current()
    if conn is None:
        return None
    try:
        rows = _rows(conn, "bundle", "name, id")
    finally:
        conn.close()
    return [bundle_public(b) for b in rows]


def runs(limit: int = 50) -> list[dict[str, Any]] | None:
    """``run_row_public`` of the newest ``limit`` runs; None: take the ORM path."""
    rows = _read("run", f"id DESC LIMIT {int(limit)}")
    if rows is None:
        return None
    stopped = {r.job_id for r in rows if r.state == "interrupted" and r.job_id}
    jobs = {j.id: j for j in (_read("job", "id") or []) if j.id in stopped} if stopped else {}
    return [run_row_public(r, interrupted_reason(r.state, jobs.get(r.job_id))) for r in rows]


def datasets() -> list[dict[str, Any]] | None:
    """``dataset_public`` of every dataset, by name then age; None: take the ORM path."""
    rows = _read("dataset", "name, id")
    return None if rows is None else [dataset_public(d) for d in rows]


def push_rows(pattern: str) -> tuple[list[SimpleNamespace], list[SimpleNamespace],
                                      list[SimpleNamespace]] | None:
    """(the devices ``pattern`` selects, every bundle, every device lease) as rows, read
    through one connection: what a CLI push needs to start before the ORM is imported
    (``fleet.early``); None: take the ORM path."""
    conn = open_current()
    if conn is None:
        return None
    try:
        devices = _rows(conn, "device", "name")
        bundles = _rows(conn, "bundle", "name, id")
        leases = _rows(conn, "devicelease", "device_name")
    finally:
        conn.close()
    return (select_by_pattern(devices, pattern, lambda d: (d.name, d.groups)), bundles, leases)


def host_key_rows(entry: str | None) -> list[SimpleNamespace] | None:
    """The ``hostkey`` rows (of ``entry`` only, when given), oldest first, for a push started
    before the ORM loads (``transport.hostkeys.db_rows``); None: take the ORM path."""
    conn = open_current()
    if conn is None:
        return None
    try:
        if entry is None:
            return _rows(conn, "hostkey", "id")
        cursor = conn.execute("SELECT entry, key_type, key_base64 FROM hostkey WHERE entry = ? "
                              "ORDER BY id", (entry,))
        return [SimpleNamespace(entry=e, key_type=t, key_base64=b) for e, t, b in cursor]
    finally:
        conn.close()


def _read(table: str, order: str) -> list[SimpleNamespace] | None:
    conn = open_current()
    if conn is None:
        return None
    try:
        return _rows(conn, table, order)
    finally:
        conn.close()
