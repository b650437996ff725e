"""agent.shellpoll.parse on recorded dumps: the agent's answer from a shell poll's output, or
None (the agent must answer) whenever the dump is not the plain case or not whole."""

from __future__ import annotations

import json

import pytest

from agent import shellpoll

SYSFS = "/sys"
STATE = {"history": [{"name": "first-crack", "version": "2", "digest": "ab" * 32,
                      "dir": "versions/" + "ab" * 32}]}


def head_v(files: list[tuple[str, str]]) -> list[str]:
    """What ``head -v -c 4096 -- FILES`` writes: a header per file, a blank line between."""
    lines: list[str] = []
    for i, (path, text) in enumerate(files):
        if i:
            lines.append("")
        lines += [f"==> {path} <==", text]
    return lines


def dump(*, thermal: str | None = "77000", throttled_cmd: str | None = "throttled=0x50000",
         vcgencmd: bool = True, ran: tuple[str, ...] = ("get_throttled",),
         state: str | None = json.dumps(STATE), current: str | None = "versions/" + "ab" * 32,
         end: bool = True, extra: str = "") -> str:
    files = [] if thermal is None else [(f"{SYSFS}/class/thermal/thermal_zone0/temp", thermal)]
    files += [(f"{SYSFS}/devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq", khz)
              for cpu, khz in ((1, "1500000"), (0, "2400000"))]
    files += [(f"{SYSFS}/devices/platform/soc/soc:firmware/get_throttled", "50005"),
              ("/proc/meminfo", "MemTotal:        3884096 kB\nMemAvailable:    3011584 kB"),
              ("/proc/loadavg", "0.52 0.31 0.20 1/180 999"), ("/proc/uptime", "12345.67 40000.00"),
              ("/sys/devices/system/cpu/online", "0-3")]
    lines = [shellpoll.VERSION_LINE, f"@@sysfs {SYSFS}", "@@files", *head_v(files), ""]
    if vcgencmd:
        lines.append("@@vcgencmd /usr/bin/vcgencmd")
        for command in ran:
            lines.append(f"@@ran {command}")
            if command == "get_throttled" and throttled_cmd is not None:
                lines += ["@@cmd get_throttled", throttled_cmd]
    lines += ["@@statfs 1000 4096", "@@root"]
    if current is not None:
        lines.append(f"@@current-link {current}")
    if state is not None:
        lines += ["@@state-exists", "@@state", state]
    lines.append(extra)
    if end:
        lines.append("@@end")
    return "\n".join(lines) + "\n"


def test_a_plain_dump_gives_the_agents_answer() -> None:
    data = shellpoll.parse(dump())
    assert data is not None
    sensors = data["sensors"]
    assert sensors["temp_c"] == 77.0 and sensors["throttled"] == 0x50000
    assert sensors["sources"]["throttled"] == "vcgencmd get_throttled"
    assert sensors["throttle_flags"] == {"now": [], "since_boot": ["under_voltage", "throttled"]}
    assert (sensors["freq_mhz_min"], sensors["freq_mhz_max"]) == (1500.0, 2400.0)
    assert data["simulated"] is False and data["cores"] == 4
    assert (data["load_1m"], data["load_15m"]) == (0.52, 0.2)
    assert (data["mem_total_mb"], data["mem_available_mb"]) == (3793, 2941)
    assert data["disk_free_bytes"] == 4_096_000 and data["uptime_s"] == 12345.67
    assert data["active"] == STATE["history"][-1]


def test_a_failed_vcgencmd_falls_back_to_the_firmware_file_as_the_agent_does() -> None:
    data = shellpoll.parse(dump(throttled_cmd=None))
    assert data is not None and data["sensors"]["throttled"] == 0x50005
    assert data["sensors"]["sources"]["throttled"].endswith("soc:firmware/get_throttled")


@pytest.mark.parametrize("why, text", [
    ("truncated: the output was cut", dump(end=False)),
    ("not a poll's output", "Welcome to Raspberry Pi OS\n" + dump()),
    ("no agent installed", shellpoll.VERSION_LINE + "\n@@no-agent\n"),
    ("a change is pending", dump(state=json.dumps(dict(STATE, pending={
        "op": "activate", "phase": "swapped", "entry": {"dir": "versions/x"}})))),
    ("current is not where the history says", dump(current="versions/elsewhere")),
    ("current is not a symlink", dump(current=None, extra="@@current-other")),
    ("state.json cannot be parsed", dump(state="{\"history\": [")),
    ("state.json has no history list", dump(state="[]")),
    ("state.json bigger than the limit", dump(state=" " * (shellpoll.STATE_LIMIT + 1) + "{}")),
    ("an unparsable thermal file the agent would ask measure_temp for", dump(thermal="n/a")),
    ("the device's head read nothing (no -v?)", dump().replace("==> /proc/meminfo <==", "")),
])
def test_anything_but_the_plain_case_is_left_to_the_agent(why: str, text: str) -> None:
    assert shellpoll.parse(text) is None, why


@pytest.mark.parametrize("online, cores", [("0-3", 4), ("0", 1), ("0,2-3", 3), ("", None),
                                           ("x", None)])
def test_cores_are_the_online_cpus_as_sysconf_counts_them(online: str,
                                                          cores: int | None) -> None:
    assert shellpoll._online_cpus(online) == cores  # noqa: SLF001


def test_without_vcgencmd_an_unparsable_thermal_file_is_no_reading() -> None:
    data = shellpoll.parse(dump(thermal="n/a", vcgencmd=False))
    assert data is not None and data["sensors"]["temp_c"] is None


def test_a_hostile_dump_is_bounded_and_cannot_add_sections() -> None:
    flood = dump(thermal="9" * 100_000, vcgencmd=False)
    kept = shellpoll._Dump(flood).files  # noqa: SLF001 - what the parser holds
    assert len(kept[f"{SYSFS}/class/thermal/thermal_zone0/temp"]) == 4096  # as the agent reads
    data = shellpoll.parse(flood)
    assert data is not None and data["sensors"]["temp_c"] is None  # no sensor reads that
    odd = shellpoll.parse(dump(extra="@@file /etc/shadow\nroot:x\n@@unknown thing"))
    assert odd is not None and "root:x" not in json.dumps(odd)


@pytest.mark.parametrize("loadavg", ["nan 0.31 0.20 1/180 999", "0.52 inf 0.20 1/180 999",
                                     "1e999 0.31 0.20 1/180 999"])
def test_a_load_average_that_is_not_a_finite_number_is_no_reading(loadavg: str) -> None:
    """A hostile or broken device's /proc/loadavg: float() reads nan and inf, which would be
    stored as non-JSON NaN/Infinity in the device's facts."""
    data = shellpoll.parse(dump().replace("0.52 0.31 0.20 1/180 999", loadavg))
    assert data is not None and data["load_1m"] is None
