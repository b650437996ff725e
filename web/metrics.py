"""/metrics for Prometheus: per-device temperature, throttle bits and online state, the last
benchmark p50 per device/bundle/threads (benchmark runs only: an eval's per-sample inference
time is not a benchmark's p50), and job counts by state.

Collected at scrape time from the DB (a custom collector), so there is no state to keep in sync.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlmodel import col, select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.models import Device, Job, Result, Run
from orchestrator.core.numbers import finite
from orchestrator.measure.trends import BENCH

ONLINE_WINDOW = timedelta(minutes=3)

router = APIRouter()


class FleetCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        temp = GaugeMetricFamily("edgefleet_device_temperature_celsius",
                                 "SoC temperature at the last reading", labels=["device"])
        bits = GaugeMetricFamily("edgefleet_device_throttled_bits",
                                 "vcgencmd get_throttled at the last reading", labels=["device"])
        online = GaugeMetricFamily("edgefleet_device_online",
                                   "1 if the device answered in the last 3 minutes",
                                   labels=["device"])
        p50 = GaugeMetricFamily("edgefleet_benchmark_p50_milliseconds",
                                "Median latency of the last valid benchmark",
                                labels=["device", "bundle", "threads"])
        jobs = GaugeMetricFamily("edgefleet_jobs", "Jobs by state", labels=["state"])
        now = datetime.now(UTC)
        with session_scope(self.settings) as session:
            for device in session.exec(select(Device)).all():
                facts = device.facts if isinstance(device.facts, dict) else {}
                sensors = facts.get("sensors")
                sensors = sensors if isinstance(sensors, dict) else {}
                # finite(): a row stored before answers were checked (fleet.answers) may hold
                # anything a device sent; one bad row must not fail the whole scrape.
                if (celsius := finite(sensors.get("temp_c"))) is not None:
                    temp.add_metric([device.name], celsius)
                if (word := finite(sensors.get("throttled"))) is not None:
                    bits.add_metric([device.name], word)
                seen = device.last_seen
                online.add_metric([device.name], float(
                    seen is not None and now - seen < ONLINE_WINDOW))
            latest = (select(Result.device_name, Run.bundle_name, Run.bundle_version,
                             Result.threads, Result.p50_ms)
                      .join(Run, col(Run.id) == col(Result.run_id))
                      .where(col(Run.kind) == BENCH, col(Result.ok), col(Result.valid))
                      .order_by(col(Result.id)))
            seen_keys: dict[tuple[str, str, str], float] = {}
            for name, bundle, version, threads, value in session.exec(latest).all():
                if finite(value) is not None:  # an older row stored before entries.py
                    seen_keys[(name, f"{bundle}@{version}", str(threads))] = value
            for key, value in seen_keys.items():
                p50.add_metric(list(key), value)
            for state, count in session.exec(select(Job.state, func.count()).group_by(
                    Job.state)).all():
                jobs.add_metric([state], count)
        yield from (temp, bits, online, p50, jobs)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    registry = CollectorRegistry()
    registry.register(FleetCollector(request.app.state.settings))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
