"""A flooding device (issue 11, item 2): its "agent" writes hundreds of MB without a newline,
floods stderr, or sends newline-terminated lines past the per-command total.

The fault is real: the device's ``edgefleet_python`` is a program that floods (it is started
exactly where the agent would be, with the agent's arguments), reached through a real sshd or
the local transport, while a second device in the same command runs the real agent. The
control plane must stop reading at the limit, stop the command, report that device's failure
naming the limit, finish the healthy device, and keep its memory bounded while doing so (peak
RSS of a fresh CLI process, from ``/proc/self/status``). No sleeps: the flooder's exit is
awaited on a pidfd.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.demo.simulate import create_simulated_device
from orchestrator.transport.base import MAX_LINE_BYTES, MAX_OUTPUT_BYTES, MiB
from tests.conftest import Cli
from tests.fleet.sshd import SshdFactory
from tests.waiting import process_gone

REPO = Path(__file__).resolve().parents[2]
LIMIT_MIB = MAX_LINE_BYTES // MiB
SIM_TEMP_C = 48.0  # create_simulated_device's default: what the healthy device must report
FLOOD_END = "the flood ends here"

FLOODER = '''#!{python}
"""Stands in for the agent; writes {size} bytes ({mode}) without caring who reads."""
import os
import sys

with open({pidfile!r}, "w") as handle:
    handle.write(str(os.getpid()))
if {mode!r} == "lines":
    chunk = (b"y" * 1023 + b"\\n") * 1024  # 1 MiB of 1 KiB lines, newline-terminated
else:
    chunk = b"x" * (1 << 20)  # 1 MiB, no newline anywhere
fd = 2 if {mode!r} == "stderr" else 1
sent = 0
while sent < {size}:
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view):]
    sent += len(chunk)
open({donefile!r}, "w").close()
if {mode!r} == "stderr":
    os.write(2, b"\\n{end}\\n")
    sys.exit(3)
'''


@dataclass(frozen=True)
class Flooder:
    """The flooding program; ``pidfile`` is written at start, ``donefile`` once it has
    written everything (i.e. nobody stopped it)."""

    path: Path
    pidfile: Path
    donefile: Path

    def ended(self, timeout: float) -> bool:
        """Whether the flooder has exited (waiting up to ``timeout`` s on a pidfd)."""
        return process_gone(int(self.pidfile.read_text()), timeout)


def write_flooder(directory: Path, mode: str, size: int) -> Flooder:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"flood-{mode}"
    pidfile, donefile = directory / f"flood-{mode}.pid", directory / f"flood-{mode}.done"
    path.write_text(FLOODER.format(python=sys.executable, mode=mode, size=size,
                                   pidfile=str(pidfile), donefile=str(donefile), end=FLOOD_END))
    path.chmod(0o755)
    return Flooder(path, pidfile, donefile)


def make_fleet(transport: str, cli: Cli, tmp_path: Path, sshd_factory: SshdFactory,
               write_inventory: Callable[..., Path], flooder: Flooder) -> tuple[str, str]:
    """Group ``pis``: a flooding device and a healthy one with the agent installed; returns
    their names."""
    inventory = tmp_path / "inventory.yml"
    if transport == "ssh":
        bad, good = sshd_factory(2)
        write_inventory(inventory, [bad, good],
                        extra_host_vars={bad.name: {"edgefleet_python": str(flooder.path)}})
        names = bad.name, good.name
    else:
        names = "flooding", "healthy"
        hosts = {name: create_simulated_device(tmp_path / name / "sim").local_host_vars(
            tmp_path / name / "root") for name in names}
        hosts["flooding"]["edgefleet_python"] = str(flooder.path)
        inventory.write_text(yaml.safe_dump({"all": {"children": {"pis": {"hosts": hosts}}}}))
    assert cli("inventory", "sync", inventory, "--json").json["added"] == list(names)
    if transport == "ssh":
        cli("devices", "trust", "pis")
    installed = cli("agent", "install", names[1], "--json").json
    assert [o["state"] for o in installed] == ["installed"], installed
    return names


@dataclass(frozen=True)
class Scenario:
    mode: str  # what the flooder writes: stdout (no newline), lines, stderr
    size: int
    max_output_mb: int | None  # EDGEFLEET_MAX_OUTPUT_MB for the scenario (None: default)
    error: str  # a regex the flooding device's error must match
    stopped: bool  # the control plane stops the flooder (else it writes all and exits)


SCENARIOS = {
    "no-newline": Scenario(
        "stdout", 8 * MAX_LINE_BYTES, None,
        rf"sent a line longer than {LIMIT_MIB} MiB without a newline; command abandoned "
        r"\(a broken or hostile agent\? a trusted device's limit is raised with "
        r"EDGEFLEET_MAX_LINE_MB\)$", True),
    "lines-past-total": Scenario(
        "lines", 128 * MiB, 16,
        r"sent more than 16 MiB of output \(stdout and stderr\) for one command; command "
        r"abandoned .*EDGEFLEET_MAX_OUTPUT_MB\)$", True),
    "stderr-past-total": Scenario(
        "stderr", 128 * MiB, 16, r"sent more than 16 MiB of output \(stdout and stderr\)", True),
    "stderr-kept-as-tail": Scenario(
        "stderr", 96 * MiB, None,
        rf"agent telemetry gave no result \(exit 3\): x+\n{FLOOD_END}$", False),
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
@pytest.mark.parametrize("transport", ["ssh", "local"])
def test_a_flooding_device_fails_alone(
        transport: str, scenario: Scenario, cli: Cli, sshd_factory: SshdFactory,
        write_inventory: Callable[..., Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if scenario.max_output_mb is not None:
        monkeypatch.setenv("EDGEFLEET_MAX_OUTPUT_MB", str(scenario.max_output_mb))
    flooder = write_flooder(tmp_path / "flooder", scenario.mode, scenario.size)
    bad, good = make_fleet(transport, cli, tmp_path, sshd_factory, write_inventory, flooder)

    rows = {r["device"]: r for r in cli("telemetry", "pis", "--json", expect=1).json}

    assert rows[good]["ok"] and rows[good]["temp_c"] == SIM_TEMP_C, rows[good]
    assert (rows[bad]["ok"], rows[bad]["state"]) == (False, "failed")
    assert rows[bad]["error"].startswith(f"{bad}: "), rows[bad]["error"][:300]
    assert re.search(scenario.error, rows[bad]["error"]), rows[bad]["error"][:300]
    assert flooder.ended(timeout=30), "the flooding command was left running"
    assert flooder.donefile.exists() is not scenario.stopped
    # The healthy device's snapshot was stored; the flooding one has none.
    shown = {name: cli("devices", "show", name, "--json").json for name in (bad, good)}
    assert shown[good]["throttled_hex"] == "0x0" and shown[bad]["throttled_hex"] is None


# -- memory ---------------------------------------------------------------------------------

DRIVER = r'''
import json, sys
from typer.testing import CliRunner
from orchestrator.cli.main import get_app

def status():
    with open("/proc/self/status") as handle:
        fields = dict(line.split(":", 1) for line in handle if ":" in line)
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}

bad, good, out = sys.argv[1:]
runner, app = CliRunner(), get_app()
# The healthy device first: every module and connection path the command uses is loaded.
warm = runner.invoke(app, ["telemetry", good, "--json"])
before = status()
flood = runner.invoke(app, ["telemetry", bad, "--json"])
after = status()
with open(out, "w") as handle:
    json.dump({"warm_exit": warm.exit_code, "exit": flood.exit_code, "stdout": flood.stdout,
               "rss_before": before["VmRSS"], "hwm_after": after["VmHWM"]}, handle)
'''


def peak_growth(bad: str, good: str, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    """Run telemetry on the healthy, then the flooding device in a fresh CLI process; the
    flooding command's peak RSS over the RSS before it (conservative: any earlier peak above
    that counts too), and that process's report."""
    out = tmp_path / "driver.json"
    proc = subprocess.run([sys.executable, "-c", DRIVER, bad, good, str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=150, check=False)
    assert proc.returncode == 0 and out.exists(), proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["warm_exit"] == 0, report
    return report["hwm_after"] - report["rss_before"], report


MEMORY = {
    # A newline-less flood 8x the line limit: the buffer may reach the limit, not the flood.
    "no-newline": (Scenario("stdout", 8 * MAX_LINE_BYTES, None,
                            rf"longer than {LIMIT_MIB} MiB without a newline", True),
                   2 * MAX_LINE_BYTES),
    # stderr past the per-command total: only its 64 KiB tail is kept, then it is cut off.
    "stderr": (Scenario("stderr", 2 * MAX_OUTPUT_BYTES, None,
                        rf"more than {MAX_OUTPUT_BYTES // MiB} MiB of output", True),
               32 * MiB),
}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", MEMORY.keys())
@pytest.mark.parametrize("transport", ["ssh", "local"])
def test_memory_stays_bounded_while_a_device_floods(
        transport: str, name: str, cli: Cli, sshd_factory: SshdFactory,
        write_inventory: Callable[..., Path], tmp_path: Path) -> None:
    scenario, bound = MEMORY[name]
    assert scenario.size >= 4 * bound  # reading the flood whole would fail the bound 4x over
    flooder = write_flooder(tmp_path / "flooder", scenario.mode, scenario.size)
    bad, good = make_fleet(transport, cli, tmp_path, sshd_factory, write_inventory, flooder)

    growth, report = peak_growth(bad, good, tmp_path)

    assert report["exit"] == 1
    [row] = json.loads(report["stdout"])
    assert row["device"] == bad and re.search(scenario.error, row["error"]), row["error"][:300]
    assert flooder.ended(timeout=30) and not flooder.donefile.exists()
    assert growth < bound, (f"peak RSS grew {growth / MiB:.0f} MiB while {bad} flooded "
                            f"{scenario.size / MiB:.0f} MiB (bound {bound / MiB:.0f} MiB)")
