"""Temperature, CPU frequency and throttle state, read the way a Raspberry Pi exposes them.

Contract (DESIGN "Simulated hardware"): files under ``${EDGEFLEET_SYSFS:-/sys}`` and
``vcgencmd`` from PATH, so a fake sysfs tree and a fake ``vcgencmd`` script simulate a Pi.
A sensor that cannot be read is ``None`` (JSON null), never 0: a 0 °C or 0 MHz reading would be
shown to a user as if it had been measured.

Why a ``SensorReader`` object: a benchmark samples at 4 Hz, so paths (the cpu* glob, where
vcgencmd lives) are resolved once and each ``read()`` is a few small file reads plus at most one
short ``vcgencmd`` call. All parsers are pure functions over recorded text.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from typing import Any, Dict, List, Optional, Set

VCGENCMD_TIMEOUT_S = 2.0

THROTTLE_BITS = (
    (0, "under_voltage"),
    (1, "frequency_capped"),
    (2, "throttled"),
    (3, "soft_temp_limit"),
)
SINCE_BOOT_SHIFT = 16


def sysfs_root(environ: Optional[Dict[str, str]] = None) -> str:
    """``${EDGEFLEET_SYSFS:-/sys}``: unset or empty means the real /sys."""
    env = os.environ if environ is None else environ
    return env.get("EDGEFLEET_SYSFS") or "/sys"


def is_simulated(environ: Optional[Dict[str, str]] = None) -> bool:
    return os.path.normpath(sysfs_root(environ)) != "/sys"


# -- pure parsers (recorded outputs in tests/agent/test_sensors.py) ------------------------------
def parse_millidegrees(text: str) -> Optional[float]:
    """``thermal_zone*/temp`` (``"48312\\n"`` = 48.312 °C) -> °C."""
    try:
        return round(int(text.strip()) / 1000.0, 3)
    except (ValueError, OverflowError):  # not a number, or one no sensor reads
        return None


def parse_khz_as_mhz(text: str) -> Optional[float]:
    """``scaling_cur_freq`` (``"1500000\\n"`` kHz) -> MHz."""
    try:
        value = int(text.strip())
        return value / 1000.0 if value > 0 else None
    except (ValueError, OverflowError):
        return None


_MEASURE_TEMP_RE = re.compile(r"temp=\s*(-?[0-9]+(?:\.[0-9]+)?)\s*'?C?")
_THROTTLED_RE = re.compile(r"throttled=\s*(0x[0-9a-fA-F]+|[0-9]+)")


def parse_measure_temp(text: str) -> Optional[float]:
    """``vcgencmd measure_temp`` (``"temp=48.3'C"``) -> °C."""
    match = _MEASURE_TEMP_RE.search(text)
    return float(match.group(1)) if match else None


def parse_vcgencmd_throttled(text: str) -> Optional[int]:
    """``vcgencmd get_throttled`` (``"throttled=0x50000"``) -> bits."""
    match = _THROTTLED_RE.search(text)
    return int(match.group(1), 0) if match else None


def parse_throttled_hex(text: str) -> Optional[int]:
    """The firmware's sysfs ``get_throttled`` file: hex digits, with or without ``0x``."""
    value = text.strip().strip("\x00").strip()
    try:
        return int(value, 16)
    except ValueError:
        return None


# ``vcgencmd pmic_read_adc`` (Pi 5 only) lists one line per PMIC channel, currents then volts:
#     "   VDD_CORE_A current(7)=2.35000000A" / "   VDD_CORE_V volt(15)=0.88125000V"
_PMIC_RE = re.compile(r"^\s*(\S+)_([AV])\s+(?:current|volt)\(\d+\)\s*=\s*"
                      r"(-?[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)\s*[AV]?\s*$")
PI5_MODEL_RE = re.compile(r"Raspberry Pi (5|500|Compute Module 5)\b")
PMIC_SOURCE = "vcgencmd pmic_read_adc"


def parse_pmic_read_adc(text: str) -> Dict[str, Dict[str, float]]:
    """``vcgencmd pmic_read_adc`` -> ``{rail: {"A": amps, "V": volts}}``; a rail may have one
    of the two (``EXT5V_V`` and ``BATT_V`` have no current channel). Other lines are ignored."""
    rails: Dict[str, Dict[str, float]] = {}
    for line in text.splitlines():
        match = _PMIC_RE.match(line)
        if match:
            rails.setdefault(match.group(1), {})[match.group(2)] = float(match.group(3))
    return rails


def pmic_power_w(rails: Dict[str, Dict[str, float]]) -> Optional[float]:
    """Board power in W: the sum of V x I over the rails that report both (the PMIC's own
    rails; the 5 V input has a voltage channel only, so it cannot be counted twice)."""
    products = [r["V"] * r["A"] for r in rails.values() if "V" in r and "A" in r]
    return sum(products) if products else None


def read_model(sysfs: str) -> Optional[str]:
    """The device-tree model string ("Raspberry Pi 5 Model B Rev 1.0"), or None."""
    for path in (os.path.join(sysfs, "firmware", "devicetree", "base", "model"),
                 "/proc/device-tree/model"):
        text = _read_text(path)
        if text is not None and text.strip("\x00").strip():
            return text.strip("\x00").strip()
    return None


def decode_throttled(bits: int) -> Dict[str, List[str]]:
    """get_throttled bits -> ``{"now": [...], "since_boot": [...]}`` (DESIGN bit table)."""
    return {
        "now": [word for bit, word in THROTTLE_BITS if bits & (1 << bit)],
        "since_boot": [word for bit, word in THROTTLE_BITS
                       if bits & (1 << (bit + SINCE_BOOT_SHIFT))],
    }


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            return handle.read(4096).decode("ascii", "replace")
    except OSError:
        return None


class SensorReader:
    """Resolves sensor sources once; ``read()`` takes one snapshot."""

    def __init__(self, sysfs: Optional[str] = None, path: Optional[str] = None) -> None:
        self.sysfs = sysfs if sysfs is not None else sysfs_root()
        self.thermal = os.path.join(self.sysfs, "class", "thermal", "thermal_zone0", "temp")
        self.cpu_freqs = sorted(
            self._glob(os.path.join(self.sysfs, "devices", "system", "cpu", "cpu[0-9]*",
                                    "cpufreq", "scaling_cur_freq")),
            key=cpu_index,
        )
        self.throttled_file = os.path.join(self.sysfs, "devices", "platform", "soc",
                                           "soc:firmware", "get_throttled")
        self.vcgencmd = self._which_vcgencmd(path)
        # Subcommands that failed once are not retried by this reader: on a non-Pi (or without
        # access to /dev/vchiq) every call fails, and a 4 Hz sampler must not spawn a doomed
        # process each time.
        self.vcgencmd_broken: Set[str] = set()
        # Why power needs the model first: only a Pi 5 has a PMIC that ``pmic_read_adc``
        # reads, and a sampler asking any other board would fork a doomed process to learn it.
        # Decided once, on the first ``read_power``; afterwards this is None or the reason.
        self.power_unavailable: Optional[str] = None
        self._power_checked = False

    # Where the reader looks: this device, or (a subclass) a recorded dump of it
    # (agent.shellpoll's poll, parsed on the control plane with these same decisions).
    def _glob(self, pattern: str) -> List[str]:
        return glob.glob(pattern)

    def _which_vcgencmd(self, path: Optional[str]) -> Optional[str]:
        return shutil.which("vcgencmd", path=path)

    def _read(self, path: str) -> Optional[str]:
        """A sensor file's text (None: unreadable)."""
        return _read_text(path)

    def _vcgencmd(self, *args: str) -> Optional[str]:
        if self.vcgencmd is None or args[0] in self.vcgencmd_broken:
            return None
        try:
            proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
                [self.vcgencmd] + list(args),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                timeout=VCGENCMD_TIMEOUT_S,
            )
        except (OSError, subprocess.SubprocessError):
            self.vcgencmd_broken.add(args[0])
            return None
        if proc.returncode != 0:
            self.vcgencmd_broken.add(args[0])
            return None
        return proc.stdout.decode("ascii", "replace")

    def read_temp(self) -> Dict[str, Any]:
        text = self._read(self.thermal)
        value = parse_millidegrees(text) if text is not None else None
        if value is not None:
            return {"temp_c": value, "source": self.thermal}
        out = self._vcgencmd("measure_temp")
        value = parse_measure_temp(out) if out is not None else None
        if out is not None and value is None:
            self.vcgencmd_broken.add("measure_temp")
        return {"temp_c": value, "source": "vcgencmd measure_temp" if value is not None else None}

    def read_freqs(self) -> List[float]:
        values = []
        for path in self.cpu_freqs:
            text = self._read(path)
            value = parse_khz_as_mhz(text) if text is not None else None
            if value is not None:
                values.append(value)
        return values

    def read_throttled(self) -> Dict[str, Any]:
        out = self._vcgencmd("get_throttled")
        bits = parse_vcgencmd_throttled(out) if out is not None else None
        if out is not None and bits is None:
            self.vcgencmd_broken.add("get_throttled")
        if bits is not None:
            return {"bits": bits, "source": "vcgencmd get_throttled"}
        text = self._read(self.throttled_file)
        bits = parse_throttled_hex(text) if text is not None else None
        return {"bits": bits, "source": self.throttled_file if bits is not None else None}

    def read_throttled_cheap(self) -> Optional[int]:
        """get_throttled bits for a sampler: the sysfs file first, ``vcgencmd`` only without it.

        Why the opposite order to ``read_throttled``: both ask the firmware for the same word,
        but ``vcgencmd`` is a fork+exec (tens of ms of CPU on a Pi 3) and a benchmark sampler
        calling it 4 times a second would load the very cores it is measuring. A one-off
        ``snapshot`` keeps preferring ``vcgencmd``, the tool users know.
        """
        text = self._read(self.throttled_file)
        bits = parse_throttled_hex(text) if text is not None else None
        if bits is not None:
            return bits
        return self.read_throttled()["bits"]

    def _check_power(self) -> Optional[str]:
        model = read_model(self.sysfs)
        if model is None or not PI5_MODEL_RE.search(model):
            return ("not available: energy is read with vcgencmd pmic_read_adc, which only a "
                    "Raspberry Pi 5 has (this device: %s)"
                    % (model or "no device-tree model, not a Raspberry Pi"))
        if self.vcgencmd is None:
            return "not available: no vcgencmd on PATH to run pmic_read_adc"
        return None

    def read_power(self) -> Optional[float]:
        """Board power in W from ``vcgencmd pmic_read_adc`` (Pi 5), or None. When it cannot
        work (not a Pi 5, no vcgencmd, the command fails or lists no rail with V and A),
        ``power_unavailable`` says why and no later call runs anything."""
        if not self._power_checked:
            self._power_checked = True
            self.power_unavailable = self._check_power()
        if self.power_unavailable is not None:
            return None
        out = self._vcgencmd("pmic_read_adc")
        if out is None:
            self.power_unavailable = "not available: vcgencmd pmic_read_adc failed"
            return None
        watts = pmic_power_w(parse_pmic_read_adc(out))
        if watts is None:
            self.power_unavailable = ("not available: vcgencmd pmic_read_adc listed no rail "
                                      "with both a voltage and a current")
        return watts

    def read(self) -> Dict[str, Any]:
        temp = self.read_temp()
        freqs = self.read_freqs()
        throttled = self.read_throttled()
        bits = throttled["bits"]
        return {
            "temp_c": temp["temp_c"],
            "freq_mhz": round(sum(freqs) / len(freqs), 3) if freqs else None,
            "freq_mhz_min": min(freqs) if freqs else None,
            "freq_mhz_max": max(freqs) if freqs else None,
            "throttled": bits,
            "throttled_hex": hex(bits) if bits is not None else None,
            "throttle_flags": decode_throttled(bits) if bits is not None else None,
            "sources": {
                "temp": temp["source"],
                "freq": ("%d cpufreq files under %s" % (len(freqs), self.sysfs)) if freqs
                else None,
                "throttled": throttled["source"],
            },
        }


def cpu_index(path: str) -> int:
    """The N of ``.../cpuN/cpufreq/scaling_cur_freq`` (the readers sort by it: cpu10 after
    cpu9)."""
    match = re.search(r"cpu([0-9]+)", os.path.basename(os.path.dirname(os.path.dirname(path))))
    return int(match.group(1)) if match else 0


def snapshot(sysfs: Optional[str] = None, path: Optional[str] = None) -> Dict[str, Any]:
    """One reading of every sensor; see the module docstring for the shape and the rules."""
    return SensorReader(sysfs=sysfs, path=path).read()
