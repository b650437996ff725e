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
    try:
        load: Any = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = [None, None, None]
    return assemble(snapshot(), is_simulated(), read_text("/proc/meminfo") or "", load,
                    os.cpu_count(), disk_free_bytes(root), read_text("/proc/uptime"))


def assemble(sensors: Dict[str, Any], simulated: bool, meminfo: str, load: Any,
             cores: Optional[int], disk_free: Optional[int],
             uptime: Optional[str]) -> Dict[str, Any]:
    """The telemetry answer from what was read: here by the agent, or from a shell poll's dump
    on the control plane (agent.shellpoll), so both give the same shape."""
    return {
        "sensors": sensors,
        "simulated": simulated,
        "load_1m": load[0], "load_5m": load[1], "load_15m": load[2],
        "cores": cores,
        "mem_total_mb": parse_meminfo_mb(meminfo, "MemTotal"),
        "mem_available_mb": parse_meminfo_mb(meminfo, "MemAvailable"),
        "disk_free_bytes": disk_free,
        "uptime_s": parse_uptime_s(uptime),
    }
