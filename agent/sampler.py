"""Telemetry while a benchmark runs: temperature, CPU frequency and get_throttled, sampled by a
daemon thread, then summarised into a verdict (clean / throttled / unknown) with reasons.

Why a thread and not a before/after reading: a Pi under load can dip below 4.63 V or hit its
soft temperature limit for a few hundred milliseconds and recover; the "now" bits of
get_throttled are only set while that lasts, and the "has occurred" bits cannot fire twice once
set. Sampling at >= 4 Hz from before warmup to after the last timed run catches the dips; one
synchronous sample at each end guarantees at least two samples for very short runs.

Why it is cheap: each sample is a few small sysfs reads. ``vcgencmd get_throttled`` (a fork+exec,
tens of ms of CPU on a Pi 3) is only run when the firmware's sysfs ``get_throttled`` file gives
no answer (``SensorReader.read_throttled_cheap``): a sampler forking 4 times a second would load
the cores it is measuring.

Energy (Raspberry Pi 5 only): when the reader can measure board power (``vcgencmd
pmic_read_adc``, see ``SensorReader.read_power``), samples also carry it. That is a fork+exec
(a Pi 5 has no sysfs file for the PMIC's ADC), so power is read at most once per
``POWER_INTERVAL_S`` and always in the first and last sample: at 4 Hz the fork+execs alone
cost 28 ms of CPU per second here (2.8% of a core, more than the whole 1% overhead budget of
a benchmark), every 2 s about 0.5%; board power under a steady load changes slowly, and its
mean over the timed phase is what is reported. Every other board is recognised by its
device-tree model once and never asked. ``energy_summary`` turns the power samples of the
timed phase into mean W and mJ per inference.

The sampler thread runs at a lower priority (nice +10, Linux: per thread), and so do the
processes it starts: when a benchmark loads every core, its reads wait for a gap instead of
preempting the threads being measured.

A sample is ``[t_s, temp_c, freq_mhz, throttled]``, plus ``power_w`` as a fifth item when the
device measures power (None in the samples between power readings; seconds since ``start()``,
monotonic clock; None where a sensor is missing). ``freq_mhz`` is the fastest core: the core
running the model is the one that matters, and idle cores' governor choices are noise (on a Pi
all cores share one clock, so this equals every core).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from agent.sensors import SINCE_BOOT_SHIFT, THROTTLE_BITS, decode_throttled

MIN_HZ = 4.0
MAX_HZ = 50.0
TEMP_LIMIT_C = 80.0  # where Raspberry Pi firmware starts soft throttling (Pi 4/5 defaults)
FREQ_DROP_RATIO = 0.9
POWER_INTERVAL_S = 2.0
SAMPLER_NICE = 10
NOW_MASK = 0xF
STICKY_MASK = 0xF << SINCE_BOOT_SHIFT

Sample = List[Any]

_WORDS = {
    "under_voltage": "under-voltage",
    "frequency_capped": "ARM frequency capping",
    "throttled": "throttling",
    "soft_temp_limit": "soft temperature limit",
}


class Sampler:
    """Samples ``reader`` (an ``agent.sensors.SensorReader``) at ``hz`` between start/stop."""

    def __init__(self, reader: Any, hz: float) -> None:
        self.reader = reader
        self.interval_s = 1.0 / hz
        self.samples: List[Sample] = []
        self.marks: Dict[str, float] = {}
        self.errors: List[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._t0 = 0.0
        # None until the first sample decides whether this device measures power at all
        self.power: Optional[bool] = None
        self._power_at: Optional[float] = None  # t_s of the last power reading

    @property
    def power_reason(self) -> Optional[str]:
        """Why there is no power reading (None when there is one)."""
        if self.power:
            return None
        return getattr(self.reader, "power_unavailable", None) or \
            "not available: this sensor reader does not measure power"

    def _read_power(self) -> Optional[float]:
        if self.power is False:
            return None
        read = getattr(self.reader, "read_power", None)
        watts = read() if read is not None else None
        if self.power is None:
            self.power = watts is not None
        return round(watts, 4) if watts is not None else None

    def _take(self, last: bool = False) -> None:
        t_s = time.monotonic() - self._t0
        try:
            temp = self.reader.read_temp()["temp_c"]
            freqs = self.reader.read_freqs()
            bits = self.reader.read_throttled_cheap()
            watts = None
            if last or self._power_at is None or t_s - self._power_at >= POWER_INTERVAL_S:
                watts = self._read_power()
                self._power_at = t_s
        except Exception as exc:  # a sensor must never abort the measurement
            self.errors.append("%s: %s" % (type(exc).__name__, exc))
            return
        sample = [round(t_s, 3), temp, max(freqs) if freqs else None, bits]
        if self.power:
            sample.append(watts)
        with self._lock:
            self.samples.append(sample)

    def _run(self) -> None:
        lower_priority()
        tick = 1
        # Event.wait paces the thread and wakes it at once on stop(); ticks are scheduled from
        # t0 so slow reads do not make the rate drift.
        while not self._stop.wait(max(0.0, self._t0 + tick * self.interval_s - time.monotonic())):
            self._take()
            tick = max(tick + 1, int((time.monotonic() - self._t0) / self.interval_s) + 1)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._take()
        self._thread = threading.Thread(target=self._run, name="edgefleet-sampler", daemon=True)
        self._thread.start()

    def mark(self, name: str) -> None:
        """Record when a phase starts (``timed_start``), on the samples' clock."""
        self.marks[name] = round(time.monotonic() - self._t0, 3)

    def stop(self) -> List[Sample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._take(last=True)
        with self._lock:
            return [list(s) for s in self.samples]


def lower_priority() -> None:
    """Nice the calling thread (and what it starts) by SAMPLER_NICE; Linux sets nice per
    thread. Best effort: elsewhere, or if refused, the sampler runs as before."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid,
                       min(19, os.getpriority(os.PRIO_PROCESS, tid) + SAMPLER_NICE))
    except (AttributeError, OSError):
        pass


def _hex(bits: Optional[int]) -> str:
    return "0x%x" % bits if bits is not None else "none"


def _fmt(value: float) -> str:
    return ("%.1f" % value).rstrip("0").rstrip(".")


def _either(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else "%s or %s" % (", ".join(words[:-1]), words[-1])


def throttle_bits(bits: Sequence[int]) -> Tuple[int, int, int]:
    """(now bits OR-ed over samples, sticky bits of the first sample, sticky bits new since).

    "New" is the has-occurred bits seen in any later sample but not in the first; with the
    documented since-boot semantics that equals "in the last sample, not in the first", and it
    stays right if something (a kernel driver) clears the sticky bits while we sample.
    """
    now = 0
    for value in bits:
        now |= value & NOW_MASK
    first = bits[0] & STICKY_MASK if bits else 0
    later = 0
    for value in bits[1:]:
        later |= value & STICKY_MASK
    return now, first, later & ~first


def summarize(samples: Sequence[Sample], interval_s: float,
              timed_start: Optional[float] = None,
              errors: Sequence[str] = ()) -> Tuple[Dict[str, Any], List[str], List[str]]:
    """(telemetry, flags, reasons) for one run; ``valid`` is ``not flags``.

    ``frequency_drop`` compares the lowest frequency sampled from ``timed_start`` on with the
    highest sampled in the whole run. Why only the timed window: governors differ (ondemand
    idles low and ramps up when the load starts, which is not a problem), but a drop while the
    model is running is the signature of firmware or thermal capping.
    """
    temps = [s[1] for s in samples if s[1] is not None]
    freqs = [s[2] for s in samples if s[2] is not None]
    bits = [s[3] for s in samples if s[3] is not None]
    flags: List[str] = []
    reasons: List[str] = []
    throttled_bits: Optional[int] = None
    throttle_flags: Optional[Dict[str, List[str]]] = None
    if bits:
        now, first_sticky, new_sticky = throttle_bits(bits)
        throttled_bits = now | new_sticky
        throttle_flags = {"now": decode_throttled(now)["now"],
                          "new_since_start": decode_throttled(new_sticky)["since_boot"]}
        for bit, word in THROTTLE_BITS:
            seen = [value for value in bits if value & (1 << bit)]
            sticky = 1 << (bit + SINCE_BOOT_SHIFT)
            if seen:
                raw = 0
                for value in seen:
                    raw |= value
                reasons.append("%s seen in %d of %d samples (get_throttled %s)"
                               % (_WORDS[word], len(seen), len(bits), _hex(raw)))
            elif new_sticky & sticky:
                reasons.append("%s occurred between samples (has-occurred bit %d appeared: "
                               "get_throttled %s at the start, %s at the end)"
                               % (_WORDS[word], bit + SINCE_BOOT_SHIFT, _hex(bits[0]),
                                  _hex(bits[-1])))
            else:
                if first_sticky & sticky:
                    reasons.append("note: %s had already occurred since boot before this run "
                                   "(get_throttled %s at the start), so a recurrence between "
                                   "samples could not be seen" % (_WORDS[word], _hex(bits[0])))
                continue
            flags.append(word)
    temp_max = max(temps) if temps else None
    if temp_max is not None and temp_max >= TEMP_LIMIT_C:
        flags.append("temp_over_80c")
        reasons.append("temperature reached %s °C (>= %s °C, where Raspberry Pi firmware starts "
                       "to throttle)" % (_fmt(temp_max), _fmt(TEMP_LIMIT_C)))
    if freqs:
        window = [s[2] for s in samples if s[2] is not None
                  and (timed_start is None or s[0] >= timed_start)]
        low, high = (min(window) if window else None), max(freqs)
        if low is not None and low < FREQ_DROP_RATIO * high:
            flags.append("frequency_drop")
            reasons.append("CPU frequency fell to %s MHz during the timed runs, below %d%% of "
                           "the %s MHz seen in this run (capping under load)"
                           % (_fmt(low), round(FREQ_DROP_RATIO * 100), _fmt(high)))
    missing = [label for label, values in (("temperature", temps), ("CPU frequency", freqs),
                                           ("get_throttled", bits)) if not values]
    if not bits and not flags:
        reasons.append("sensors unknown: no %s reading, so under-voltage and throttling could "
                       "not be checked (unknown is not clean)" % _either(missing))
    elif missing:
        reasons.append("note: no %s reading" % _either(missing))
    for error in errors[:3]:
        reasons.append("note: a sensor read failed: %s" % error)
    status = "throttled" if flags else ("clean" if bits else "unknown")
    telemetry = {
        "status": status,
        "interval_s": round(interval_s, 6),
        "samples": [list(s) for s in samples],
        "temp_c_min": min(temps) if temps else None,
        "temp_c_max": temp_max,
        "freq_mhz_min": min(freqs) if freqs else None,
        "freq_mhz_max": max(freqs) if freqs else None,
        "throttled_bits": throttled_bits,
        "throttle_flags": throttle_flags,
    }
    return telemetry, flags, reasons


def energy_summary(samples: Sequence[Sample], timed_start: Optional[float],
                   wall_s: Optional[float], runs: Optional[int],
                   reason: Optional[str] = None) -> Dict[str, Any]:
    """``{"available": true, "mean_w", "mj_per_inference", "samples", "source"}`` over the
    timed phase, else ``{"available": false, "reason"}``.

    mean W = the mean of the power samples from ``timed_start`` on (the sampler's last sample is
    taken right after the timed loop, so there is at least one even for a very short loop);
    mJ per inference = mean W x ``wall_s`` (the time of the timed inferences: bench passes
    their sum, eval its loop's duration) / ``runs``. It is the
    whole board's energy over that time (what the supply delivers per inference), not the
    increment above idle.
    """
    powers = [s[4] for s in samples if len(s) > 4 and s[4] is not None
              and (timed_start is None or s[0] >= timed_start)]
    if not powers:
        return {"available": False, "reason": reason or "not available: no power reading "
                "during the timed runs"}
    mean_w = sum(powers) / len(powers)
    per_inference = (mean_w * wall_s / runs * 1000.0) if wall_s and runs else None
    return {"available": True, "mean_w": round(mean_w, 4),
            "mj_per_inference": None if per_inference is None else round(per_inference, 4),
            "samples": len(powers),
            "source": "vcgencmd pmic_read_adc: sum of V x A over the rails with both"}
