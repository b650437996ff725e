"""``edgefleet telemetry`` over real SSH, and per-device leases across processes."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pytest

from orchestrator.core.config import get_settings
from orchestrator.fleet.leases import DeviceBusy, acquire, holder_id, release

from ..conftest import Cli
from .test_push_e2e import model_folder, setup_fleet


def test_telemetry_snapshot_is_decoded_and_stored(cli: Cli, sshd_factory,
                                                  tmp_path: Path) -> None:
    hot, cool = sshd_factory(2)
    hot.sim.set_temp(77.0)
    hot.sim.set_throttled(0xE0000)  # the seed's uncooled Pi: capped/throttled/soft limit before
    setup_fleet(cli, tmp_path, [hot, cool])
    snaps = {s["device"]: s for s in cli("telemetry", "pis", "--json").json}
    assert snaps[hot.name]["temp_c"] == 77.0 and snaps[hot.name]["throttled_hex"] == "0xe0000"
    assert set(snaps[hot.name]["throttle_since_boot"]) == {
        "frequency_capped", "throttled", "soft_temp_limit"}
    assert snaps[hot.name]["throttle_now"] == []
    assert snaps[cool.name]["throttled_hex"] == "0x0" and snaps[cool.name]["freq_mhz"] == 2400
    for key in ("load_1m", "mem_available_mb", "disk_free_bytes"):
        assert snaps[cool.name][key] is not None
    # The table's composed text columns stay out of --json: the stored fields carry it.
    assert not {"throttled", "disk_free"} & set(snaps[hot.name])
    table = cli("telemetry", "pis").stdout
    assert "0xe0000" in table and "since boot" in table
    # Stored: the device row now shows the latest reading.
    hot.sim.set_throttled(0x50005)
    cli("telemetry", hot.name)
    shown = cli("devices", "show", hot.name, "--json").json
    assert shown["throttled_hex"] == "0x50005"
    assert set(shown["throttle_flags"]["now"]) == {"under_voltage", "throttled"}


def test_leases_exclude_a_second_operation(cli: Cli, sshd_factory, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_LEASE_WAIT_S", "0")  # fail at once rather than wait for it
    host = sshd_factory(1)[0]
    setup_fleet(cli, tmp_path, [host])
    cli("bundle", "build", model_folder(tmp_path), "--name", "m")
    settings = get_settings()
    other = holder_id()  # e.g. a benchmark started from another terminal
    acquire(settings, host.name, "bench", other)
    busy = cli("push", "m", host.name, "--json", expect=1).json[0]
    assert busy["state"] == "failed" and "busy with a bench" in busy["error"]
    assert "waited 0 s for it (EDGEFLEET_LEASE_WAIT_S)" in busy["error"]
    assert not (host.root / "current").exists()
    release(settings, host.name, other)
    assert cli("push", "m", host.name, "--json").json[0]["state"] == "active"


def test_expired_lease_is_taken_over(home: Path) -> None:
    settings = get_settings()
    acquire(settings, "pi", "push", "crashed-holder", ttl_s=-1)  # already expired
    acquire(settings, "pi", "bench", "me")
    with pytest.raises(DeviceBusy, match="busy with a bench"):
        acquire(settings, "pi", "push", "someone-else")
    release(settings, "pi", "crashed-holder")  # not the holder: no effect
    with pytest.raises(DeviceBusy):
        acquire(settings, "pi", "push", "someone-else")
    release(settings, "pi", "me")
    acquire(settings, "pi", "push", "someone-else")


def test_leases_of_dead_processes_are_freed(home: Path) -> None:
    import os

    from orchestrator.core.hostid import this_host
    from orchestrator.fleet.leases import release_dead_holders

    settings = get_settings()
    host = this_host()
    acquire(settings, "crashed", "bench", f"{host}:999999:dead0000")
    acquire(settings, "alive", "push", f"{host}:{os.getpid()}:live0000")
    acquire(settings, "elsewhere", "push", "other-host:999999:abcd0000")
    assert release_dead_holders(settings) == ["crashed"]
    acquire(settings, "crashed", "push", holder_id())  # free again
    with pytest.raises(DeviceBusy):
        acquire(settings, "alive", "push", holder_id())
    with pytest.raises(DeviceBusy):
        acquire(settings, "elsewhere", "push", holder_id())


def test_a_sweep_frees_only_the_lease_it_read(home: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Between a sweep's read of a dead holder's lease and its delete, a waiting job of this
    host takes the device over (acquire: holder_gone). Before, the sweep then deleted by
    device name: the new holder's lease, so a third operation could drive the device
    alongside it. Injected for real: the takeover commits, through ``acquire``, from inside
    the sweep's own check of the holder."""
    from orchestrator.core.hostid import this_host
    from orchestrator.fleet import leases

    settings = get_settings()
    dead = f"{this_host()}:999999:dead0000"
    new_holder = f"{this_host()}:{os.getpid()}:waiter00"
    leases.acquire(settings, "pi", "bench", dead)
    real_gone = leases.holder_gone

    def gone_and_taken_over(holder: str) -> bool:
        if holder == dead:
            monkeypatch.setattr(leases, "holder_gone", real_gone)
            leases.acquire(settings, "pi", "push", new_holder)  # the waiting job, meanwhile
        return real_gone(holder)

    monkeypatch.setattr(leases, "holder_gone", gone_and_taken_over)
    assert leases.release_dead_holders(settings) == []
    with pytest.raises(DeviceBusy, match=new_holder):
        leases.acquire(settings, "pi", "eval", holder_id())

    # release_held_by: the dead process's expired lease, read, then taken over
    leases.acquire(settings, "pi2", "bench", dead, ttl_s=-60)
    original = leases.as_utc

    def read_then_taken_over(value: datetime) -> datetime:  # its check of each lease read
        monkeypatch.setattr(leases, "as_utc", original)
        leases.acquire(settings, "pi2", "push", new_holder)  # expired: taken over
        return original(value)

    monkeypatch.setattr(leases, "as_utc", read_then_taken_over)
    assert leases.release_held_by(settings, f"{this_host()}:999999", [7]) == []
    with pytest.raises(DeviceBusy, match=new_holder):
        leases.acquire(settings, "pi2", "eval", holder_id())
