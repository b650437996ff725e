"""The start gate (transport.startgate): at most EDGEFLEET_MAX_STARTING commands between their
launch and their first output; a start waits *before* launching, so its silence allowance
counts from its own launch; a slot goes back on first output, finish or abort, or expires with
its allowance; a cancelled connection stops waiting. Real local processes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from orchestrator.core.errors import TransportError
from orchestrator.transport import startgate
from orchestrator.transport.base import Channel, Target
from orchestrator.transport.local import LocalConnection

TARGET = Target("box", "localhost", connection="local")
WAIT_FOR_A_LINE = ["sh", "-c", "read line; echo \"$line\"; cat >/dev/null"]


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> startgate.StartGate:
    monkeypatch.setenv(startgate.MAX_STARTING_ENV, "2")
    return startgate.the_gate()


def until(condition: Callable[[], bool], what: str, limit_s: float = 20.0) -> None:
    """Wait for ``condition`` (polled), failing with ``what`` after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


class Starter(threading.Thread):
    """``conn.start(argv)`` in a thread: its channel, or the error it raised."""

    def __init__(self, conn: LocalConnection, argv: list[str], timeout: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.conn, self.argv, self.timeout = conn, argv, timeout
        self.channel: Channel | None = None
        self.error: BaseException | None = None
        self.launched_at = 0.0
        self.start()

    def run(self) -> None:
        try:
            self.channel = self.conn.start(self.argv, timeout=self.timeout)
            self.launched_at = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            self.error = exc


def test_at_most_the_limit_start_and_a_first_output_lets_the_next_go(
        gate: startgate.StartGate) -> None:
    conn = LocalConnection(TARGET)
    first = conn.start(WAIT_FOR_A_LINE, timeout=30)
    second = conn.start(WAIT_FOR_A_LINE, timeout=30)
    assert gate.starting() == 2
    third = Starter(conn, WAIT_FOR_A_LINE)
    until(lambda: gate.waiting == 1, "the third start waits at the gate")
    assert third.channel is None  # not launched: no process, no allowance running
    first.write(b"hello\n")
    assert first.readline() == "hello\n"  # its first output: its slot goes back
    third.join(20)
    assert third.channel is not None and gate.starting() == 2
    for channel in (second, third.channel):  # finish and abort give slots back too
        channel.abort()
    first.abort()
    assert gate.starting() == 0


def test_the_allowance_counts_from_the_launch_not_from_the_queue(
        gate: startgate.StartGate) -> None:
    """Queued for longer than its whole silence timeout, a start still gets all of it."""
    conn = LocalConnection(TARGET)
    holders = [conn.start(WAIT_FOR_A_LINE, timeout=30) for _ in range(2)]
    queued = Starter(conn, ["sh", "-c", "sleep 0.3; echo up"], timeout=1.0)
    until(lambda: gate.waiting == 1, "the start waits at the gate")
    time.sleep(1.5)  # the fault: a queue longer than the queued command's 1 s timeout
    holders[0].write(b"go\n")
    assert holders[0].readline() == "go\n"
    queued.join(20)
    assert queued.channel is not None
    assert queued.channel.readline() == "up\n"
    assert queued.channel.finish()[0] == 0
    for channel in holders:
        channel.abort()


def test_a_slot_never_given_back_expires_with_its_allowance(gate: startgate.StartGate) -> None:
    conn = LocalConnection(TARGET)
    # Launched and forgotten (never read, finished or aborted): silent, 0.5 s allowance each.
    dropped = [conn.start(WAIT_FOR_A_LINE, timeout=0.5) for _ in range(2)]
    late = Starter(conn, ["echo", "late"], timeout=5)
    late.join(20)
    assert late.channel is not None and late.channel.readline() == "late\n"
    late.channel.finish()
    for channel in dropped:
        channel.abort()


def test_a_cancelled_connection_stops_waiting_and_launches_nothing(
        gate: startgate.StartGate) -> None:
    busy, cancelled = LocalConnection(TARGET), LocalConnection(TARGET)
    holders = [busy.start(WAIT_FOR_A_LINE, timeout=30) for _ in range(2)]
    waiting = Starter(cancelled, ["echo", "never"])
    until(lambda: gate.waiting == 1, "the start waits at the gate")
    cancelled.cancel()
    waiting.join(20)
    assert isinstance(waiting.error, TransportError)
    assert "not started: the operation was cancelled" in str(waiting.error)
    assert waiting.channel is None and gate.starting() == 2
    for channel in holders:
        channel.abort()
    assert gate.starting() == 0


def test_the_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(startgate.MAX_STARTING_ENV, "5")
    assert startgate.the_gate().limit == 5
    monkeypatch.setenv(startgate.MAX_STARTING_ENV, "0")  # 0: no limit
    assert startgate.the_gate().limit >= 1 << 30
    monkeypatch.setenv(startgate.MAX_STARTING_ENV, "many")
    assert startgate.the_gate().limit == startgate.DEFAULT_MAX_STARTING


def test_leaving_a_connection_gives_back_what_its_silent_commands_held(
        gate: startgate.StartGate) -> None:
    """A command that ended without output, its channel never read or finished (an error
    path), held its slot until its allowance passed: a minute, at the defaults."""
    with LocalConnection(TARGET) as conn:
        ended = [conn.start(["true"], timeout=60) for _ in range(2)]
        for channel in ended:
            channel.proc.wait()  # ended, silent, unread
        assert gate.starting() == 2
    assert gate.starting() == 0
