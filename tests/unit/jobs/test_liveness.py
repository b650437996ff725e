"""Job heartbeats and the sweep any worker runs (issue 14 item 5), and a job's wait for a busy
device, on the real database of the run (SQLite, or PostgreSQL in the PostgreSQL run)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError
from sqlmodel import select

from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import EdgeFleetError
from orchestrator.core.models import Deployment, DeviceLease, Job, Run
from orchestrator.fleet import leases
from orchestrator.jobs import liveness, queue
from orchestrator.measure.run_lifecycle import close_runs
from tests.faults.procs import wait_until

OTHER = "lab-b.example:4242:abcd1234"  # a worker on another host: its pid cannot be checked


def _job(settings: Settings, worker: str, heartbeat_age_s: float | None, **fields) -> int:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    beat = None if heartbeat_age_s is None else now - timedelta(seconds=heartbeat_age_s)
    with session_scope(settings) as session:
        job = Job(kind="bench", state="running", targets="pi3", worker=worker,
                  started_at=now - timedelta(minutes=10), heartbeat_at=beat, **fields)
        session.add(job)
        session.flush()
        return job.id  # type: ignore[return-value]


class Locker:
    """Another process holding SQLite's write lock on ``settings``' database: ``lock()``
    takes it (returning once held), ``unlock()`` gives it back and ends the process."""

    def __init__(self, settings: Settings) -> None:
        import subprocess
        import sys

        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], "
             "isolation_level=None); sys.stdin.readline(); c.execute('BEGIN EXCLUSIVE'); "
             "print('locked', flush=True); sys.stdin.readline()",
             str(settings.home / "edgefleet.db")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _say(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def lock(self) -> None:
        self._say()
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "locked\n"

    def unlock(self) -> None:
        if self.proc.poll() is None:
            self._say()
        assert self.proc.wait(30) == 0


@contextmanager
def retries_seen() -> Iterator[threading.Event]:
    """Set once ``queue`` logs that it is retrying a write (it met the lock)."""
    seen = threading.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "retrying" in record.getMessage():
                seen.set()

    handler = Seen()
    logging.getLogger(queue.__name__).addHandler(handler)
    try:
        yield seen
    finally:
        logging.getLogger(queue.__name__).removeHandler(handler)


def test_a_job_of_a_silent_worker_on_another_host_is_interrupted_and_its_leases_freed(
        home: Path) -> None:
    settings = Settings(home=home, job_ttl_s=30)
    dead = _job(settings, OTHER, heartbeat_age_s=31)
    alive = _job(settings, "lab-c.example:99:ffff0000", heartbeat_age_s=2)
    with session_scope(settings) as session:
        run = Run(bundle_name="fc", bundle_version="1", bundle_digest="d" * 64, targets="pi3",
                  job_id=dead, state="running", created_by="tester")
        session.add(run)
        session.add(Deployment(device_name="pi3", operation="push", job_id=dead))
    leases.acquire(settings, "pi3", "bench", "lab-b.example:4242:9999aaaa", job_id=dead)
    leases.acquire(settings, "pi4", "push", "lab-c.example:99:1111bbbb", job_id=alive)

    assert liveness.sweep(settings) == [dead]
    assert liveness.sweep(settings) == []  # marked once, whoever sweeps again
    with session_scope(settings) as session:
        job = session.get(Job, dead)
        assert job is not None and job.state == "interrupted"
        assert job.error is not None and "the worker running it (lab-b.example:4242:abcd1234) " \
            "stopped renewing its heartbeat" in job.error
        assert session.get(Job, alive).state == "running"  # type: ignore[union-attr]
        assert session.exec(select(Run)).one().state == "interrupted"
        assert session.exec(select(Deployment)).one().state == "interrupted"
        held = {lease.device_name for lease in session.exec(select(DeviceLease))}
    assert held == {"pi4"}  # the dead worker's device is free, the live one's is not


def test_a_job_is_judged_by_the_ttl_of_the_process_beating_it(home: Path) -> None:
    """A worker started with EDGEFLEET_JOB_TTL_S=120 beats every 30 s; a server sweeping with
    a TTL of 30 s used to call its jobs dead 31 s after a beat, interrupt them and free their
    devices. Each beat now says when it lapses, by the beating process's TTL."""
    long_ttl, sweeper = Settings(home=home, job_ttl_s=120), Settings(home=home, job_ttl_s=30)
    alive = _job(long_ttl, OTHER, heartbeat_age_s=None)
    lapsed = _job(long_ttl, "lab-c.example:99:ffff0000", heartbeat_age_s=None)
    assert liveness.beat(long_ttl, [alive, lapsed]) == 2
    with session_scope(long_ttl) as session:
        for job_id, age in ((alive, 60), (lapsed, 121)):  # seconds since their last beat
            job = session.get(Job, job_id)
            assert job is not None and job.heartbeat_at and job.heartbeat_expires_at
            shift = timedelta(seconds=age)
            job.heartbeat_at, job.heartbeat_expires_at = (job.heartbeat_at - shift,
                                                          job.heartbeat_expires_at - shift)
            session.add(job)
    assert liveness.sweep(sweeper) == [lapsed]
    with session_scope(long_ttl) as session:
        assert session.get(Job, alive).state == "running"  # type: ignore[union-attr]


def test_one_stalled_job_does_not_free_the_leases_of_its_live_process_other_jobs(
        home: Path) -> None:
    """A live worker runs two jobs; one could not record its end (its heartbeat stopped with
    it), the other benches on, renewing its lease. The sweep interrupts the first and frees
    its device, not the second's: the worker is alive, so its other leases are still its own
    (it used to free every lease of the process, and the bench then lost its device)."""
    settings = Settings(home=home, job_ttl_s=30)
    stalled = _job(settings, "lab-b.example:4242:abcd1234", heartbeat_age_s=31)
    benching = _job(settings, "lab-b.example:4242:abcd1234", heartbeat_age_s=2)
    leases.acquire(settings, "pi3", "push", "lab-b.example:4242:1111aaaa", job_id=stalled)
    leases.acquire(settings, "pi4", "bench", "lab-b.example:4242:2222bbbb", job_id=benching)
    assert liveness.sweep(settings) == [stalled]
    with session_scope(settings) as session:
        held = {lease.device_name for lease in session.exec(select(DeviceLease))}
    assert held == {"pi4"}
    assert leases.renew(settings, "pi4", "lab-b.example:4242:2222bbbb")  # still the bench's


@pytest.mark.sqlite_only  # the lock is SQLite's; PostgreSQL's rows lock one by one
def test_a_job_end_is_recorded_through_a_database_busy_past_its_timeout(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holds the SQLite write lock longer than the busy timeout (here 0.2 s):
    the first attempt to record the job's end fails with "database is locked"; it is retried,
    and recorded once the lock is gone, instead of the job staying "running" until a sweep
    calls its finished work interrupted."""
    from orchestrator.core import db
    from orchestrator.jobs import execute

    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 200)
    settings = Settings(home=home)
    job_id = _job(settings, "lab-b.example:4242:abcd1234", heartbeat_age_s=1)
    locker = Locker(settings)
    locker.lock()
    with retries_seen() as retried:
        try:
            done = threading.Thread(target=queue.finish_job, args=(
                settings, job_id, execute.JobOutcome("succeeded", {"ok": 1})))
            done.start()
            assert retried.wait(60)  # the first attempt met the lock
        finally:
            locker.unlock()
        done.join(60)
        assert not done.is_alive()
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == "succeeded" and job.result == {"ok": 1}


def test_expired_leases_are_deleted_by_the_sweep(home: Path) -> None:
    settings = Settings(home=home)
    leases.acquire(settings, "pi1", "push", OTHER, ttl_s=-1)
    leases.acquire(settings, "pi2", "push", OTHER)
    liveness.sweep(settings)
    with session_scope(settings) as session:
        assert [lease.device_name for lease in session.exec(select(DeviceLease))] == ["pi2"]


def test_a_job_being_run_is_heartbeated(home: Path) -> None:
    settings = Settings(home=home, job_ttl_s=0.4)  # a beat every 0.1 s
    job_id = _job(settings, OTHER, heartbeat_age_s=60)

    def beat_at() -> datetime | None:
        with session_scope(settings) as session:
            return session.get(Job, job_id).heartbeat_at  # type: ignore[union-attr]

    with liveness.beating(settings, job_id):
        first = beat_at()
        assert first is not None and datetime.now(UTC) - first < timedelta(seconds=5)
        wait_until(lambda: (beat_at() or first) > first, "a second heartbeat", 30)
        assert liveness.sweep(settings) == []


def test_a_job_marked_interrupted_elsewhere_is_stopped_here_and_a_held_one_never_swept(
        home: Path) -> None:
    """This process froze past the TTL (a stalled VM): another worker's sweep marked its job
    interrupted. Thawed, its heartbeat finds that and sets the job's cancel flag, so the work
    stops at its next boundary instead of writing on; its run stays interrupted. And the sweep
    a process runs itself never marks a job it is renewing (alive, however old the row)."""
    settings = Settings(home=home, job_ttl_s=0.4)
    job_id = _job(settings, OTHER, heartbeat_age_s=60)
    with session_scope(settings) as session:
        run = Run(bundle_name="fc", bundle_version="1", bundle_digest="d" * 64, targets="pi3",
                  job_id=job_id, state="running", created_by="tester")
        session.add(run)
        session.flush()
        run_id = run.id
    stop = threading.Event()
    with liveness.beating(settings, job_id, stop):
        with session_scope(settings) as session:  # its row aged past the TTL meanwhile
            session.get(Job, job_id).heartbeat_at = datetime.now(UTC) - timedelta(minutes=5)  # type: ignore[union-attr]
        assert liveness.sweep(settings) == []  # held here: not swept by this process
        with session_scope(settings) as session:  # another worker's sweep, as it writes it
            queue.interrupt(session, [session.get(Job, job_id)], lambda job: "gone")  # type: ignore[list-item]
        assert stop.wait(30), "the job's work was not told to stop"
    with session_scope(settings) as session:
        stored = session.get(Run, run_id)
        session.expunge(stored)
    close_runs(settings, [stored], [], cancelled=False)  # type: ignore[list-item]
    with session_scope(settings) as session:
        assert session.get(Run, run_id).state == "interrupted"  # type: ignore[union-attr]


def test_a_heartbeat_outlives_an_unexpected_error(home: Path) -> None:
    """One renewal failing with anything (a pool timeout, a driver bug) must not end the
    thread: a live process would look dead to every other worker from then on."""
    from orchestrator.core.heartbeat import Heartbeat

    calls: list[int] = []
    second = threading.Event()

    def renew(held: list[tuple[str, Settings]]) -> None:
        calls.append(len(held))
        if len(calls) == 1:
            raise RuntimeError("QueuePool limit reached")
        second.set()

    beat = Heartbeat("test-heartbeat", lambda s: 0.2, renew)
    beat.hold(Settings(home=home), "x")
    try:
        assert second.wait(30), "no renewal after the failing one"
    finally:
        beat.drop("x")


def _policy(seen: list[str | None], wait_s: float = 60.0,
            stop: threading.Event | None = None) -> leases.Waiting:
    def check(device: str) -> None:
        if stop is not None and stop.is_set():
            raise EdgeFleetError(f"{device}: cancelled while waiting")

    return leases.Waiting(12, wait_s, lambda device, text: seen.append(text), check,
                          poll_s=0.02)


def test_a_job_waits_for_a_busy_device_and_says_for_what(home: Path) -> None:
    settings = Settings(home=home)
    leases.acquire(settings, "pi3", "bench", "me:1:bench", job_id=11)
    seen: list[str | None] = []
    got: list[str] = []

    def take() -> None:
        with leases.waiting_as(_policy(seen)), leases.leased(settings, "pi3", "push") as h:
            got.append(h)

    taker = threading.Thread(target=take)
    taker.start()
    wait_until(lambda: seen, "the waiting job to say so", 30)
    assert seen == ["waiting for pi3: bench #11"]
    leases.release(settings, "pi3", "me:1:bench")
    taker.join(30)
    assert got and seen == ["waiting for pi3: bench #11", None]
    with session_scope(settings) as session:
        assert session.exec(select(DeviceLease)).all() == []  # released after its block


def test_the_wait_is_bounded_and_cancellable(home: Path) -> None:
    settings = Settings(home=home)
    leases.acquire(settings, "pi3", "bench", "me:1:bench", job_id=11)
    waited = r"busy with a bench \(job #11\).*waited 0.1 s"
    with leases.waiting_as(_policy([], wait_s=0.1)), \
            pytest.raises(leases.DeviceBusy, match=waited), \
            leases.leased(settings, "pi3", "push"):
        pass
    stop = threading.Event()
    stop.set()
    with pytest.raises(EdgeFleetError, match="cancelled while waiting"):
        leases.acquire_waiting(settings, "pi3", "push", "me:2:push", _policy([], stop=stop))
    # Outside a job, busy is an error at once, as before.
    with pytest.raises(leases.DeviceBusy):
        leases.acquire_waiting(settings, "pi3", "push", "me:2:push", None)


@pytest.mark.sqlite_only  # the lock is SQLite's; PostgreSQL's rows lock one by one
def test_a_release_failing_on_a_busy_database_does_not_undo_the_work(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holds the SQLite write lock past the busy timeout (0.2 s) while a
    leased block ends: the release fails "database is locked". Before, that error replaced
    the block's outcome (a push that activated was recorded "failed unexpectedly" and its
    device kept the old version); now the block's outcome stands and the lease, no longer
    renewed, expires by itself."""
    from orchestrator.core import db

    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 200)
    settings = Settings(home=home, lease_ttl_s=30)
    leases.acquire(settings, "warm-up", "push", OTHER)  # the schema exists before the lock
    locker = Locker(settings)
    try:
        with leases.leased(settings, "pi", "push") as holder:
            locker.lock()
            outcome = "activated"
        assert outcome == "activated"  # reached: the failed release raised nothing
    finally:
        locker.unlock()
    with session_scope(settings) as session:
        lease = session.get(DeviceLease, "pi")
        assert lease is not None and lease.holder == holder  # left to expire
    assert not leases._heartbeat.holds(("pi", holder))


@pytest.mark.sqlite_only  # the lock is SQLite's
def test_a_job_is_heartbeated_until_its_end_is_recorded(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recording a job's end waits on a database another process holds locked past the busy
    timeout. Before, the job's heartbeat stopped with its work, so a sweep (its process's own
    scheduler, every second) called the finished job interrupted meanwhile and the outcome
    was dropped; now it beats until the end is recorded."""
    from orchestrator.core import db
    from orchestrator.jobs import execute, runner

    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 200)
    settings = Settings(home=home)
    job_id = _job(settings, "this-worker", heartbeat_age_s=0)  # claimed, running
    locker = Locker(settings)

    def work_then_lock(settings_: Settings, ctx, params, targets):  # type: ignore[no-untyped-def]
        locker.lock()
        return execute.JobOutcome("succeeded", {"ok": 1})

    monkeypatch.setitem(execute.EXECUTORS, "bench", work_then_lock)
    done = threading.Thread(target=runner.run_claimed, args=(settings, job_id))
    with retries_seen() as retried:
        try:
            done.start()
            assert retried.wait(60)  # recording the end met the lock
            assert liveness._heartbeat.holds(job_id)  # and the job is still heartbeated
        finally:
            locker.unlock()
            done.join(60)
    assert not done.is_alive() and not liveness._heartbeat.holds(job_id)
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == "succeeded" and job.result == {"ok": 1}


def test_a_beat_renews_every_lease_of_the_process_in_one_statement(home: Path) -> None:
    """At forks 200 on SQLite, one write per lease per beat queued 200 renewals at the write
    gate one after another, and leases of a live process expired; its own sweep then freed
    them. One UPDATE renews them all; the sweep spares leases this process renews."""
    from sqlalchemy import event

    from orchestrator.core.db import get_engine

    settings = Settings(home=home, lease_ttl_s=30)
    pairs = [(f"pi{i}", f"{OTHER}-{i}") for i in range(50)]
    for device, holder in pairs:
        leases.acquire(settings, device, "telemetry", holder, ttl_s=-1)  # all expired
    leases.acquire(settings, "gone", "push", "someone:1:2", ttl_s=-1)
    statements: list[str] = []

    me = threading.get_ident()  # not the heartbeat thread's own beats

    def count(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("UPDATE") and threading.get_ident() == me:
            statements.append(statement)

    engine = get_engine(settings)
    event.listen(engine, "before_cursor_execute", count)
    try:
        for pair in pairs:
            leases._heartbeat.hold(settings, pair)
        assert leases.release_expired(settings) == ["gone"]  # this process renews the rest
        leases._renew([(pair, settings) for pair in pairs] + [(("pi0", "not-mine"), settings)])
    finally:
        for pair in pairs:
            leases._heartbeat.drop(pair)
        event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 1, statements
    with session_scope(settings) as session:
        now = datetime.now(UTC)
        rows = session.exec(select(DeviceLease)).all()
        assert len(rows) == 50 and all(row.expires_at > now for row in rows)


@contextmanager
def database_away(settings: Settings, request: pytest.FixtureRequest,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The run's database out of this process's reach for the block, for real: on SQLite
    another process holds its write lock past the busy timeout (0.2 s here); on PostgreSQL
    the database refuses connections and this process's are terminated."""
    from orchestrator.core import db

    url = request.getfixturevalue("database_url")
    if url is None:
        monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 200)
        db.forget_engines(keep=set())  # new connections, with the short busy timeout
        locker = Locker(settings)
        locker.lock()
        try:
            yield
        finally:
            locker.unlock()
        return
    server, name = request.getfixturevalue("pg"), url.rsplit("/", 1)[1]
    server.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    server.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   f"WHERE datname = '{name}'")
    try:
        yield
    finally:
        server.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def test_after_an_outage_heartbeats_are_judged_only_once_live_processes_could_renew(
        home: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """During a database outage longer than the TTL every process's beats fail; when it
    returns, the first sweep used to mark every other host's running jobs interrupted (and
    free their devices) before they could beat again. Now a process that just regained the
    database waits one TTL of steady contact before judging; then a job still silent is
    interrupted as before."""
    settings = Settings(home=home, job_ttl_s=1, lease_ttl_s=1)
    own = _job(settings, "this-host:1:aaaa0000", heartbeat_age_s=0)
    other = _job(settings, OTHER, heartbeat_age_s=5)  # its beats failed during the outage
    leases.acquire(settings, "pi3", "bench", "lab-b.example:4242:9999aaaa", ttl_s=60,
                   job_id=other)
    with database_away(settings, request, monkeypatch), pytest.raises(OperationalError):
        liveness.beat(settings, [own])  # this process meets the outage

    assert liveness.sweep(settings) == []  # just regained: the other host may be about to beat
    with session_scope(settings) as session:
        assert session.get(Job, other).state == "running"  # type: ignore[union-attr]
        assert session.exec(select(DeviceLease)).one().device_name == "pi3"
    # One TTL later: jobs still silent are judged (``own`` too: nothing here renews it).
    assert sorted(wait_until(lambda: liveness.sweep(settings), "a sweep after one TTL of "
                             "contact", timeout=30)) == [own, other]
