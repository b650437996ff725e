"""A telemetry poll that starts no Python on the device: a POSIX shell script dumps the files
and commands the agent's ``telemetry`` reads, and the control plane turns the dump into the
same answer with the agent's own code (``SensorReader`` over the recorded dump,
``snapshot.assemble``, the journal's consistency check).

Why: the poll runs every minute on every device. Starting the agent's Python for it costs
~45 ms of CPU on the control plane's test machine and several times that on a Pi 3, where it
competes with the benchmark it is meant to watch; the script costs ~7 ms here (six programs).
At 1,000 devices on one machine the Python start was most of a poll's cost
(bench/fleet_scale.py, issue 14).

What stays with the agent: anything but the plain case. ``parse`` returns None, and the caller
runs the agent's ``telemetry`` (which repairs, and says what it found), when the agent is not
installed (its usual error), a change is pending or ``current`` is not where the history says
(the agent's repair, reported as ``recovered``), ``current`` is not a symlink, ``state.json``
cannot be read, or the dump lacks a reading the agent would have taken (a thermal file that
cannot be parsed, for which it asks ``vcgencmd measure_temp``). So both paths give the same
answer, field for field (tests/fleet/test_telemetry_shell.py compares them).

The dump is untrusted input like any device output: each file is read at most 4 KiB (the
agent's own limit; ``state.json`` 1 MiB), the transport bounds the whole, and the parser takes
nothing but sections it knows.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from typing import Any, Dict, List, Optional, Set

from agent.sensors import SensorReader

MARK = "@@"
VERSION_LINE = "@@edgefleet-telemetry 2"
STATE_LIMIT = 1 << 20

# $1: the agent's root, $2: the agent's path. Sections: "@@<kind> <arg>" then the content; the
# small files are read by one ``head -v`` (each after a "==> PATH <==" line): six programs run
# in all (head, timeout, vcgencmd, stat, readlink, head), ~1 ms each here, more on a Pi 3.
SCRIPT = r"""
r=$1 a=$2
echo '@@edgefleet-telemetry 2'
[ -f "$a" ] || { echo '@@no-agent'; exit 0; }
s=${EDGEFLEET_SYSFS:-/sys}
echo "@@sysfs $s"
t=$s/class/thermal/thermal_zone0/temp
echo '@@files'
head -v -c 4096 -- "$t" "$s"/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq \
  "$s/devices/platform/soc/soc:firmware/get_throttled" /proc/meminfo /proc/loadavg \
  /proc/uptime /sys/devices/system/cpu/online 2>/dev/null
echo
v=$(command -v vcgencmd 2>/dev/null)
if [ -n "$v" ]; then
  T=; command -v timeout >/dev/null 2>&1 && T='timeout 2'
  echo "@@vcgencmd $v"
  g() {
    echo "@@ran $1"
    c=$($T "$v" "$1" </dev/null 2>/dev/null) && { echo "@@cmd $1"; printf '%s\n' "$c"; }
  }
  g get_throttled
  [ -r "$t" ] || g measure_temp
fi
p=$r
while [ ! -e "$p" ] && [ "$p" != / ] && [ "$p" != . ]; do
  case $p in */*) p=${p%/*}; p=${p:-/} ;; *) p=. ;; esac
done
echo "@@statfs $(stat -f -c '%a %S' -- "$p" 2>/dev/null)"
if [ -d "$r" ]; then
  echo '@@root'
  if [ -L "$r/current" ]; then echo "@@current-link $(readlink -- "$r/current")"
  elif [ -e "$r/current" ]; then echo '@@current-other'; fi
  if [ -e "$r/state.json" ]; then
    echo '@@state-exists'
    c=$(head -c 1048577 -- "$r/state.json" 2>/dev/null) && { echo '@@state'; printf '%s\n' "$c"; }
  fi
fi
echo '@@end'
"""


def argv(root: str, agent_path: str) -> List[str]:
    """The command: ``sh -c SCRIPT edgefleet-telemetry ROOT AGENT`` (quoted by the transport,
    the two paths as device paths)."""
    return ["sh", "-c", SCRIPT, "edgefleet-telemetry", root, agent_path]


class _Dump:
    def __init__(self, text: str) -> None:
        self.heads: Dict[str, str] = {}  # kind -> argument (first of each kind)
        self.files: Dict[str, str] = {}
        self.commands: Dict[str, str] = {}
        self.ran: Set[str] = set()
        self.state: Optional[str] = None
        kind, arg, body = "", "", []  # type: str, str, List[str]
        for line in text.split("\n"):
            if line.startswith(MARK):
                self._close(kind, arg, body)
                kind, _, arg = line[len(MARK):].partition(" ")
                body = []
                if kind not in self.heads:
                    self.heads[kind] = arg
                if kind == "ran":
                    self.ran.add(arg)
            else:
                body.append(line)
        self._close(kind, arg, body)

    def _close(self, kind: str, arg: str, body: List[str]) -> None:
        text = "\n".join(body)
        if kind == "files":
            self._head(body)
        elif kind == "cmd":
            self.commands.setdefault(arg, text[:4096])
        elif kind == "state" and self.state is None:
            self.state = text


    def _head(self, lines: List[str]) -> None:
        """``head -v`` output: "==> PATH <==" then at most 4 KiB of that file, a blank line
        before the next header (a file head could not open has no header: unreadable)."""
        path, body = None, []  # type: Optional[str], List[str]
        for line in lines + ["==> <=="]:
            if line.startswith("==> ") and line.endswith(" <=="):
                if path is not None:
                    if body and body[-1] == "":
                        body.pop()  # the separator head writes before the next header
                    self.files.setdefault(os.path.normpath(path), "\n".join(body)[:4096])
                path, body = line[4:-4], []
            else:
                body.append(line)


class _Incomplete(Exception):
    """The dump lacks a reading the agent would have taken: ask the agent."""


class _RecordedSensors(SensorReader):
    """``SensorReader`` reading a dump instead of the device (same decisions, same output)."""

    def __init__(self, dump: _Dump) -> None:
        self.dump = dump
        super().__init__(sysfs=dump.heads.get("sysfs") or "/sys")

    def _glob(self, pattern: str) -> List[str]:
        pattern = os.path.normpath(pattern)
        return [p for p in self.dump.files if fnmatch.fnmatchcase(p, pattern)]

    def _which_vcgencmd(self, path: Optional[str]) -> Optional[str]:
        return self.dump.heads.get("vcgencmd") or None

    def _read(self, path: str) -> Optional[str]:
        return self.dump.files.get(os.path.normpath(path))

    def _vcgencmd(self, *args: str) -> Optional[str]:
        if self.vcgencmd is None or args[0] in self.vcgencmd_broken:
            return None
        if args[0] not in self.dump.ran:
            raise _Incomplete(args[0])
        out = self.dump.commands.get(args[0])
        if out is None:  # it failed on the device
            self.vcgencmd_broken.add(args[0])
        return out


def _int(text: Optional[str]) -> Optional[int]:
    try:
        return int(str(text).strip())
    except ValueError:
        return None


def _online_cpus(text: Optional[str]) -> Optional[int]:
    """``/sys/devices/system/cpu/online`` ("0-3", "0,2-3") counted: what glibc's
    sysconf(_SC_NPROCESSORS_ONLN), hence the agent's ``os.cpu_count()``, reads."""
    count = 0
    try:
        for part in (text or "").strip().split(","):
            low, _, high = part.partition("-")
            count += int(high or low) - int(low) + 1
    except ValueError:
        return None
    return count or None


def _active(dump: _Dump) -> Any:
    """What ``handle`` adds for telemetry (``active``), or _Incomplete when only the agent
    can say (pending change, ``current`` elsewhere or not a symlink, unreadable state)."""
    from agent.journal import committed_dir, pending_of

    if "root" not in dump.heads:
        return None
    if "current-other" in dump.heads:
        raise _Incomplete("current")
    if "state-exists" not in dump.heads:
        state: Any = {"history": []}
    else:
        if dump.state is None or len(dump.state) > STATE_LIMIT:
            raise _Incomplete("state.json")
        try:
            state = json.loads(dump.state)
        except ValueError:
            raise _Incomplete("state.json") from None
        if not isinstance(state, dict) or not isinstance(state.get("history"), list):
            raise _Incomplete("state.json")
        state["history"] = [e for e in state["history"] if isinstance(e, dict)]
    try:
        pending = pending_of(state)
    except Exception:  # a malformed pending change: the agent reports it
        raise _Incomplete("pending") from None
    if pending is not None:
        raise _Incomplete("pending")
    current = dump.heads.get("current-link")
    if current != committed_dir(state):
        raise _Incomplete("current")
    return dict(state["history"][-1]) if state["history"] else None


def parse(text: str) -> Optional[Dict[str, Any]]:
    """The agent's ``telemetry`` answer from a dump, or None when the agent must answer."""
    from agent.snapshot import assemble

    if not text.startswith(VERSION_LINE):
        return None
    dump = _Dump(text)
    if "no-agent" in dump.heads or "end" not in dump.heads:
        return None
    if "/proc/meminfo" not in dump.files:  # every Linux has it: this device's `head` failed
        return None
    try:
        sensors = _RecordedSensors(dump).read()
        active = _active(dump)
    except _Incomplete:
        return None
    load_fields = (dump.files.get("/proc/loadavg") or "").split()
    try:
        load: Any = [round(float(x), 2) for x in load_fields[:3]]
    except (ValueError, OverflowError):  # round(inf) overflows; "nan" rounds to nan
        load = []
    if not all(math.isfinite(x) for x in load):
        load = []
    if len(load) != 3:
        load = [None, None, None]
    statfs = [_int(x) for x in (dump.heads.get("statfs") or "").split()]
    free = statfs[0] * statfs[1] if len(statfs) == 2 and None not in statfs else None  # type: ignore[operator]
    simulated = os.path.normpath(dump.heads.get("sysfs") or "/sys") != "/sys"
    data = assemble(sensors, simulated, dump.files.get("/proc/meminfo") or "", load,
                    _online_cpus(dump.files.get("/sys/devices/system/cpu/online")), free,
                    dump.files.get("/proc/uptime"))
    data["active"] = active
    return data
