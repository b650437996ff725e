"""A process holding a device lease is frozen (SIGSTOP) or killed (SIGKILL), for real.

Leases are heartbeated: a live holder keeps its device however long it works, a frozen one
loses it within its TTL (any process, on any host, may then take it), and a killed one on this
host is detected at once by its pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest

from orchestrator.core.config import Settings
from orchestrator.core.db import get_engine, session_scope
from orchestrator.core.models import DeviceLease
from orchestrator.fleet.leases import DeviceBusy, acquire, release

from .procs import wait_until

HOLDER = """
import sys
from orchestrator.core.config import Settings
from orchestrator.fleet.leases import leased
with leased(Settings(), "pi1", "bench") as holder:
    print(holder, flush=True)
    sys.stdin.read()  # hold until stdin closes (or we are stopped / killed)
"""


@pytest.fixture
def holder(home: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    get_engine(Settings(home=home))
    env = dict(os.environ, EDGEFLEET_HOME=str(home), EDGEFLEET_LEASE_TTL_S="1.5")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    holder_id = proc.stdout.readline().strip()
    assert holder_id.split(":")[1] == str(proc.pid)
    yield proc, holder_id
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
    proc.wait(30)


def _expiry(settings: Settings):  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        lease = session.get(DeviceLease, "pi1")
        return None if lease is None else (lease.holder, lease.expires_at.replace(tzinfo=UTC))


def _take(settings: Settings) -> bool:
    try:
        acquire(settings, "pi1", "push", "taker:1:x")
    except DeviceBusy:
        return False
    return True


def test_a_live_holder_keeps_its_lease_past_the_ttl(home: Path, holder) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(home=home, lease_ttl_s=1.5)
    _, holder_id = holder
    seen = {_expiry(settings)}
    # Three renewals observed: the lease has outlived two TTLs since it was taken.
    wait_until(lambda: seen.add(_expiry(settings)) or len(seen) >= 4, "three heartbeats", 30)
    assert {h for h, _ in seen} == {holder_id}
    assert not _take(settings)


def test_a_frozen_holder_loses_its_lease_within_the_ttl(home: Path, holder) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(home=home, lease_ttl_s=1.5)
    proc, holder_id = holder
    assert not _take(settings)
    proc.send_signal(signal.SIGSTOP)
    wait_until(lambda: _take(settings), "the frozen holder's lease to expire", 30)
    assert _expiry(settings)[0] == "taker:1:x"  # type: ignore[index]
    # Thawed, the old holder does not take the lease back, and its block fails (LeaseLost,
    # the traceback's exit 1) whether its heartbeat or the block's end notices first.
    proc.send_signal(signal.SIGCONT)
    proc.stdin.close()  # type: ignore[union-attr]
    assert proc.wait(30) == 1
    assert _expiry(settings)[0] == "taker:1:x"  # type: ignore[index]
    release(settings, "pi1", "taker:1:x")


def test_a_killed_holder_on_this_host_is_detected_at_once(home: Path, holder) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(home=home)  # the default TTL: a minute; nobody waits for it here
    proc, holder_id = holder
    assert not _take(settings)
    proc.kill()
    proc.wait(30)
    assert _take(settings)
    assert _expiry(settings)[0] == "taker:1:x"  # type: ignore[index]


WORKER = """
import sys, threading
from orchestrator.core.config import Settings
from orchestrator.fleet.leases import LeaseLost, leased
from orchestrator.transport import adopt, connect
from orchestrator.transport.base import Target

settings = Settings()
device = Target(name="pi1", address="localhost", connection="local")
# Lease-free, as the server's telemetry poll of the same device: it must outlive the loss.
poll_conn = connect(device, settings, 600)
poll = poll_conn.start(["cat"])
# Opened before the lease and adopted in it, as a CLI push's early session: it must not.
early = connect(device, settings, 600)
early_cmd = early.start(["sleep", "600"])
early_end = []
threading.Thread(target=lambda: early_end.append(early_cmd.readline()), daemon=True).start()
try:
    with leased(settings, "pi1", "bench") as holder, connect(device, settings, 600) as conn:
        adopt(early)
        running = conn.start(["sleep", "600"])  # the device busy with our work
        print(holder, flush=True)
        running.readline()
except LeaseLost as exc:
    print("lost:", exc, flush=True)
    poll.write(b"poll alive\\n")
    print("poll:", poll.readline().strip(), flush=True)
    early_cmd.finish()  # ended by the abort, not by its 600 s
    print("early ended", flush=True)
    sys.exit(3)
"""


def test_a_thawed_holder_whose_lease_was_taken_stops_its_device_work(home: Path) -> None:
    """Frozen past the TTL, then thawed after another process took the device: the old
    holder's heartbeat finds the lease gone, aborts its own connections to the device (two
    operations must never drive one Pi at once) and fails saying why, instead of working on.
    Its own: those opened under that lease or adopted into it, not a lease-free telemetry
    poll of the same device that this process also runs."""
    settings = Settings(home=home, lease_ttl_s=1.5)
    get_engine(settings)
    env = dict(os.environ, EDGEFLEET_HOME=str(home), EDGEFLEET_LEASE_TTL_S="1.5")
    proc = subprocess.Popen([sys.executable, "-c", WORKER], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert proc.stdout is not None
        holder_id = proc.stdout.readline().strip()
        assert holder_id.split(":")[1] == str(proc.pid)
        proc.send_signal(signal.SIGSTOP)
        wait_until(lambda: _take(settings), "the frozen holder's lease to expire", 30)
        proc.send_signal(signal.SIGCONT)
        out, _ = proc.communicate(timeout=60)  # well before the sleep's 600 s
        assert proc.returncode == 3, out
        assert out.startswith("lost: pi1: stopped: its lease was taken"), out
        assert "poll: poll alive\n" in out and out.endswith("early ended\n"), out
        assert _expiry(settings)[0] == "taker:1:x"  # type: ignore[index]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(30)


def test_a_renewal_racing_a_normal_release_aborts_nothing(home: Path) -> None:
    """The heartbeat takes its list of leases, then the block releases one (its work done) and
    the next operation leases the device again under another holder id: the stale renewal
    finds no row. That is a release, not a lost lease: the next operation's connection to the
    device must live on."""
    from orchestrator.fleet import leases
    from orchestrator.fleet.leases import leased
    from orchestrator.transport import connect
    from orchestrator.transport.base import Target

    settings = Settings(home=home)
    get_engine(settings)
    with leased(settings, "pi1", "push") as first:
        pass  # done, released
    device = Target(name="pi1", address="localhost", connection="local")
    with leased(settings, "pi1", "bench"), connect(device, settings, 60) as conn:
        running = conn.start(["cat"])
        leases._renew([(("pi1", first), settings)])  # the beat that began before the release
        running.write(b"still here\n")
        assert running.readline() == "still here\n"
        running.close_input()
        assert running.finish()[0] == 0


ENDING = """
import sys
from orchestrator.core.config import Settings
from orchestrator.fleet.leases import LeaseLost, leased
try:
    with leased(Settings(), "pi1", "push") as holder:
        print(holder, flush=True)
        sys.stdin.readline()  # the device's answer, already read: the block ends at once
    print("done", flush=True)
except LeaseLost as exc:
    print("lost:", exc, flush=True)
"""


def test_a_block_ending_before_the_next_heartbeat_still_sees_its_lease_lost(home: Path) -> None:
    """The lease was taken while its holder did not renew it (frozen past the TTL: here the
    takeover is written directly, and the TTL is a minute, so no heartbeat comes in between),
    then the holder's block ends at once. It used to end as a success; the block's end now
    asks the database, and the operation fails saying why."""
    settings = Settings(home=home)
    get_engine(settings)
    env = dict(os.environ, EDGEFLEET_HOME=str(home), EDGEFLEET_LEASE_TTL_S="60")
    proc = subprocess.Popen([sys.executable, "-c", ENDING], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        holder_id = proc.stdout.readline().strip()
        with session_scope(settings) as session:
            lease = session.get(DeviceLease, "pi1")
            assert lease is not None and lease.holder == holder_id
            lease.holder = "taker:1:x"  # what a takeover after its expiry writes
            session.add(lease)
        out, _ = proc.communicate("answer\n", timeout=60)
        assert out.startswith("lost: pi1: stopped: its lease was taken"), out
        assert _expiry(settings)[0] == "taker:1:x"  # type: ignore[index]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
