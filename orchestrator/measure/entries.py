"""What a device's bench and eval result entries may contain, checked before anything stores
them (one entry per thread count: the ``measured`` event's and the result line's).

Why: a device is untrusted, and its entries went into Result rows as sent. A ``"p50": NaN``
in an ok, valid entry made ``/metrics`` answer 500 to every scraper; a ``"threads": "x"``
stored as text made /trends, /compare and the API's run fail for everyone, for good (and on
PostgreSQL lost the result); an ``"energy": "x"`` broke the run and bundle pages; an
``"error": {...}`` failed the insert and took the device's later thread counts and its
failure row with it. Here every field a reader uses gets its type or becomes None, texts and
lists are clipped to what an honest agent can send, and an entry that claims success without
the numbers that make one is a failure that says so. Which thread counts may come back is the
request's to say, not the device's.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from agent.sensors import decode_throttled
from orchestrator.core.numbers import count, finite
from orchestrator.fleet.answers import flat, text, texts

ERROR_LIMIT = 2000
# The agent's own bounds (agent.bench.MAX_TIMED_RUNS; 3,600 s sampled at most at 50 Hz).
MAX_LATENCIES = 1_000_000
MAX_SAMPLES = 200_000
MAX_EVAL_SAMPLES = 1_000_000
STATS = ("mean", "std", "min", "max", "p50", "p90", "p95", "p99")
NUMBERS = ("load_ms", "first_inference_ms", "peak_rss_mb", "steady_rss_mb", "rss_before_load_mb",
           "wall_s", "timed_s")
COUNTS = ("warmup", "runs")
TELEMETRY_NUMBERS = ("interval_s", "temp_c_min", "temp_c_max", "freq_mhz_min", "freq_mhz_max")
STATUSES = ("clean", "throttled", "unknown")


def stats(value: Any) -> dict[str, Any] | None:
    """A latency summary (agent.bench.latency_stats) of finite numbers, or None."""
    if not isinstance(value, dict):
        return None
    out: dict[str, Any] = {"n": count(value.get("n"))}
    out.update({key: finite(value.get(key)) for key in STATS})
    return out


def numbers(value: Any, most: int) -> list[float] | None:
    """A list of finite numbers of at most ``most`` items, or None (anything else in it)."""
    if not isinstance(value, list) or len(value) > most:
        return None
    checked = [finite(v) for v in value]
    return None if None in checked else checked  # type: ignore[return-value]


def sample(value: Any) -> list[Any] | None:
    """One telemetry sample (agent.sampler: time, temperature, frequency, throttle bits,
    power, ...): a short list of finite numbers or None."""
    if not isinstance(value, list) or not value or len(value) > 8:
        return None
    return [finite(v) for v in value]


def telemetry(value: Any, flags: list[str]) -> dict[str, Any]:
    """The run's telemetry summary; the throttle words derived from the bits."""
    value = value if isinstance(value, dict) else {}
    out: dict[str, Any] = {key: finite(value.get(key)) for key in TELEMETRY_NUMBERS}
    status = value.get("status") if value.get("status") in STATUSES else "unknown"
    out["status"] = "throttled" if flags else status
    bits = count(value.get("throttled_bits"), 2**32 - 1)
    out["throttled_bits"] = bits
    flags_in = value.get("throttle_flags")
    if bits is not None and isinstance(flags_in, dict):
        # The run's words (what was throttling at the end, what appeared during it) as lists
        # of the words decode_throttled knows, nothing else.
        known = set(decode_throttled(bits)["now"]) | set(decode_throttled(bits)["since_boot"])
        out["throttle_flags"] = {key: [w for w in texts(flags_in.get(key)) if w in known]
                                 for key in ("now", "new_since_start")}
    else:
        out["throttle_flags"] = None
    raw = value.get("samples")
    kept = [s for s in (sample(v) for v in raw[:MAX_SAMPLES]) if s is not None] \
        if isinstance(raw, list) else []
    out["samples"] = kept or None
    out["energy"] = energy(value.get("energy"))
    return out


def checked_entry(entry: Any, asked: Collection[int]) -> dict[str, Any] | None:
    """The entry with every field a reader uses of the right type; None (dropped, not stored)
    when it is not an object or names a thread count that was not asked for."""
    if not isinstance(entry, dict):
        return None
    threads = count(entry.get("threads"), 4096)
    if threads is None or threads not in asked:
        return None
    flags = texts(entry.get("flags"))
    out: dict[str, Any] = {"threads": threads, "ok": entry.get("ok") is True,
                           "error": text(entry.get("error"), ERROR_LIMIT),
                           "flags": flags, "reasons": texts(entry.get("reasons"))}
    out.update({key: finite(entry.get(key)) for key in NUMBERS})
    out.update({key: count(entry.get(key)) for key in COUNTS})
    out["latency_ms"] = stats(entry.get("latency_ms"))
    out["preprocessing_ms"] = stats(entry.get("preprocessing_ms"))
    cpu = entry.get("cpu_ms")
    cpu_p50 = finite(cpu.get("p50")) if isinstance(cpu, dict) else None
    out["cpu_ms"] = {"p50": cpu_p50} if cpu_p50 is not None else None  # merge_rounds: all or none
    out["telemetry"] = telemetry(entry.get("telemetry"), flags)
    out["energy"] = energy(entry.get("energy"))
    out["output"] = text(entry.get("output"))
    out["round_sizes"] = None  # merge_rounds says where its rounds start; a device never does
    latencies = entry.get("latencies_ms")
    out["latencies_ms"] = numbers(latencies, MAX_LATENCIES) if latencies is not None else None
    samples = entry.get("samples")
    if samples is not None:  # an eval's; evals.score checks each against the dataset
        out["samples"] = samples[:MAX_EVAL_SAMPLES] if isinstance(samples, list) else []
    if out["ok"]:
        why = failed_because(out)
        if why:
            out.update(ok=False, error=why)
    out["valid"] = (entry.get("valid") is True and not flags) if out["ok"] else None
    return out


def failed_because(out: dict[str, Any]) -> str | None:
    """Why an entry that says ok is not one: the numbers every reader of a success uses."""
    if out["latency_ms"] is None or out["latency_ms"]["p50"] is None:
        return "the device's result has no latency p50 (a finite number)"
    if not out["latencies_ms"]:
        return (f"the device's latencies are not a list of 1 to {MAX_LATENCIES:,} finite "
                "numbers")
    return None


def energy(value: Any) -> dict[str, Any] | None:
    """An energy summary (agent.sampler.energy_summary); "available" only with a finite mean
    power, which every reader of an available one multiplies."""
    if not isinstance(value, dict):
        return None
    out = {"available": value.get("available") is True, "mean_w": finite(value.get("mean_w")),
           "mj_per_inference": finite(value.get("mj_per_inference")),
           "samples": count(value.get("samples")), "source": text(value.get("source")),
           "reason": text(value.get("reason"))}
    if out["available"] and out["mean_w"] is None:
        return {"available": False, "reason": "the device's energy figures are not numbers"}
    return out


def input_spec(value: Any) -> dict[str, Any] | None:
    """One entry of a result's ``inputs`` (agent.inputs.describe): names, a shape of counts,
    the sizes that were assumed."""
    if not isinstance(value, dict):
        return None
    shape = value.get("shape")
    assumed = value.get("assumed")
    return {"name": text(value.get("name")), "dtype": text(value.get("dtype"), 40),
            "source": text(value.get("source")),
            "shape": [count(d) for d in shape[:16]] if isinstance(shape, list) else [],
            "assumed": [a for a in (flat(x) for x in assumed[:16]) if a is not None]
            if isinstance(assumed, list) else None}


def checked_common(data: Any) -> dict[str, Any]:
    """What the result line says for all its entries (model size, inputs, providers,
    onnxruntime version), of the right types."""
    data = data if isinstance(data, dict) else {}
    inputs = data.get("inputs")
    return {"model_size_mb": finite(data.get("model_size_mb")),
            "inputs": [i for i in (input_spec(x) for x in inputs[:64]) if i is not None]
            if isinstance(inputs, list) else None,
            "providers": texts(data.get("providers")) or None,
            "onnxruntime": text(data.get("onnxruntime"))}


def checked_entries(data: Any, asked: Collection[int]) -> list[dict[str, Any]]:
    """The result line's entries, checked; at most one per thread count asked (the first)."""
    raw = data.get("results") if isinstance(data, dict) else None
    out: dict[int, dict[str, Any]] = {}
    for entry in raw[:len(asked) + 64] if isinstance(raw, list) else []:
        checked = checked_entry(entry, asked)
        if checked is not None:
            out.setdefault(checked["threads"], checked)
    return list(out.values())
