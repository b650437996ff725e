"""Calling the agent on a device: build the argv, stream its JSON lines, return its result."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.protocol import PROTOCOL_VERSION, parse_lines
from orchestrator.core.errors import AgentError, TransportError
from orchestrator.transport import Connection, RemotePath

EventHandler = Callable[[dict[str, Any]], None]
BLOBS_IN_FLIGHT = 32  # receive results left unread while sending (~150 bytes each)
SEND_CHUNK = 256 * 1024


@dataclass(frozen=True)
class BlobUpload:
    """One file to stream as blob ``sha256``; ``label`` names it in the agent's errors.
    ``offset``: the device already holds that many of its first bytes (a resumed transfer)."""

    sha256: str
    size: int
    label: str
    local: Path
    offset: int = 0

    @property
    def to_send(self) -> int:
        return self.size - self.offset


def resume_offset(local: Path, size: int, offer: object) -> int:
    """How many bytes of a blob not to send again: the agent's ``plan`` offered a prefix it
    kept from a dropped transfer (``{"offset", "sha256"}``); it is taken only if our own copy's
    first ``offset`` bytes hash the same, so a prefix damaged on the device is sent again in
    full. Why here and not on the device: only we have the blob to compare with, and the
    agent cannot take back bytes once we have started sending the rest."""
    if not isinstance(offer, Mapping):
        return 0
    offset, expected = offer.get("offset"), offer.get("sha256")
    if (not isinstance(offset, int) or isinstance(offset, bool) or not 0 < offset <= size
            or not isinstance(expected, str)):
        return 0
    digest = hashlib.sha256()
    left = offset
    with open(local, "rb") as src:
        while left and (chunk := src.read(min(SEND_CHUNK * 4, left))):
            digest.update(chunk)
            left -= len(chunk)
    return offset if not left and digest.hexdigest() == expected else 0


def plan_uploads(plan: Mapping[str, Any], files: Mapping[str, Mapping[str, Any]],
                 local: Callable[[str], Path], name: str) -> list[BlobUpload]:
    """The blobs an agent's plan (``plan``/``dataset_plan``) says are missing, each once and
    from the prefix the device kept of it when that prefix checks out (``resume_offset``).

    The plan is the device's answer, so untrusted: a ``missing`` that is not a list of this
    manifest's blobs is refused naming the device (before, a sha the bundle lacks ended as
    "failed unexpectedly (KeyError ...)"), and nothing is sent."""
    missing = plan.get("missing") or []
    if not isinstance(missing, list):
        raise TransportError(f"{name}: the agent's plan lists its missing blobs as "
                             f"{type(missing).__name__}, not a list; reinstall it: "
                             f"`edgefleet agent install {name}`")
    unknown = [sha for sha in missing if not isinstance(sha, str) or sha not in files]
    if unknown:
        shown = ", ".join(repr(sha)[:70] for sha in unknown[:3])
        raise TransportError(f"{name}: the agent asked for {len(unknown)} blob"
                             f"{'s' if len(unknown) != 1 else ''} this manifest does not have "
                             f"({shown}); nothing was sent. Reinstall the agent: "
                             f"`edgefleet agent install {name}`")
    resume = plan.get("resume")
    resume = resume if isinstance(resume, Mapping) else {}
    uploads = []
    for sha in dict.fromkeys(missing):
        size, path = files[sha]["size"], local(sha)
        uploads.append(BlobUpload(sha, size, files[sha]["path"], path,
                                  resume_offset(path, size, resume.get(sha))))
    return uploads


def disk_free(plan: Mapping[str, Any]) -> int | None:
    """The free bytes a plan reports, or None when it reports no usable number (a device's
    answer: a string or a float here must not fail the comparison with what is to send)."""
    free = plan.get("disk_free_bytes")
    if isinstance(free, bool) or not isinstance(free, int):
        return None
    return free


def _install_hint(exit_code: int, stderr: str, name: str) -> str:
    if exit_code == 127:
        return (" (the interpreter or the agent was not found: run "
                f"`edgefleet agent install {name}`)")
    if exit_code == 2 and "can't open file" in stderr:
        return f" (agent not installed: run `edgefleet agent install {name}`)"
    return ""


def answer(result: dict[str, Any], name: str) -> dict[str, Any]:
    """A result line's ``data`` (an object), or the AgentError it carries. The device's JSON
    is untrusted: a result whose data or error is not an object, or whose message is not a
    string, is refused here, naming the device, instead of failing deep in whoever reads it
    (a deployment left pending by an AttributeError)."""
    if not result.get("ok"):
        error = result.get("error")
        error = error if isinstance(error, dict) else {}
        message, code = error.get("message"), error.get("code")
        raise AgentError(f"{name}: {message if isinstance(message, str) else 'agent error'}",
                         code=code if isinstance(code, str) else "", detail=error)
    data = result.get("data")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TransportError(f"{name}: the agent answered a result that is not a JSON object "
                             f"({type(data).__name__}); reinstall it: "
                             f"`edgefleet agent install {name}`")
    return data


def agent_argv(python: str, agent_path: str, root: str, command: str) -> list[str]:
    # "--root=<path>": a root starting with "-" must not be read as an option.
    return [RemotePath(python), RemotePath(agent_path), f"--root={root}", command]


def call_agent(
    conn: Connection,
    command: str,
    payload: dict[str, Any] | None = None,
    *,
    python: str | None = None,
    on_event: EventHandler | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run one agent command; return its ``data`` or raise AgentError with the agent's message.

    Lines are parsed as they arrive and only the result is kept: holding every parsed line
    would let a device turn its output limit (OutputLimits) into many times that in dicts."""
    target = conn.target
    argv = agent_argv(python or target.python, target.agent_path, target.root, command)
    seen = 0
    bad: str | None = None  # the first line that is not protocol JSON
    results: list[dict[str, Any]] = []

    def on_line(line: str) -> None:
        nonlocal seen, bad
        seen += 1
        if bad is not None:
            return
        try:
            messages = parse_lines([line], first=seen)
        except ValueError as exc:
            bad = str(exc)
            return
        for obj in messages:
            if obj.get("type") == "result":
                results[:] = [obj]
            elif obj.get("type") == "progress" and on_event is not None:
                on_event(obj)

    stdin = json.dumps(payload).encode("utf-8") if payload is not None else None
    result = conn.run(argv, stdin=stdin, env=dict(target.env), timeout=timeout, on_line=on_line,
                      keep_stdout=False)
    if bad is not None:
        stderr = result.stderr.strip()[-500:]
        raise TransportError(f"{target.name}: {bad}; stderr: {stderr}")
    if not results:
        raise TransportError(
            f"{target.name}: agent {command} gave no result (exit {result.exit_code})"
            f"{_install_hint(result.exit_code, result.stderr, target.name)}: "
            f"{result.stderr.strip()[-500:]}"
        )
    return answer(results[-1], target.name)



class AgentSession:
    """One agent process for a whole operation: requests, streamed blobs, one result each.

    Why: each separate agent command costs an SSH exec, a login shell and a Python start; a
    push is one of each, and uploaded bytes are hashed as they arrive instead of afterwards.
    """

    def __init__(self, conn: Connection, python: str | None = None,
                 timeout: float | None = None) -> None:
        target = conn.target
        self.name = target.name
        argv = agent_argv(python or target.python, target.agent_path, target.root, "session")
        self.channel = conn.start(argv, env=dict(target.env), timeout=timeout)

    def call(self, command: str, payload: dict[str, Any] | None = None,
             on_event: EventHandler | None = None) -> dict[str, Any]:
        self._send_request(command, payload)
        return self._result(command, on_event)

    def send_blobs(self, blobs: Sequence[BlobUpload],
                   on_bytes: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
        """Stream local files as blobs; the agent verifies each before keeping it. One result
        per blob, in order; the first failure raises (the agent ends the session on it).

        Why pipelined: waiting for each blob's result before sending the next cost a round
        trip plus the agent's idle wait per file; a dataset is hundreds of small files. At most
        ``BLOBS_IN_FLIGHT`` results are left unread, so the agent's output never fills a pipe
        or window nobody reads while we are still writing (the local transport has no reader
        thread)."""
        results: list[dict[str, Any]] = []
        unread = 0
        for blob in blobs:
            if unread >= BLOBS_IN_FLIGHT:
                results.append(self._result("receive", None))
                unread -= 1
            spec: dict[str, Any] = {"sha256": blob.sha256, "size": blob.size,
                                    "path": blob.label}
            if blob.offset:  # only ever offered by an agent that understands it
                spec["offset"] = blob.offset
            try:
                # The request line too: an agent that refused the blob before has answered and
                # exited, and a write to it fails here as well as in the blob's bytes.
                self._send_request("receive", spec)
                unread += 1
                self.channel.write_file(blob.local, blob.offset, on_bytes, SEND_CHUNK)
            except TransportError:
                break  # the agent stopped reading: its result line says why
        for _ in range(unread):
            results.append(self._result("receive", None))
        return results

    def _send_request(self, command: str, payload: dict[str, Any] | None) -> None:
        line = json.dumps({"v": PROTOCOL_VERSION, "command": command, "input": payload})
        self.channel.write(line.encode("utf-8") + b"\n")

    def _result(self, command: str, on_event: EventHandler | None) -> dict[str, Any]:
        while line := self.channel.readline():
            try:
                message = parse_lines([line])
            except ValueError as exc:
                raise TransportError(f"{self.name}: {exc}") from None
            if not message:
                continue
            obj = message[0]
            if obj.get("type") == "progress":
                if on_event:
                    on_event(obj)
                continue
            if obj.get("type") == "result":
                return answer(obj, self.name)
        code, stderr = self.channel.finish()
        message = stderr.strip()[-500:] or "no message"
        raise TransportError(f"{self.name}: agent session ended during {command} (exit {code}): "
                             f"{message}{_install_hint(code, stderr, self.name)}")

    def close(self) -> None:
        self.channel.finish()

    def __enter__(self) -> AgentSession:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.channel.abort()
