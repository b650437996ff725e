"""The Fleet page's headline counts, over the whole fleet (not the page shown): how many devices
are online, throttled now, and running the newest version of their bundle.

Read as columns (the throttle word is pulled out of the facts JSON in SQL), so the counts stay
cheap at 1,000+ devices, where loading every row's facts cost the Fleet page most of its time
(bench/fleet_scale.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from orchestrator.core.models import Bundle, Device

ONLINE_WINDOW = timedelta(minutes=3)  # as the pages and /metrics say "online"
NOW_BITS = 0xF  # get_throttled bits 0-3: under-voltage, capped, throttled, soft limit, now


@dataclass
class FleetSummary:
    total: int
    online: int
    throttled: int  # a "now" bit set in the last reading
    with_bundle: int
    on_newest: int  # active bundle is the newest version built of that bundle name
    newest: dict[str, str]  # bundle name -> its newest version

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def newest_versions(session: Session) -> dict[str, str]:
    """Each bundle name's newest version: the one built last (versions are free text)."""
    rows = session.exec(select(Bundle.name, Bundle.version).order_by(col(Bundle.id))).all()
    return {name: version for name, version in rows}


def _bits(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    try:
        return int(str(value), 16)
    except (TypeError, ValueError):
        return None


def fleet_summary(session: Session, now: datetime | None = None) -> FleetSummary:
    now = now or datetime.now(UTC)
    throttled_hex = col(Device.facts)["sensors"]["throttled_hex"].as_string()
    rows = session.exec(select(Device.last_seen, Device.active_bundle, throttled_hex)).all()
    newest = newest_versions(session)
    online = throttled = with_bundle = on_newest = 0
    for last_seen, active, hex_bits in rows:
        if last_seen is not None and now - last_seen <= ONLINE_WINDOW:
            online += 1
        bits = _bits(hex_bits)
        if bits is not None and bits & NOW_BITS:
            throttled += 1
        if active:
            with_bundle += 1
            name, _, version = active.rpartition("@")
            on_newest += newest.get(name) == version
    return FleetSummary(len(rows), online, throttled, with_bundle, on_newest, newest)
