"""What a device's telemetry and facts answers may contain, checked before anything stores them.

Why: the answer is the device's JSON (the agent's ``telemetry``, or the shell poll's dump the
control plane parses), and a device is untrusted. Stored as is, a ``"temp_c": "95"`` reached
every reader that compares or exports numbers (the Fleet page, /metrics, sorting by
temperature) and failed each with a 500, every minute the poll re-stored it. Here every field
the control plane reads gets its type or becomes None (unknown); the throttle flags and the hex
form are derived again from the bits (``agent.sensors.decode_throttled``), not believed; texts
are clipped; keys nobody reads are dropped.
"""

from __future__ import annotations

from typing import Any

from agent.sensors import decode_throttled
from orchestrator.core.numbers import count, finite

ANSWER_NUMBERS = ("load_1m", "load_5m", "load_15m", "uptime_s")
ANSWER_COUNTS = ("cores", "mem_total_mb", "mem_available_mb", "disk_free_bytes")
SENSOR_NUMBERS = ("temp_c", "freq_mhz", "freq_mhz_min", "freq_mhz_max", "power_w")
# Passed on for record_device_report, which checks their shapes itself (inventory.devices).
PASSED_ON = ("active", "recovered", "state_error", "current_error")
TEXT_LIMIT = 500


def text(value: Any, limit: int = TEXT_LIMIT) -> str | None:
    """A string clipped to ``limit`` characters; anything else None."""
    return value[:limit] if isinstance(value, str) else None


def texts(value: Any, most: int = 32) -> list[str]:
    """The strings of a list, at most ``most`` of them, each clipped; anything else []."""
    return [t for t in (text(v) for v in value[:most]) if t is not None] \
        if isinstance(value, list) else []


def checked_sensors(sensors: Any) -> dict[str, Any]:
    """A ``sensors`` object with its numbers checked and its throttle fields derived."""
    sensors = sensors if isinstance(sensors, dict) else {}
    out: dict[str, Any] = {key: finite(sensors.get(key)) for key in SENSOR_NUMBERS
                           if key in sensors}
    bits = count(sensors.get("throttled"), 2**32 - 1)  # get_throttled is a 32-bit word
    out.update(throttled=bits, throttled_hex=hex(bits) if bits is not None else None,
               throttle_flags=decode_throttled(bits) if bits is not None else None)
    sources = sensors.get("sources")
    if isinstance(sources, dict):
        out["sources"] = {str(k)[:40]: text(v) for k, v in list(sources.items())[:8]}
    return out


def checked_answer(data: dict[str, Any]) -> dict[str, Any]:
    """The telemetry answer with every field the control plane reads of the right type."""
    out: dict[str, Any] = {"sensors": checked_sensors(data.get("sensors")),
                           "simulated": data.get("simulated") is True}
    out.update({key: finite(data.get(key)) for key in ANSWER_NUMBERS})
    out.update({key: count(data.get(key)) for key in ANSWER_COUNTS})
    out.update({key: data[key] for key in PASSED_ON if key in data})
    for key in ("state_error", "current_error"):
        if key in out:
            out[key] = text(out[key]) if out[key] is not None else None
    return out


FACT_TEXTS = ("agent_version", "root", "pi_model", "arch", "os", "kernel", "hostname", "numpy")
FACT_COUNTS = ("protocol", "cores", "ram_mb", "disk_free_bytes")
FACT_OBJECTS = ("python", "onnxruntime", "import_errors")  # of short texts (and lists of them)


def flat(value: Any) -> dict[str, Any] | None:
    """An object of texts, numbers, booleans, None and lists of texts; else None."""
    if not isinstance(value, dict):
        return None
    out: dict[str, Any] = {}
    for key, item in list(value.items())[:32]:
        if isinstance(item, list):
            out[str(key)[:80]] = [text(i) for i in item[:32] if isinstance(i, str)]
        elif isinstance(item, bool) or item is None:
            out[str(key)[:80]] = item
        else:
            out[str(key)[:80]] = finite(item) if not isinstance(item, str) else text(item)
    return out


def checked_facts(facts: dict[str, Any]) -> dict[str, Any]:
    """The ``facts`` answer with every field a reader uses of the right type (pages, /api,
    the install's checks, sorting by temperature in SQL), its sensors as a poll's."""
    out: dict[str, Any] = {key: text(facts.get(key)) for key in FACT_TEXTS if key in facts}
    out.update({key: count(facts.get(key)) for key in FACT_COUNTS if key in facts})
    out.update({key: flat(facts.get(key)) for key in FACT_OBJECTS if key in facts})
    out["simulated"] = facts.get("simulated") is True
    if "pinned_keys" in facts:
        keys = facts.get("pinned_keys")
        out["pinned_keys"] = [text(k) for k in keys[:64] if isinstance(k, str)] \
            if isinstance(keys, list) else None
    if "sensors" in facts:
        out["sensors"] = checked_sensors(facts.get("sensors"))
    out.update({key: facts[key] for key in PASSED_ON if key in facts})
    return out


SMOKE_NUMBERS = ("max_abs", "max_rel", "ms", "load_ms", "run_ms", "heap_reserved_mb")


def checked_smoke(value: Any) -> dict[str, Any]:
    """A smoke-test report (an activation's ``smoke``, or a ``smoke_failed`` error's detail)
    with its numbers finite, its texts clipped, at most 64 outputs: it is printed in the push
    table and kept in the job's result. ``rolled_back_to`` is passed on for the caller to
    check as a history entry (``inventory.devices.history_ref``)."""
    value = value if isinstance(value, dict) else {}
    outputs = value.get("outputs")
    out: dict[str, Any] = {"ok": value.get("ok") is True, "load_only": value.get("load_only")
                           is True, "reason": text(value.get("reason")),
                           "error": text(value.get("error")),
                           "onnxruntime": text(value.get("onnxruntime")),
                           "outputs": [flat(o) for o in outputs[:64] if isinstance(o, dict)]
                           if isinstance(outputs, list) else []}
    out.update({key: finite(value.get(key)) for key in SMOKE_NUMBERS})
    out["rolled_back_to"] = value.get("rolled_back_to")
    return out
