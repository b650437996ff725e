"""``session``: several requests over one agent process, blobs streamed in between.

Why: a push used to be two agent processes (plan, then activate) plus an SFTP upload. Each
process costs an sshd session, a login shell and a Python start (on a Pi 3, most of a second),
and the upload was hashed a second time after it landed. In a session the control plane sends:

    {"v":1,"command":"plan","input":{...}}\\n              -> events, one result line
    {"v":1,"command":"receive","input":{"sha256":..,"size":N,"path":..}}\\n  + N raw bytes
                                                          -> one result line
    {"v":1,"command":"activate","input":{...}}\\n          -> events, one result line

and closes stdin to end it. ``receive`` hashes while it writes ``incoming/<sha>.<owner>.part``
(a name of this process's own, agent.parts), fsyncs, and only then renames the blob into place;
a mismatch deletes the .part and names the file. A link that drops mid-blob keeps the .part:
the next session's ``plan`` offers its bytes (``resume``) and that ``receive`` carries
``"offset"``, so only the rest is sent. A failed ``receive`` ends the session (the byte stream
can no longer be trusted to be in step).
Requests are answered strictly in order, so the control plane may send several ``receive``s
before reading their results (orchestrator.fleet.agentclient.send_blobs pipelines up to 32).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from typing import IO, Any, Callable, Dict, Optional, Tuple

from agent import journal
from agent.activation import BLOB_MODE
from agent.fsutil import AgentError, fsync_dir, writing
from agent.hashcache import RACY_WINDOW_NS
from agent.parts import Parts
from agent.protocol import (
    E_BAD_INPUT,
    E_NO_SPACE,
    E_VERIFY_FAILED,
    PROTOCOL_VERSION,
    is_sha256,
    result_error,
    result_ok,
)
from agent.store import Store

RECEIVE_CHUNK = 1 << 20
# The longest request line read: an activate's or dataset's manifest (10^4 files: ~2 MB).
MAX_REQUEST_LINE = 32 << 20
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, named there only from Python 3.10
PIPE_SIZE = 1 << 20  # /proc/sys/fs/pipe-max-size's default: allowed without privileges
WRITEBACK_EVERY = 8 << 20

Emit = Callable[[Dict[str, Any]], None]
Handler = Callable[[str, Store, Any], Dict[str, Any]]


def enlarge_pipe(stream: IO[bytes]) -> None:
    """Ask for a 1 MiB pipe buffer on the session's stdin (Linux; a no-op elsewhere).

    Why: sshd writes the decrypted stream into a 64 KiB pipe by default, so the agent and sshd
    wake each other every 64 KiB. With 1 MiB the receive loop ran ~30% faster (bench/push.py).
    """
    try:
        import fcntl

        fcntl.fcntl(stream.fileno(), F_SETPIPE_SZ, PIPE_SIZE)
    except (ImportError, OSError, ValueError, AttributeError):
        pass  # not a pipe, not Linux, or over the user's pipe quota: the default still works


class Writeback:
    """fdatasync a file from a helper thread every ``WRITEBACK_EVERY`` bytes.

    Why: the blob must be on disk before the cache vouches for it, but one fsync at the end
    waits for the whole file (on an SD card, seconds). Flushing as we go lets the disk work
    while the network streams; the final fsync then has only the tail left. An error the
    thread sees is kept and raised by ``finish`` (after it, the same fd's fsync would not
    report it again).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.error: Optional[OSError] = None
        self._pending = 0
        self._requested = False
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)
        self._thread.start()

    def wrote(self, nbytes: int) -> None:
        self._pending += nbytes
        if self._pending >= WRITEBACK_EVERY:
            self._pending = 0
            self._requested = True
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._requested:  # before looking at _stop: a request made is carried out
                self._requested = False
                try:
                    os.fdatasync(self.fd)
                except OSError as exc:
                    self.error = self.error or exc
            if self._stop:
                return

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join()

    def sync(self) -> None:
        """After ``stop``: raise what the thread saw, then fsync what is left."""
        if self.error is not None:
            raise self.error
        os.fsync(self.fd)


def backdate(fd: int, started_ns: int) -> None:
    """Set the blob's mtime to before its arrival, beyond the hash cache's racy window.

    Why: the cache persists an entry only for a file whose mtime is older than RACY_WINDOW_NS
    when hashed (a same-size rewrite within a timestamp tick would keep the old mtime). A blob
    that just arrived is always that young, so the next command (a re-push, or the benchmark
    right after a push) re-hashed it: 0.06 s for 94 MB here, seconds on a Pi's SD card. Any
    later write sets mtime to the current time, far from this one, so a change is still seen;
    a write that puts this mtime back moves the ctime, which the cache also keys on.
    """
    os.utime(fd, ns=(time.time_ns(), started_ns - 2 * RACY_WINDOW_NS))


def write_all(fd: int, data: memoryview) -> None:
    """os.write may write less than asked (a signal, a nearly full disk): loop until done."""
    while data:
        data = data[os.write(fd, data):]


class LinkDropped(AgentError):
    """The stream ended (or broke) before a blob's last byte: the link dropped."""


def _receive_spec(spec: Any) -> Tuple[str, int, int, str]:
    """(sha256, size, offset, label) of a ``receive`` request; ``offset`` is optional (0)."""
    if not isinstance(spec, dict) or not is_sha256(spec.get("sha256")):
        raise AgentError(E_BAD_INPUT, "receive needs {sha256, size}")
    sha, size, offset = spec["sha256"], spec.get("size"), spec.get("offset", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise AgentError(E_BAD_INPUT, "receive: bad size %r" % (size,))
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= size:
        raise AgentError(E_BAD_INPUT, "receive: bad offset %r for %d bytes" % (offset, size))
    return sha, size, offset, str(spec.get("path") or sha)


def receive(store: Store, stream: IO[bytes], spec: Any) -> Dict[str, Any]:
    """Read the blob's bytes from ``offset`` on from ``stream`` into a part of our own (see
    agent.parts), verify the whole blob, and land it in the blob store.

    A dropped link (EOF or a broken stream, SIGTERM/SIGHUP) keeps the part for the next push
    to resume; anything else (a mismatch, a full disk, a write error) deletes it."""
    sha, size, offset, label = _receive_spec(spec)
    store.ensure_layout()
    if store.parts is None:
        store.parts = Parts(store)
    part = store.parts.for_receive(sha, offset, label)
    digest = part.digest
    started_ns = time.time_ns()
    remaining = size - offset
    # One buffer for the whole blob: readinto/update/write on views of it copy each byte
    # once (pipe -> buffer) instead of allocating a new bytes object per chunk.
    view = memoryview(bytearray(min(RECEIVE_CHUNK, remaining) or 1))
    try:
        with writing(part.path):
            os.ftruncate(part.fd, offset)  # a claimed part holds exactly what was hashed
            os.lseek(part.fd, offset, os.SEEK_SET)
            writeback = Writeback(part.fd)
            try:
                while remaining:
                    try:
                        got = stream.readinto(view[:min(len(view), remaining)])  # type: ignore[attr-defined]
                    except OSError as exc:
                        raise LinkDropped(E_BAD_INPUT, "reading %s: %s" % (label, exc)) from None
                    if not got:
                        raise LinkDropped(E_BAD_INPUT, "stream ended %d bytes short of %s"
                                          % (remaining, label))
                    chunk = view[:got]
                    digest.update(chunk)
                    write_all(part.fd, chunk)
                    writeback.wrote(got)
                    remaining -= got
            finally:
                writeback.stop()
            actual = digest.hexdigest()
            if actual != sha:
                raise AgentError(
                    E_VERIFY_FAILED,
                    "%s arrived corrupted: sha256 %s, expected %s%s; the upload was deleted and "
                    "nothing was activated, push again"
                    % (label, actual, sha, " (its first %d bytes were kept from an earlier "
                       "transfer in %s)" % (offset, part.path) if offset else ""),
                    path=label, expected=sha, actual=actual, part=part.path, resumed_from=offset,
                )
            os.fchmod(part.fd, BLOB_MODE)
            backdate(part.fd, started_ns)
            writeback.sync()  # the cache will vouch for it after a power cut
        land(store, part.path, sha, size, label, started_ns)
    except BaseException as exc:
        kept = size - remaining
        if (isinstance(exc, LinkDropped) or not isinstance(exc, Exception)) and kept:
            Parts.release(part)
            if isinstance(exc, LinkDropped):
                raise LinkDropped(
                    E_BAD_INPUT, "%s; the %d bytes that arrived are kept in %s and the next "
                    "push resumes from there" % (exc.message, kept, part.path),
                    path=label, part=part.path, kept=kept) from None
            raise
        Parts.discard(part)
        if isinstance(exc, AgentError) and exc.code == E_NO_SPACE:
            raise AgentError(
                E_NO_SPACE,
                "no space left on the device while receiving %s (%d of %d bytes written to %s); "
                "the partial upload was deleted and nothing was activated: free space under %s "
                "and push again" % (label, kept, size, part.path, store.root),
                path=label, part=part.path,
            ) from None
        raise
    Parts.release(part)
    return {"sha256": sha, "bytes": size, "resumed_from": offset}


def land(store: Store, part: str, sha: str, size: int, label: str, started_ns: int) -> None:
    """Rename a verified part into the blob store, under the root lock. Another session may
    have landed the same blob meanwhile (two control planes pushing it at once): when the one
    there verifies, ours is an identical copy and is dropped, so a version dir that already
    links the blob keeps sharing its inode."""
    blob = store.blob_path(sha)
    with journal.locked(store):
        if os.path.lexists(blob) and store.check_blob(sha, size, label) == "present":
            os.unlink(part)
            return
        os.replace(part, blob)
        fsync_dir(store.blobs)
        store.verifier.cache.record(os.stat(blob), sha, started_ns)


def _prewarm_smoke(request: Any) -> None:
    """A plan that will be followed by an activation with a smoke test (golden outputs, or a
    load check): start its child now."""
    from agent import smoke

    manifest = request.get("manifest") if isinstance(request, dict) else None
    if isinstance(manifest, dict) and (manifest.get("golden") is not None
                                       or smoke.load_check_of(manifest) is not None):
        try:
            smoke.prewarm(manifest)
        except OSError as exc:  # the plan's result is out: the activation will start one
            sys.stderr.write("edgefleet-agent: could not pre-start the smoke test: %s\n" % exc)


def serve(store: Store, stream: IO[bytes], emit: Emit, handle: Handler,
          error_for: Callable[[BaseException], Dict[str, Any]]) -> int:
    """Answer requests until EOF; returns the exit status (1 if the session had to stop)."""
    from agent import smoke

    enlarge_pipe(stream)
    store.parts = Parts(store)  # plan offers resumable uploads only to a session
    try:
        return _serve(store, stream, emit, handle, error_for)
    finally:
        store.parts.close()
        smoke.discard_warm()


def _serve(store: Store, stream: IO[bytes], emit: Emit, handle: Handler,
           error_for: Callable[[BaseException], Dict[str, Any]]) -> int:
    while True:
        header = stream.readline(MAX_REQUEST_LINE + 1)
        if not header:
            return 0
        command = "?"
        try:
            if len(header) > MAX_REQUEST_LINE and not header.endswith(b"\n"):
                # Out of step with the control plane (or not it at all): the rest of the
                # stream cannot be read as requests, and it must not be held in memory.
                raise AgentError(E_BAD_INPUT, "session request line longer than %d bytes; "
                                 "session ended" % MAX_REQUEST_LINE)
            try:
                request = json.loads(header.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise AgentError(E_BAD_INPUT, "session request is not JSON: %s" % exc) from None
            if not isinstance(request, dict) or request.get("v") != PROTOCOL_VERSION:
                raise AgentError(E_BAD_INPUT, "session request must be {v: %d, command, input}"
                                 % PROTOCOL_VERSION)
            command = str(request.get("command"))
            if command == "receive":
                data = receive(store, stream, request.get("input"))
            elif command == "session":
                raise AgentError(E_BAD_INPUT, "sessions do not nest")
            else:
                data = handle(command, store, request.get("input"))
            emit(result_ok(command, data))
        except Exception as exc:  # noqa: BLE001 - answered, as any other error of a request
            # An AgentError or OSError is the request's own failure; anything else (a request
            # nested too deep for json: RecursionError) too, without a traceback ending the
            # session. A failed receive leaves the byte stream out of step: the session ends.
            error = error_for(exc)
            emit(result_error(command, error.pop("code"), error.pop("message"), **error))
            if command in ("receive", "?"):
                return 1
            continue
        if command == "plan" and not data.get("already_active"):
            try:  # outside the request's try: its result is sent, a second one never is
                _prewarm_smoke(request.get("input"))  # the control plane is already sending
            except Exception:  # noqa: BLE001 - a warm child is an optimisation only
                traceback.print_exc()
