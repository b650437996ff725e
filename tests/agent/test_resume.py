"""Uploads in flight (agent.parts): one part per session, kept when the link drops, resumed
from the bytes that arrived, and checked whole at the end."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from agent_helpers import Bundle, agent_env, make_bundle

from agent.protocol import manifest_digest, parse_lines

DATA = random.Random(0).randbytes(300_000)
CUT = 123_457


def request(command: str, payload: Any = None) -> bytes:
    return json.dumps({"v": 1, "command": command, "input": payload}).encode() + b"\n"


def receive_header(bundle: Bundle, path: str, offset: int = 0) -> bytes:
    sha = bundle.sha_of(path)
    spec: dict[str, Any] = {"sha256": sha, "size": len(bundle.contents[sha]), "path": path}
    if offset:
        spec["offset"] = offset
    return request("receive", spec)


class LiveSession:
    """An agent session we talk to request by request (so the test can act in between)."""

    def __init__(self, pyz: Path, root: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(pyz), f"--root={root}", "session"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=agent_env())
        self.events: list[dict[str, Any]] = []

    def send(self, data: bytes) -> None:
        stdin: IO[bytes] = self.proc.stdin  # type: ignore[assignment]
        stdin.write(data)
        stdin.flush()

    def result(self) -> dict[str, Any]:
        stdout: IO[bytes] = self.proc.stdout  # type: ignore[assignment]
        while line := stdout.readline():
            (message,) = parse_lines([line.decode()])
            if message["type"] == "result":
                return message
            self.events.append(message)
        raise AssertionError("session ended without a result: "
                             + self.proc.stderr.read().decode())  # type: ignore[union-attr]

    def call(self, data: bytes) -> dict[str, Any]:
        self.send(data)
        return self.result()

    def close(self) -> int:
        self.proc.stdin.close()  # type: ignore[union-attr]
        return self.proc.wait(60)


def one_shot(pyz: Path, root: Path, stream: bytes) -> tuple[int, list[dict[str, Any]]]:
    proc = subprocess.run([sys.executable, str(pyz), f"--root={root}", "session"], input=stream,
                          capture_output=True, env=agent_env(), timeout=60, check=False)
    lines = parse_lines(proc.stdout.decode().splitlines())
    return proc.returncode, [m for m in lines if m["type"] == "result"]


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll until ``condition`` is truthy; fail after ``timeout`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # a deadline poll's interval, not a wait for an outcome
    return value


def parts(root: Path) -> list[Path]:
    return sorted((root / "incoming").iterdir())


def drop_midway(pyz: Path, root: Path, bundle: Bundle) -> Path:
    """A session that receives config.json whole and model.onnx up to CUT, then loses its
    link; returns the part it kept."""
    code, results = one_shot(pyz, root, request("plan", bundle.request)
                             + receive_header(bundle, "config.json") + b"{}"
                             + receive_header(bundle, "model.onnx") + DATA[:CUT])
    assert code == 1 and results[-1]["error"]["kept"] == CUT, results
    (part,) = parts(root)
    assert re.fullmatch(bundle.sha_of("model.onnx") + r"\.[0-9a-f]{16}\.part", part.name)
    return part


def model_bundle() -> Bundle:
    return make_bundle("m", "1", {"model.onnx": DATA, "config.json": b"{}"})


def test_a_dropped_transfer_resumes_from_the_bytes_that_arrived(pyz: Path, root: Path) -> None:
    bundle = model_bundle()
    sha = bundle.sha_of("model.onnx")
    first = drop_midway(pyz, root, bundle)

    live = LiveSession(pyz, root)
    plan = live.call(request("plan", bundle.request))["data"]
    assert plan["missing"] == [sha]  # config.json landed before the link dropped
    assert plan["resume"] == {sha: {"offset": CUT,
                                    "sha256": hashlib.sha256(DATA[:CUT]).hexdigest()}}
    (claimed,) = parts(root)  # taken over under this session's own name
    assert claimed != first and claimed.name.startswith(sha + ".")
    got = live.call(receive_header(bundle, "model.onnx", CUT) + DATA[CUT:])
    assert got["ok"] and got["data"]["resumed_from"] == CUT, got
    assert live.call(request("activate", bundle.request))["data"]["changed"] is True
    assert live.close() == 0
    assert (root / "current" / "model.onnx").read_bytes() == DATA
    assert parts(root) == []


def test_a_kept_prefix_that_changed_fails_the_final_check_and_is_deleted(
        pyz: Path, root: Path) -> None:
    """The control plane sends the rest only when its own prefix hashes like the offer (so a
    damaged part is normally sent again in full, orchestrator.fleet.agentclient.resume_offset); a
    control plane that resumed anyway still cannot get a wrong blob installed."""
    bundle = model_bundle()
    sha = bundle.sha_of("model.onnx")
    part = drop_midway(pyz, root, bundle)
    damaged = bytearray(part.read_bytes())
    damaged[CUT // 2] ^= 0x01
    part.write_bytes(bytes(damaged))

    live = LiveSession(pyz, root)
    plan = live.call(request("plan", bundle.request))["data"]
    assert plan["resume"][sha]["sha256"] != hashlib.sha256(DATA[:CUT]).hexdigest()
    failed = live.call(receive_header(bundle, "model.onnx", CUT) + DATA[CUT:])
    assert live.close() == 1  # a failed receive ends the session
    error = failed["error"]
    assert error["code"] == "verify_failed" and error["path"] == "model.onnx"
    assert error["resumed_from"] == CUT and f"first {CUT} bytes were kept" in error["message"]
    assert error["part"] in error["message"]
    assert parts(root) == [] and not (root / "blobs" / sha).exists()

    code, results = one_shot(pyz, root, request("plan", bundle.request))
    assert results[0]["data"]["resume"] == {}  # nothing left to resume: sent whole
    code, results = one_shot(pyz, root, receive_header(bundle, "model.onnx") + DATA
                             + request("activate", bundle.request))
    assert code == 0 and all(r["ok"] for r in results), results
    assert (root / "current" / "model.onnx").read_bytes() == DATA


def test_a_part_whose_owner_is_alive_is_never_taken(pyz: Path, root: Path) -> None:
    bundle = model_bundle()
    sha = bundle.sha_of("model.onnx")
    part = drop_midway(pyz, root, bundle)
    with part.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the session writing it would
        code, results = one_shot(pyz, root, request("plan", bundle.request))
        assert code == 0 and results[0]["data"]["resume"] == {}
        assert parts(root) == [part] and part.read_bytes() == DATA[:CUT]
    code, results = one_shot(pyz, root, request("plan", bundle.request))
    assert results[0]["data"]["resume"][sha]["offset"] == CUT  # its owner let go


def test_an_older_control_plane_sends_whole_blobs_and_the_kept_part_goes(
        pyz: Path, root: Path) -> None:
    bundle = model_bundle()
    drop_midway(pyz, root, bundle)
    code, results = one_shot(pyz, root, request("plan", bundle.request)
                             + receive_header(bundle, "model.onnx") + DATA
                             + request("activate", bundle.request))
    assert code == 0 and [r["ok"] for r in results] == [True] * 3, results
    assert results[1]["data"]["resumed_from"] == 0
    assert (root / "current" / "model.onnx").read_bytes() == DATA and parts(root) == []


def test_an_offset_that_was_not_offered_is_refused(pyz: Path, root: Path) -> None:
    bundle = model_bundle()
    part = drop_midway(pyz, root, bundle)
    # without a plan this session holds no part: it cannot append to one
    code, results = one_shot(pyz, root, receive_header(bundle, "model.onnx", CUT) + DATA[CUT:])
    assert code == 1 and results[0]["error"]["code"] == "bad_input"
    assert "offered no partial upload" in results[0]["error"]["message"]
    assert parts(root) == [part] and part.read_bytes() == DATA[:CUT]
    code, results = one_shot(pyz, root, request("plan", bundle.request)
                             + receive_header(bundle, "model.onnx", CUT + 1) + DATA[CUT + 1:])
    assert code == 1 and f"offered {CUT} bytes of it" in results[1]["error"]["message"]
    code, results = one_shot(pyz, root, receive_header(bundle, "model.onnx", len(DATA) + 1))
    assert code == 1 and "bad offset" in results[0]["error"]["message"]


def test_two_sessions_landing_the_same_blob_both_succeed(pyz: Path, root: Path) -> None:
    """Two control planes push the same blob at once: each writes a part of its own; the one
    that lands second finds the blob there, verified, and drops its identical copy."""
    bundle = model_bundle()
    sha = bundle.sha_of("model.onnx")
    slow = LiveSession(pyz, root)
    assert slow.call(request("plan", bundle.request))["ok"]
    slow.send(receive_header(bundle, "model.onnx") + DATA[:CUT])
    wait_for(lambda: parts(root), "the slow session's part")  # created, locked, being filled

    code, results = one_shot(pyz, root, request("plan", bundle.request)
                             + receive_header(bundle, "config.json") + b"{}"
                             + receive_header(bundle, "model.onnx") + DATA
                             + request("activate", bundle.request))
    assert code == 0 and all(r["ok"] for r in results), results
    assert results[0]["data"]["resume"] == {}  # the slow session's part is alive: not taken
    assert len(parts(root)) == 1  # the slow one's, still being written

    slow.send(DATA[CUT:])
    landed = slow.result()
    assert landed["ok"] and landed["data"]["sha256"] == sha, landed
    assert slow.call(request("activate", bundle.request))["data"]["changed"] is False
    assert slow.close() == 0
    assert parts(root) == []
    blob = root / "blobs" / sha
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha
    assert blob.stat().st_ino == (root / "current" / "model.onnx").stat().st_ino


def test_a_dataset_push_resumes_too(pyz: Path, root: Path) -> None:
    """``dataset_plan`` offers what a dropped dataset transfer kept, like ``plan``."""
    files = {"samples/0.npy": DATA}
    bundle = make_bundle("ds", "1", files)
    bundle.manifest["kind"] = "dataset"
    digest = manifest_digest(bundle.manifest)
    dataset = {"manifest": bundle.manifest, "digest": digest}
    sha = bundle.sha_of("samples/0.npy")
    code, results = one_shot(pyz, root, request("dataset_plan", dataset)
                             + receive_header(bundle, "samples/0.npy") + DATA[:CUT])
    assert code == 1 and results[-1]["error"]["kept"] == CUT
    code, results = one_shot(pyz, root, request("dataset_plan", dataset)
                             + receive_header(bundle, "samples/0.npy", CUT) + DATA[CUT:]
                             + request("dataset_stage", dataset))
    assert code == 0 and all(r["ok"] for r in results), results
    assert results[0]["data"]["resume"][sha]["offset"] == CUT
    assert results[1]["data"]["resumed_from"] == CUT
    staged = root / results[0]["data"]["dir"] / "samples" / "0.npy"
    assert staged.read_bytes() == DATA and parts(root) == []


def test_a_part_planted_as_a_symlink_or_fifo_is_never_followed(pyz: Path, root: Path,
                                                               tmp_path: Path) -> None:
    """Whoever can write incoming/ (another program of the device's user) plants a symlink to
    a file outside the root, or a fifo, under a dead part's name: the plan neither offers it
    for resume (before, it read, grew, chmodded and landed the outside file) nor hangs."""
    bundle = model_bundle()
    sha = bundle.sha_of("model.onnx")
    drop_midway(pyz, root, bundle)
    (real,) = parts(root)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(DATA[:CUT])  # even a prefix of the right bytes
    real.unlink()
    real.symlink_to(outside)
    fifo = real.with_name(f"{sha}.{'f' * 16}.part")
    os.mkfifo(fifo)
    code, results = one_shot(pyz, root, request("plan", bundle.request))
    assert code == 0 and results[0]["data"]["resume"] == {}
    assert outside.read_bytes() == DATA[:CUT] and stat.S_IMODE(outside.stat().st_mode) != 0o444
