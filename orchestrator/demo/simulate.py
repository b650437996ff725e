"""Simulated Raspberry Pi sensors, behind the documented *Simulated hardware* contract.

A simulated device is a directory holding a fake sysfs tree and a fake ``vcgencmd``::

    <dir>/sysfs/class/thermal/thermal_zone0/temp                   millidegrees C, e.g. "48000"
    <dir>/sysfs/devices/system/cpu/cpu<N>/cpufreq/scaling_cur_freq kHz, e.g. "2400000"
    <dir>/sysfs/devices/platform/soc/soc:firmware/get_throttled    hex bits, e.g. "50000"
    <dir>/sysfs/firmware/devicetree/base/model                     model name + NUL
    <dir>/bin/vcgencmd                                             POSIX sh, reads the files above

The agent finds them through ``SimulatedDevice.env`` (``EDGEFLEET_SYSFS`` and a ``PATH`` with
``bin/`` first). Only the sensors are fake: whatever runs on a simulated device is measured for
real on the machine it runs on. Every value is written atomically (temporary file in the same
directory + ``os.replace``), so a concurrent reader sees the old value or the new one, never a
half-written file; the fake ``vcgencmd`` reads the files on every call, so ``set_*`` changes its
answers immediately.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SimulatedDevice", "create_simulated_device"]

THERMAL_TEMP = Path("class/thermal/thermal_zone0/temp")
CPU_DIR = Path("devices/system/cpu")
GET_THROTTLED = Path("devices/platform/soc/soc:firmware/get_throttled")
DT_MODEL = Path("firmware/devicetree/base/model")

# Pi 5 PMIC rails as `vcgencmd pmic_read_adc` lists them: (name, channel, value). Currents come
# first, then voltages, in firmware order (channel numbers are not sequential on a real board).
# VDD_CORE_A/VDD_CORE_V follow the simulated CPU frequency and EXT5V_V sags while the
# under-voltage bit is set; the other rails are typical idle readings.
_PMIC_CURRENTS = [
    ("3V7_WL_SW_A", 0, 0.00195186),
    ("3V3_SYS_A", 1, 0.12687090),
    ("1V8_SYS_A", 2, 0.18835450),
    ("DDR_VDD2_A", 3, 0.02147046),
    ("DDR_VDDQ_A", 4, 0.00000000),
    ("1V1_SYS_A", 5, 0.17957110),
    ("0V8_SW_A", 6, 0.25959740),
    ("VDD_CORE_A", 7, None),
    ("3V3_DAC_A", 17, 0.00000000),
    ("3V3_ADC_A", 18, 0.00000000),
    ("0V8_AON_A", 16, 0.00293040),
    ("HDMI_A", 22, 0.02551890),
]
_PMIC_VOLTS = [
    ("3V7_WL_SW_V", 8, 3.70720000),
    ("3V3_SYS_V", 9, 3.32580900),
    ("1V8_SYS_V", 10, 1.80415000),
    ("DDR_VDD2_V", 11, 1.11135400),
    ("DDR_VDDQ_V", 12, 0.60329610),
    ("1V1_SYS_V", 13, 1.11282000),
    ("0V8_SW_V", 14, 0.80512740),
    ("VDD_CORE_V", 15, None),
    ("3V3_DAC_V", 20, 3.32142500),
    ("3V3_ADC_V", 21, 3.32966700),
    ("0V8_AON_V", 19, 0.80175740),
    ("HDMI_V", 23, 5.11746000),
    ("EXT5V_V", 24, None),
    ("BATT_V", 25, 0.00000000),
]


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so readers see either the old or the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pmic_awk_program() -> str:
    """An awk program printing the pmic_read_adc listing from ``khz`` and ``uv`` variables."""
    lines = []
    for name, channel, value in _PMIC_CURRENTS:
        expr = "0.45 + 1.9 * khz / 2400000" if value is None else f"{value:.8f}"
        lines.append(f'printf "%12s current({channel})=%.8fA\\n", "{name}", {expr}')
    for name, channel, value in _PMIC_VOLTS:
        if name == "VDD_CORE_V":
            expr = "0.72 + 0.16125 * khz / 2400000"
        elif name == "EXT5V_V":
            expr = "(uv ? 4.63120000 : 5.14158000)"
        else:
            expr = f"{value:.8f}"
        lines.append(f'printf "%12s volt({channel})=%.8fV\\n", "{name}", {expr}')
    return "BEGIN {\n" + "\n".join(f"  {line}" for line in lines) + "\n}"


def _vcgencmd_script(sysfs: Path, pi5: bool) -> str:
    """The fake ``vcgencmd``: POSIX sh answering from the files under ``sysfs``."""
    pmic = (
        "  'pmic_read_adc ')\n"
        '    khz=$(cat "$SYSFS/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq") || exit 1\n'
        '    bits=$(cat "$SYSFS/$THROTTLED") || exit 1\n'
        "    uv=$(( 0x$bits & 1 ))\n"
        f'    awk -v khz="$khz" -v uv="$uv" {shlex.quote(_pmic_awk_program())}\n'
        "    ;;\n"
        if pi5
        else ""
    )
    return (
        "#!/bin/sh\n"
        "# Fake vcgencmd for a simulated Raspberry Pi (EdgeFleet). Reads the fake sysfs on\n"
        "# every call, so the values follow SimulatedDevice.set_*().\n"
        f"SYSFS={shlex.quote(str(sysfs))}\n"
        f"THROTTLED={shlex.quote(str(GET_THROTTLED))}\n"
        'case "$1 $2" in\n'
        "  'get_throttled ')\n"
        '    bits=$(cat "$SYSFS/$THROTTLED") || exit 1\n'
        '    printf "throttled=0x%x\\n" "0x$bits"\n'
        "    ;;\n"
        "  'measure_temp ')\n"
        f'    m=$(cat "$SYSFS/{THERMAL_TEMP}") || exit 1\n'
        '    awk -v m="$m" \'BEGIN { printf "temp=%.1f\\047C\\n", m / 1000 }\'\n'
        "    ;;\n"
        "  'measure_clock arm')\n"
        f'    khz=$(cat "$SYSFS/{CPU_DIR}/cpu0/cpufreq/scaling_cur_freq") || exit 1\n'
        f'    printf "frequency({0 if pi5 else 48})=%d000\\n" "$khz"\n'
        "    ;;\n"
        f"{pmic}"
        "  *)\n"
        '    echo "error=1 error_msg=\\"Command not registered\\"" >&2\n'
        "    exit 1\n"
        "    ;;\n"
        "esac\n"
    )


@dataclass
class SimulatedDevice:
    """Handle on a simulated Pi's fake sensors; ``set_*`` rewrite them atomically."""

    dir: Path
    sysfs: Path
    bin_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    """Environment to export into agent commands: ``EDGEFLEET_SYSFS`` and ``PATH``."""

    def local_host_vars(self, root: Path, python: str | None = None) -> dict[str, Any]:
        """Inventory host vars of a local device (``ansible_connection: local``) on these
        sensors: its ``edgefleet_root``, the agent's interpreter (default: ours) and our env."""
        return {"ansible_connection": "local", "edgefleet_root": str(root),
                "edgefleet_python": python or sys.executable, "edgefleet_env": dict(self.env)}

    @property
    def cpu_freq_files(self) -> list[Path]:
        """The ``scaling_cur_freq`` file of every simulated CPU, in CPU order."""
        cpus = sorted(
            (p for p in (self.sysfs / CPU_DIR).glob("cpu[0-9]*") if p.name[3:].isdigit()),
            key=lambda p: int(p.name[3:]),
        )
        return [cpu / "cpufreq" / "scaling_cur_freq" for cpu in cpus]

    def set_temp(self, celsius: float) -> None:
        """Set the SoC temperature (``thermal_zone0/temp``, written in millidegrees)."""
        _atomic_write(self.sysfs / THERMAL_TEMP, f"{round(celsius * 1000)}\n".encode())

    def set_freq(self, mhz: float) -> None:
        """Set the current frequency of every CPU (``scaling_cur_freq``, written in kHz)."""
        if mhz < 0:
            raise ValueError(f"CPU frequency must be >= 0 MHz, got {mhz}")
        for path in self.cpu_freq_files:
            _atomic_write(path, f"{round(mhz * 1000)}\n".encode())

    def set_throttled(self, bits: int) -> None:
        """Set the firmware throttle bits (``get_throttled``, written as hex without ``0x``)."""
        if not 0 <= bits < 2**32:
            raise ValueError(f"throttle bits must fit in 32 bits, got {bits!r}")
        _atomic_write(self.sysfs / GET_THROTTLED, f"{bits:x}\n".encode())


def create_simulated_device(
    base: Path,
    *,
    model: str = "Raspberry Pi 5 Model B Rev 1.0",
    cores: int = 4,
    temp_c: float = 48.0,
    freq_mhz: float = 2400.0,
    throttled: int = 0,
) -> SimulatedDevice:
    """Create (or reset) a simulated Pi in ``base``: fake sysfs under ``base/sysfs``, fake
    ``vcgencmd`` in ``base/bin``. ``pmic_read_adc`` is answered only when ``model`` is a Pi 5,
    as on real hardware. ``base`` may contain spaces; it must not contain ``:`` (it goes into
    ``PATH``)."""
    if cores < 1:
        raise ValueError(f"a simulated device needs at least one core, got {cores}")
    base = Path(base).absolute()
    bin_dir = base / "bin"
    if ":" in str(bin_dir):
        raise ValueError(f"simulated device directory cannot contain ':' (used in PATH): {base}")
    sysfs = base / "sysfs"
    device = SimulatedDevice(
        dir=base,
        sysfs=sysfs,
        bin_dir=bin_dir,
        env={"EDGEFLEET_SYSFS": str(sysfs), "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"},
    )
    for n in range(cores):
        (sysfs / CPU_DIR / f"cpu{n}" / "cpufreq").mkdir(parents=True, exist_ok=True)
    _atomic_write(sysfs / DT_MODEL, model.encode() + b"\0", 0o444)
    device.set_temp(temp_c)
    device.set_freq(freq_mhz)
    device.set_throttled(throttled)
    script = _vcgencmd_script(sysfs, pi5="Raspberry Pi 5" in model)
    _atomic_write(bin_dir / "vcgencmd", script.encode(), 0o755)
    return device
