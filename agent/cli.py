"""Command line of the device agent: ``--root ROOT COMMAND``, JSON in on stdin, JSON lines out.

Why so defensive about stdout: the control plane parses every stdout line as protocol
(``agent.protocol.parse_lines``). A stray print, a native library writing to fd 1 or a traceback
would break the push, so the real stdout is kept private for protocol lines and fd 1 /
``sys.stdout`` are pointed at stderr while a command runs. Every failure ends in exactly one
``result`` line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import traceback
from typing import IO, Any, Callable, Dict, List, Optional

from agent import protocol
from agent.fsutil import NO_SPACE_ERRNOS, AgentError, no_space_error
from agent.protocol import E_BAD_INPUT, E_INTERNAL, result_error, result_ok

COMMANDS = ("facts", "telemetry", "plan", "activate", "rollback", "status", "session", "bench",
            "verify", "eval", "dataset_plan", "dataset_stage", "trust")
DEFAULT_ROOT = "~/.edgefleet"

Emit = Callable[[Dict[str, Any]], None]


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as a protocol result instead of exit(2)."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise AgentError(E_BAD_INPUT, "%s (usage: %s)" % (message, self.format_usage().strip()))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgefleet-agent", description="EdgeFleet device agent")
    parser.add_argument("--root", default=DEFAULT_ROOT,
                        help="agent directory on the device (a leading ~ is expanded)")
    parser.add_argument("command", choices=COMMANDS)
    return parser


MAX_STDIN_BYTES = 32 << 20  # a command's input: a manifest, a dataset's (as a session line)


def read_stdin_json(stdin: IO[bytes]) -> Any:
    raw = stdin.read(MAX_STDIN_BYTES + 1)  # bounded: never the whole of an endless stream
    if len(raw) > MAX_STDIN_BYTES:
        raise AgentError(E_BAD_INPUT, "stdin holds more than %d bytes: not a command's input"
                         % MAX_STDIN_BYTES)
    if not raw.strip():
        raise AgentError(E_BAD_INPUT, "expected one JSON document on stdin, got nothing")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AgentError(E_BAD_INPUT, "stdin is not one JSON document: %s" % exc) from None


def _stdin() -> IO[bytes]:
    if sys.stdin is None:  # started with stdin closed
        return open(os.devnull, "rb")
    return sys.stdin.buffer


class Terminated(BaseException):
    """SIGTERM/SIGHUP (e.g. the SSH session dropped): unwind so staging dirs are removed and
    a half-finished swap is undone, instead of dying between two steps."""


def _on_signal(signum: int, _frame: Any) -> None:
    raise Terminated("terminated by signal %d" % signum)


def run_command(command: str, root: str, emit: Emit,
                stdin: Callable[[], IO[bytes]] = _stdin) -> Dict[str, Any]:
    """Dispatch one command; modules are imported here so ``facts`` loads the least code."""
    if command == "facts":
        from agent.facts import facts

        return facts(root)
    from agent.store import Store

    return handle(command, Store(root, emit), lambda: read_stdin_json(stdin()))


def handle(command: str, store: Any, read_input: Callable[[], Any]) -> Dict[str, Any]:
    """Run ``command`` against ``store``; ``read_input`` supplies its JSON input when needed
    (stdin for a one-shot command, the request's ``input`` inside a session).

    Every result also says what the device runs (``active``, the committed version; or
    ``state_error``) and what the journal repaired first (``recovered``, also on an error), so
    the control plane corrects its records from whichever command reaches the device next.
    ``status`` and ``telemetry`` also say when ``current`` is not our symlink (``current_error``:
    they leave it alone, the next command that takes the lock moves it aside).
    """
    from agent import journal

    state_error = current_error = None
    if command in ("status", "telemetry"):  # no lock of their own (agent.journal)
        state_error = journal.repair_if_idle(store)
        if os.path.isdir(store.root) and journal.occupied(store):
            current_error = journal.occupied_message(store)
    try:
        data = _dispatch(command, store, read_input)
    except AgentError as exc:
        recovered = store.take_recovered()
        if recovered:
            exc.extra.setdefault("recovered", recovered)
        raise
    recovered = store.take_recovered()
    if recovered:
        data["recovered"] = recovered
    if "active" not in data and state_error is None:
        try:
            data["active"] = store.active() if os.path.isdir(store.root) else None
        except AgentError as exc:
            state_error = exc.message
    if state_error is not None:
        data["state_error"] = state_error
    if current_error is not None:
        data["current_error"] = current_error
    return data


def _dispatch(command: str, store: Any, read_input: Callable[[], Any]) -> Dict[str, Any]:
    from agent import journal
    from agent.activation import plan
    from agent.store import parse_request, status

    if command == "facts":
        from agent.facts import facts

        return facts(store.root)
    if command == "status":
        return status(store)
    if command == "plan":
        return plan(store, parse_request(read_input()))
    if command == "telemetry":
        from agent.snapshot import telemetry

        return telemetry(store.root)
    if command == "bench":
        from agent.bench import bench

        return bench(store, read_input())
    if command == "eval":
        from agent.evaluate import evaluate

        return evaluate(store, read_input())
    if command in ("dataset_plan", "dataset_stage"):
        from agent import datasets

        request = datasets.parse_request(read_input())
        return (datasets.plan if command == "dataset_plan" else datasets.stage)(store, request)
    if command == "trust":  # pin signing keys (agent.signatures), under the root lock
        from agent.signatures import set_trust

        doc = read_input()
        store.ensure_layout()
        with journal.locked(store):
            return set_trust(store, doc)
    if command == "verify":  # no input: re-hash and smoke-test whatever is active
        from agent.verify import verify

        return verify(store)
    from agent import activation

    if command == "activate":
        return activation.activate(store, parse_request(read_input()))
    if command == "rollback":
        # stdin is accepted ({} or nothing) but not read: waiting for an EOF the caller might
        # never send (an SSH channel left open) would hang the rollback.
        return activation.rollback(store)
    raise AgentError(E_BAD_INPUT, "unknown command %r" % command)


def run_session(root: str, emit: Emit) -> int:
    from agent.session import serve
    from agent.store import Store

    return serve(Store(root, emit), _stdin(), emit,
                 lambda command, store, payload: handle(command, store, lambda: payload),
                 _error_for)


def _error_for(exc: BaseException) -> Dict[str, Any]:
    if isinstance(exc, AgentError):
        return dict({"code": exc.code, "message": exc.message}, **exc.extra)
    if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
        err = no_space_error(exc.filename or "?", exc)
        return dict({"code": err.code, "message": err.message}, **err.extra)
    if isinstance(exc, (KeyboardInterrupt, Terminated)):
        return {"code": E_INTERNAL, "message": "interrupted: %s" % (str(exc) or "SIGINT")}
    return {"code": E_INTERNAL, "message": "%s: %s" % (type(exc).__name__, exc)}


def main(argv: Optional[List[str]] = None, private_stdout: bool = True) -> int:
    """Run one command; returns the exit status (0 iff the result is ok)."""
    if not private_stdout:
        return _run(sys.stdout, argv)
    out = protocol.private_stdout()
    try:
        return _run(out, argv)
    finally:
        with contextlib.suppress(OSError):
            out.close()


def _run(out: IO[str], argv: Optional[List[str]]) -> int:
    def emit(obj: Dict[str, Any]) -> None:
        out.write(json.dumps(obj, sort_keys=False) + "\n")
        out.flush()

    command = "?"
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _on_signal)
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        if not args.root.strip():
            raise AgentError(E_BAD_INPUT, "--root is empty")
        from agent.store import resolve_root

        if command == "session":
            return run_session(resolve_root(args.root), emit)
        data = run_command(command, resolve_root(args.root), emit)
        emit(result_ok(command, data))
        return 0
    except SystemExit as exc:  # --help: text already went to stderr
        return int(exc.code or 0) if isinstance(exc.code, int) else 1
    except BaseException as exc:
        if not isinstance(exc, (AgentError, Terminated, KeyboardInterrupt)):
            traceback.print_exc(file=sys.stderr)
        error = _error_for(exc)
        # nobody may be listening any more (broken pipe): the exit status still tells
        with contextlib.suppress(OSError):
            emit(result_error(command, error.pop("code"), error.pop("message"), **error))
        return 1
