"""The activation journal: state.json is the one record of what is active; ``current`` follows it.

Why: ``current`` (a symlink) and state.json are two files, and no filesystem changes two files
at once. A SIGKILL, an OOM kill or a power cut between the two writes used to leave them naming
different versions, and a kill during the smoke test left an untested model live. So every
change of ``current`` is journalled in state.json::

    {"history": [entry, ...],      committed versions, oldest first; the last one is active
     "pending": null | {"op": "activate" | "rollback", "entry": entry,
                        "phase": "pending" | "smoke_tested", "since": iso time}}

and follows one order: record the intent (``pending``), smoke-test the new version while it is
not live yet (activate only; then record ``smoke_tested``), swap ``current``, record the commit
(the entry joins ``history``, ``pending`` is null). Each record is one atomic write (temp file,
fsync, rename, directory fsync) and the swap is one rename, so after a crash at any instruction
the pair obeys the invariant ``consistent`` checks:

- no pending change: ``current`` -> the last history entry's dir (absent when there is none);
- a pending change: ``current`` -> that dir or the pending entry's dir.

Recovery: a pending change whose process is gone is reverted by the next command that takes
the root lock (``repair``, called by ``locked``), and by ``status``/``telemetry``/``facts``
when the lock is free (``repair_if_idle``): ``current`` goes back to the last committed version,
``pending`` is dropped, an abandoned new version dir is deleted, and the command's result says
so under ``recovered``. The lock tells a dead activation from a running one: the activating
process holds it until it ends, and the kernel releases it when the process dies.

A ``current`` that is not a symlink (a directory someone copied there, say) is EdgeFleet's name
taken by the user's files: the repair under the lock moves it, whole, to
``current.moved-<UTC time>`` next to it (reported as ``moved_aside``, naming that path; nothing
is deleted) and points ``current`` where state.json says. ``status``/``telemetry``/``facts``
never move it: they report it as ``current_error``, saying what the next command will do.

Why revert and never finish: the control plane was told nothing succeeded (its session died
with the agent), so reverting keeps "a failed push leaves the previous version active" true;
finishing would mean re-running the smoke test (onnxruntime, the model's load: seconds on a Pi)
inside whichever command came next, a telemetry poll included. A ``smoke_tested`` change is
reverted too: nothing ever confirmed it. That is Mender's and RAUC's rule for an update that was
never confirmed good.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import signal
import stat
from typing import Any, Dict, Iterator, List, Optional

from agent.fsutil import AgentError, fsync_dir, remove_tree, writing
from agent.protocol import E_INTERNAL, event

CRASH_ENV = "EDGEFLEET_AGENT_CRASH_AT"
PHASES = ("pending", "smoke_tested")
OPS = ("activate", "rollback")


def crash_point(name: str) -> None:
    """Fault injection for tests/faults: SIGKILL this process here when EDGEFLEET_AGENT_CRASH_AT
    names this point, exactly as the OOM killer or a power cut would (no cleanup runs).

    Points: ``staged``, ``pending``, ``smoke`` (the smoke child has its spec), ``smoke_tested``,
    ``swapped``, ``committed`` (activate); ``rollback_pending``, ``rollback_swapped``;
    ``revert_swapped`` (a recovery, between putting ``current`` back and recording it).
    """
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def ref(entry: Optional[Dict[str, Any]]) -> str:
    return "%s@%s" % (entry.get("name"), entry.get("version")) if entry else "nothing"


def pending_of(state: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The state's pending change, or None; a malformed one is an error, never ignored (it
    would hide which dir ``current`` may point at)."""
    pending = state.get("pending")
    if pending is None:
        return None
    if (not isinstance(pending, dict) or pending.get("op") not in OPS
            or pending.get("phase") not in PHASES or not isinstance(pending.get("entry"), dict)):
        raise AgentError(E_INTERNAL, "state.json has a malformed pending change %r; move the "
                         "file away to start a fresh history" % (pending,))
    return pending


def committed_dir(state: Dict[str, Any]) -> Optional[str]:
    """Where ``current`` points when nothing is pending."""
    history = state["history"]
    return history[-1].get("dir") if history else None


def consistent(state: Dict[str, Any], current: Optional[str]) -> bool:
    """The invariant (module docstring) between a state and ``current``'s target."""
    allowed = {committed_dir(state)}
    pending = pending_of(state)
    if pending is not None:
        allowed.add(pending["entry"].get("dir"))
    return current in allowed


def swap_current(store: Any, target: Optional[str]) -> None:
    """Point ``current`` at ``target`` (relative, e.g. versions/x) atomically; None removes it.
    The only code that moves ``current``."""
    if target is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(store.current)
    else:
        tmp = os.path.join(store.root, ".current.tmp-" + os.urandom(4).hex())
        with writing(tmp):
            os.symlink(target, tmp)
        try:
            os.replace(tmp, store.current)
        except BaseException as exc:
            remove_tree(tmp)
            if isinstance(exc, OSError) and exc.errno in (errno.EISDIR, errno.ENOTEMPTY):
                raise AgentError(E_INTERNAL, occupied_message(store)) from None
            raise
    fsync_dir(store.root)


def begin(store: Any, state: Dict[str, Any], op: str, entry: Dict[str, Any]) -> None:
    """Record the intent to make ``entry`` current; ``current`` is not touched yet."""
    state["pending"] = {"op": op, "entry": dict(entry), "phase": "pending", "since": now()}
    store.save_state(state)


def advance(store: Any, state: Dict[str, Any], phase: str) -> None:
    state["pending"]["phase"] = phase
    store.save_state(state)


def commit(store: Any, state: Dict[str, Any], history: List[Dict[str, Any]],
           swapped_point: str) -> None:
    """Swap ``current`` to the pending entry's dir, then record ``history`` as committed.

    A failure leaves the change pending (the invariant holds): the caller reverts it."""
    swap_current(store, state["pending"]["entry"]["dir"])
    crash_point(swapped_point)
    store.save_state(dict(state, history=history, pending=None))
    state["history"], state["pending"] = history, None


def revert(store: Any, state: Dict[str, Any]) -> None:
    """Put ``current`` back on the last committed version, drop the pending change, then delete
    the abandoned version dir unless the history still uses it (a rollback's target does).

    Each step keeps the invariant, so a crash here is reverted again by the next command."""
    from agent.prune import remove_version_dir

    pending = pending_of(state)
    want = committed_dir(state)
    if store.current_target() != want:
        swap_current(store, want)
    crash_point("revert_swapped")
    if pending is not None:
        state["pending"] = None
        store.save_state(state)
        path = store.version_path(pending["entry"])
        used = set(e.get("dir") for e in state["history"])
        if path is not None and pending["entry"].get("dir") not in used:
            remove_version_dir(store, path)


def revert_quietly(store: Any, state: Dict[str, Any]) -> None:
    """``revert`` on the way out of a failed activation: the first error is the one to report,
    and whatever this leaves undone the next command's ``repair`` finishes."""
    with contextlib.suppress(Exception):
        revert(store, state)


def _message(pending: Optional[Dict[str, Any]], was: Optional[str],
             active: Optional[Dict[str, Any]]) -> str:
    if pending is None:
        return ("current pointed at %s but state.json says %s is active (%s): current now "
                "points there" % (was or "nothing", ref(active),
                                  active.get("dir") if active else "no dir"))
    entry = pending["entry"]
    if pending["op"] == "rollback":
        what = "a rollback to %s was interrupted before it was committed" % ref(entry)
    elif pending["phase"] == "smoke_tested":
        what = ("an activation of %s was interrupted after its smoke test passed, before it "
                "was committed" % ref(entry))
    else:
        what = ("an activation of %s was interrupted before it was smoke-tested and committed"
                % ref(entry))
    return "%s (the agent died: a reboot, a power cut, an OOM kill?) and was reverted: %s is " \
        "active" % (what, ref(active))


def occupied(store: Any) -> Optional[str]:
    """Says "a directory" or "a file" when something that is not a symlink is at ``current``."""
    try:
        st = os.lstat(store.current)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return None
    return "a directory" if stat.S_ISDIR(st.st_mode) else "a file"


def occupied_message(store: Any) -> str:
    """What a command that leaves such a ``current`` alone says about it."""
    return ("%s is %s, not the symlink to the active version that EdgeFleet keeps there (were "
            "files copied there by hand?), so it is not what state.json says is active. The next "
            "push, rollback, bench, eval or verify on this device moves it, with everything in "
            "it, to %s and points current at the active version again; or move it away "
            "yourself" % (store.current, occupied(store) or "not a symlink",
                          os.path.join(store.root, "current.moved-<time>")))


def move_aside(store: Any) -> str:
    """Rename what sits at ``current`` to a new ``current.moved-<UTC time>[-n]``: the user's
    files stay, whole, next to it; returns that path."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = os.path.join(store.root, "current.moved-" + stamp)
    path, n = base, 1
    while os.path.lexists(path):  # under the root lock: nobody else picks names here
        n += 1
        path = "%s-%d" % (base, n)
    os.rename(store.current, path)
    fsync_dir(store.root)
    return path


def _moved_message(store: Any, kind: str, moved: str, active: Optional[Dict[str, Any]]) -> str:
    return ("%s was %s, not the symlink EdgeFleet keeps there (were files copied there by "
            "hand?): it was moved, with everything in it, to %s (nothing was deleted) and "
            "current points at %s again (%s). To run those files, build and push them as a "
            "bundle; delete %s when you no longer need it"
            % (store.current, kind, moved, ref(active),
               active.get("dir") if active else "nothing is active", moved))


@contextlib.contextmanager
def locked(store: Any) -> Iterator[None]:
    """The root lock, and with it the journal's repair: whatever a dead process left pending is
    reverted before the caller looks at the state. Every command that reads or changes the
    store's state takes the lock this way (``Store.root_lock`` alone skips the repair)."""
    with store.root_lock():
        repair(store)
        yield


def repair(store: Any) -> Optional[Dict[str, Any]]:
    """Under the root lock: revert a pending change (its process is gone, or we would not hold
    the lock), move aside whatever took ``current``'s place, and point ``current`` where
    state.json says. Returns the report, also kept in ``store.recovered`` and emitted as a
    ``recovered`` event; None when all was in order."""
    state = store.load_state()
    pending = pending_of(state)
    kind = occupied(store)
    was = store.current_target()
    if pending is None and kind is None and was == committed_dir(state):
        return None
    history = state["history"]
    if history and store.version_path(history[-1]) is None:
        raise AgentError(E_INTERNAL, "state.json's active entry has no valid dir (%r); move the "
                         "file away to start a fresh history" % (history[-1].get("dir"),))
    if history and not os.path.isdir(store.version_path(history[-1])) and was is not None \
            and os.path.isdir(os.path.join(store.root, was)):
        # Committed dirs exist (prune deletes only outside the history, after saving it): a
        # missing one while current still points at a real version is a damaged state.json
        # (a flipped byte in a name). Pointing current at it would leave the device with
        # nothing to run, and the next prune would delete the dir current points at now, as
        # outside the history. (With current gone too, a hand's rm: repaired as before, and
        # the next push installs again.)
        raise AgentError(E_INTERNAL, "state.json's active entry %s@%s names %s, which does not "
                         "exist (current points at %s); nothing was changed. Restore state.json"
                         " or move it away to start a fresh history, then push again"
                         % (history[-1].get("name"), history[-1].get("version"),
                            history[-1].get("dir"), was))
    moved = move_aside(store) if kind is not None else None
    revert(store, state)
    store.verifier.cache.save()  # the abandoned dir's unlinks moved cache entries
    active = dict(history[-1]) if history else None
    report = {
        "action": "reverted" if pending is not None else
        "moved_aside" if moved is not None else "repaired",
        "op": pending["op"] if pending is not None else None,
        "phase": pending["phase"] if pending is not None else None,
        "abandoned": dict(pending["entry"]) if pending is not None else None,
        "current_was": was,
        "moved_to": moved,
        "active": active,
    }
    messages = [_moved_message(store, kind, moved, active)] if kind and moved else []
    if pending is not None or moved is None:
        messages.append(_message(pending, was, active))
    report["message"] = "; ".join(messages)
    store.recovered.append(report)
    store.emit(event("recovered", **report))
    return report


def repair_if_idle(store: Any) -> Optional[str]:
    """For commands that do not take the lock (status, telemetry, facts): repair only when
    something is off and nobody holds the lock (a running activation does: leave it alone).

    Never raises: returns what kept it from reading or repairing the state, for ``state_error``.
    """
    import fcntl

    if not os.path.isdir(store.root):
        return None
    try:
        if consistent_committed(store) or occupied(store):
            return None  # occupied: the caller reports it; only a command with the lock moves it
        fd = os.open(os.path.join(store.root, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return None  # an activation is under way; its own process finishes it
            repair(store)
        finally:
            os.close(fd)
    except (AgentError, OSError) as exc:
        return exc.message if isinstance(exc, AgentError) else str(exc)
    return None


def consistent_committed(store: Any) -> bool:
    """True when nothing is pending and ``current`` is where the history says (the cheap check
    every command makes: one small read and one readlink)."""
    state = store.load_state()
    return pending_of(state) is None and store.current_target() == committed_dir(state)
