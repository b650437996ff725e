"""``session``: several requests over one agent process, blobs streamed in between.

Why: a push used to be two agent processes (plan, then activate) plus an SFTP upload. Each
process costs an sshd session, a login shell and a Python start (on a Pi 3, most of a second),
and the upload was hashed a second time after it landed. In a session the control plane sends:

    {"v":1,"command":"plan","input":{...}}\\n              -> events, one result line
    {"v":1,"command":"receive","input":{"sha256":..,"size":N,"path":..}}\\n  + N raw bytes
                                                          -> one result line
    {"v":1,"command":"activate","input":{...}}\\n          -> events, one result line

and closes stdin to end it. ``receive`` hashes while it writes ``incoming/<sha>.part``, fsyncs,
and only then renames the blob into place; a mismatch deletes the .part and names the file. A
failed ``receive`` ends the session (the byte stream can no longer be trusted to be in step).
Requests are answered strictly in order, so the control plane may send several ``receive``s
before reading their results (orchestrator.agentclient.send_blobs pipelines up to 32).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from typing import IO, Any, Callable, Dict, Optional

from agent.activation import BLOB_MODE
from agent.fsutil import AgentError, fsync_dir, remove_tree, writing
from agent.hashcache import RACY_WINDOW_NS
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


def receive(store: Store, stream: IO[bytes], spec: Any) -> Dict[str, Any]:
    """Read exactly ``size`` bytes from ``stream`` into the blob store, verifying on the fly."""
    if not isinstance(spec, dict) or not is_sha256(spec.get("sha256")):
        raise AgentError(E_BAD_INPUT, "receive needs {sha256, size}")
    sha, size = spec["sha256"], spec.get("size")
    label = str(spec.get("path") or sha)
    if not isinstance(size, int) or size < 0:
        raise AgentError(E_BAD_INPUT, "receive: bad size %r" % (size,))
    store.ensure_layout()
    part = store.part_path(sha)
    digest = hashlib.sha256()
    started_ns = time.time_ns()
    remaining = size
    # One buffer for the whole blob: readinto/update/write on views of it copy each byte
    # once (pipe -> buffer) instead of allocating a new bytes object per chunk.
    view = memoryview(bytearray(min(RECEIVE_CHUNK, size) or 1))
    try:
        with writing(part), open(part, "wb", buffering=0) as out:
            writeback = Writeback(out.fileno())
            try:
                while remaining:
                    got = stream.readinto(view[:min(len(view), remaining)])  # type: ignore[attr-defined]
                    if not got:
                        raise AgentError(E_BAD_INPUT, "stream ended %d bytes short of %s"
                                         % (remaining, label))
                    chunk = view[:got]
                    digest.update(chunk)
                    write_all(out.fileno(), chunk)
                    writeback.wrote(got)
                    remaining -= got
                os.fchmod(out.fileno(), BLOB_MODE)
                backdate(out.fileno(), started_ns)
            finally:
                writeback.stop()
            writeback.sync()  # the cache will vouch for it after a power cut
        actual = digest.hexdigest()
        if actual != sha:
            raise AgentError(
                E_VERIFY_FAILED,
                "%s arrived corrupted: sha256 %s, expected %s; nothing was activated, push again"
                % (label, actual, sha),
                path=label, expected=sha, actual=actual,
            )
        with store.lock():
            os.replace(part, store.blob_path(sha))
            fsync_dir(store.blobs)
            store.verifier.cache.record(os.stat(store.blob_path(sha)), sha, started_ns)
    except BaseException as exc:
        if os.path.lexists(part):
            remove_tree(part)
        if isinstance(exc, AgentError) and exc.code == E_NO_SPACE:
            raise AgentError(
                E_NO_SPACE,
                "no space left on the device while receiving %s (%d of %d bytes written to %s); "
                "the partial upload was deleted and nothing was activated: free space under %s "
                "and push again" % (label, size - remaining, size, part, store.root),
                path=label, part=part,
            ) from None
        raise
    return {"sha256": sha, "bytes": size}


def _prewarm_smoke(request: Any) -> None:
    """A plan that will be followed by an activation with a smoke test: start its child now."""
    from agent import smoke

    manifest = request.get("manifest") if isinstance(request, dict) else None
    if isinstance(manifest, dict) and manifest.get("golden") is not None:
        try:
            smoke.prewarm(manifest)
        except OSError as exc:  # the plan's result is out: the activation will start one
            sys.stderr.write("edgefleet-agent: could not pre-start the smoke test: %s\n" % exc)


def serve(store: Store, stream: IO[bytes], emit: Emit, handle: Handler,
          error_for: Callable[[BaseException], Dict[str, Any]]) -> int:
    """Answer requests until EOF; returns the exit status (1 if the session had to stop)."""
    from agent import smoke

    enlarge_pipe(stream)
    try:
        return _serve(store, stream, emit, handle, error_for)
    finally:
        smoke.discard_warm()


def _serve(store: Store, stream: IO[bytes], emit: Emit, handle: Handler,
           error_for: Callable[[BaseException], Dict[str, Any]]) -> int:
    while True:
        header = stream.readline()
        if not header:
            return 0
        command = "?"
        try:
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
            if command == "plan" and not data.get("already_active"):
                _prewarm_smoke(request.get("input"))  # the control plane is already sending
        except (AgentError, OSError) as exc:
            error = error_for(exc)
            emit(result_error(command, error.pop("code"), error.pop("message"), **error))
            if command in ("receive", "?"):
                return 1
