"""``telemetry``: a one-shot health snapshot, cheap enough to poll every minute on every device.

Why not ``facts``: facts imports numpy and onnxruntime (seconds on a Pi 3) and reads things that
do not change; this reads only /proc, sysfs and ``vcgencmd``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from agent.facts import parse_meminfo_mb, read_text
from agent.fsutil import disk_free_bytes
from agent.sensors import is_simulated, snapshot


def parse_uptime_s(text: Optional[str]) -> Optional[float]:
    try:
        return float(text.split()[0]) if text else None
    except (IndexError, ValueError):
        return None


def telemetry(root: str) -> Dict[str, Any]:
    meminfo = read_text("/proc/meminfo") or ""
    try:
        load: Any = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = [None, None, None]
    return {
        "sensors": snapshot(),
        "simulated": is_simulated(),
        "load_1m": load[0], "load_5m": load[1], "load_15m": load[2],
        "cores": os.cpu_count(),
        "mem_total_mb": parse_meminfo_mb(meminfo, "MemTotal"),
        "mem_available_mb": parse_meminfo_mb(meminfo, "MemAvailable"),
        "disk_free_bytes": disk_free_bytes(root),
        "uptime_s": parse_uptime_s(read_text("/proc/uptime")),
    }
