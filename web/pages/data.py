"""Read-only queries the pages need that the services do not offer yet (per-device history;
a device's deployments are ``devices.recent_deployments``, shared with the CLI and the API).

Kept out of the route functions so routes stay "read, shape, render", and kept small: plain
SELECTs over the service-owned tables, newest first, bounded. If the CLI or API ever needs the
same, these belong in orchestrator/ and the pages should call them there.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import defer
from sqlmodel import Session, col, select

from orchestrator.core.models import Result, Run, TelemetrySnapshot
from orchestrator.measure.runs import result_public

TELEMETRY_LIMIT = 500  # a few days of minute polls: enough to see a hot afternoon
HISTORY_LIMIT = 50


def device_telemetry(session: Session, name: str,
                     limit: int = TELEMETRY_LIMIT) -> list[TelemetrySnapshot]:
    """The latest ``limit`` snapshots of one device, oldest first (for a time axis)."""
    rows = session.exec(select(TelemetrySnapshot).where(TelemetrySnapshot.device_name == name)
                        .order_by(col(TelemetrySnapshot.taken_at).desc(),
                                  col(TelemetrySnapshot.id).desc())
                        .limit(limit)).all()
    return list(reversed(rows))


def device_results(session: Session, name: str, limit: int = HISTORY_LIMIT
                   ) -> list[dict[str, Any]]:
    """Benchmark results on one device, newest run first, in ``result_public`` shape (summaries
    only: the raw latencies are not drawn here, so they are not loaded)."""
    pairs = session.exec(select(Result, Run).join(Run, col(Result.run_id) == col(Run.id))
                         .where(Result.device_name == name)
                         .options(defer(Result.latencies), defer(Result.telemetry_samples))
                         .order_by(col(Result.run_id).desc(), col(Result.threads))
                         .limit(limit)).all()
    return [result_public(result, run) for result, run in pairs]
