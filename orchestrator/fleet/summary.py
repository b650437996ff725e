"""The Fleet page's headline counts, over the whole fleet (not the page shown): how many devices
are online, throttled now, and running the newest version of their bundle.

Read as columns (the throttle word is pulled out of the facts JSON in SQL), so the counts stay
cheap at 1,000+ devices, where loading every row's facts cost the Fleet page most of its time
(bench/fleet_scale.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func
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
    """Counted in SQL, grouped: one row per distinct throttle word and per active bundle
    (a handful at any fleet size), not one per device. At 1,000 devices reading every row
    took a quarter of the Fleet page's time (bench/fleet_scale.py --pages-only)."""
    now = now or datetime.now(UTC)
    total, online = session.exec(select(
        func.count(), func.count(col(Device.last_seen)).filter(
            col(Device.last_seen) >= now - ONLINE_WINDOW))).one()
    throttled_hex = col(Device.facts)["sensors"]["throttled_hex"].as_string()
    throttled = sum(count for hex_bits, count in session.exec(
        select(throttled_hex, func.count()).group_by(throttled_hex)).all()
        if (bits := _bits(hex_bits)) is not None and bits & NOW_BITS)
    newest = newest_versions(session)
    with_bundle = on_newest = 0
    for active, count in session.exec(select(Device.active_bundle, func.count())
                                      .where(col(Device.active_bundle).is_not(None))
                                      .group_by(col(Device.active_bundle))).all():
        with_bundle += count
        name, _, version = active.rpartition("@")
        on_newest += count if newest.get(name) == version else 0
    return FleetSummary(total, online, throttled, with_bundle, on_newest, newest)
