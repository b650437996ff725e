"""``session``: several requests over one agent process, blobs streamed in between."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent_helpers import Bundle, agent_env, make_bundle

from agent.protocol import parse_lines


def request(command: str, payload: Any = None) -> bytes:
    return json.dumps({"v": 1, "command": command, "input": payload}).encode() + b"\n"


def receive(bundle: Bundle, path: str, data: bytes | None = None) -> bytes:
    sha = bundle.sha_of(path)
    body = bundle.contents[sha] if data is None else data
    return request("receive", {"sha256": sha, "size": len(bundle.contents[sha]),
                               "path": path}) + body


def session(pyz: Path, root: Path, stream: bytes) -> tuple[int, list[dict[str, Any]]]:
    proc = subprocess.run([sys.executable, str(pyz), f"--root={root}", "session"], input=stream,
                          capture_output=True, env=agent_env(), timeout=60, check=False)
    results = [m for m in parse_lines(proc.stdout.decode().splitlines()) if m["type"] == "result"]
    return proc.returncode, results


def test_plan_receive_activate_in_one_process(pyz: Path, root: Path) -> None:
    bundle = make_bundle("m", "1", {"model.onnx": b"m" * 300_000, "config.json": b"{}"})
    stream = (request("plan", bundle.request) + receive(bundle, "model.onnx")
              + receive(bundle, "config.json") + request("activate", bundle.request))
    code, results = session(pyz, root, stream)
    assert code == 0 and [r["command"] for r in results] == ["plan", "receive", "receive",
                                                              "activate"]
    assert all(r["ok"] for r in results), results
    assert sorted(results[0]["data"]["missing"]) == sorted(bundle.contents)
    assert results[3]["data"]["changed"] is True
    assert (root / "current" / "model.onnx").read_bytes() == b"m" * 300_000
    assert not list((root / "incoming").iterdir())
    # A second session finds everything present and active: nothing to send.
    code, results = session(pyz, root, request("plan", bundle.request))
    assert results[0]["data"]["missing"] == [] and results[0]["data"]["already_active"] is True


def test_a_blob_just_received_is_not_hashed_again_yet_a_rewrite_is_caught(
        pyz: Path, root: Path) -> None:
    """Received blobs are backdated past the hash cache's racy window, so the next command
    trusts the cache instead of re-hashing (seconds on a Pi); a same-size rewrite right after
    still gets a fresh mtime, and the next plan catches it."""
    data = b"m" * 300_000
    bundle = make_bundle("m", "1", {"model.onnx": data})
    code, results = session(pyz, root, request("plan", bundle.request)
                            + receive(bundle, "model.onnx") + request("activate", bundle.request))
    assert code == 0 and all(r["ok"] for r in results), results
    blob = root / "blobs" / bundle.sha_of("model.onnx")

    def plan() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        proc = subprocess.run([sys.executable, str(pyz), f"--root={root}", "session"],
                              input=request("plan", bundle.request), capture_output=True,
                              env=agent_env(), timeout=60, check=True)
        messages = parse_lines(proc.stdout.decode().splitlines())
        return messages[-1]["data"], [m for m in messages if m.get("event") == "verifying"]

    data_now, hashed = plan()
    assert data_now["already_active"] is True and hashed == []  # trusted, not re-read
    blob.chmod(0o644)
    blob.write_bytes(b"x" * len(data))  # same size, at once: within any timestamp tick
    data_now, hashed = plan()
    assert [e["path"] for e in hashed][:1] == ["model.onnx"]
    assert data_now["already_active"] is False
    assert data_now["missing"] == [bundle.sha_of("model.onnx")]


def test_linking_pruning_and_rolling_back_do_not_make_the_cache_forget(
        pyz: Path, root: Path) -> None:
    """Linking a blob into a version dir and unlinking it (prune, a dropped version) move the
    blob's ctime, which the hash cache keys on: the agent carries its own entries across, so
    none of that makes a later command hash anything again."""
    def messages(command: str, stream: bytes) -> list[dict[str, Any]]:
        proc = subprocess.run([sys.executable, str(pyz), f"--root={root}", command],
                              input=stream, capture_output=True, env=agent_env(), timeout=60,
                              check=True)
        return parse_lines(proc.stdout.decode().splitlines())

    def hashed(lines: list[dict[str, Any]]) -> list[str]:
        return [m["path"] for m in lines if m.get("event") == "verifying"]

    bundles = [make_bundle("m", str(n), {"model.onnx": bytes([n]) * 200_000,
                                         "shared.txt": b"s" * 1000}) for n in range(1, 7)]
    for index, bundle in enumerate(bundles):
        paths = ("model.onnx", "shared.txt") if index == 0 else ("model.onnx",)
        lines = messages("session", request("plan", bundle.request)
                         + b"".join(receive(bundle, p) for p in paths)
                         + request("activate", bundle.request))
        activated = [m for m in lines if m["type"] == "result"][-1]["data"]
        assert activated["changed"] is True and activated["hashed_bytes"] == 0
        assert hashed(lines) == []
    assert activated["pruned"]  # versions 1 and 2 are gone: their unlinks moved ctimes
    assert hashed(messages("session", request("plan", bundles[-1].request))) == []
    rolled = messages("rollback", b"")
    assert rolled[-1]["data"]["active"]["version"] == "5" and hashed(rolled) == []
    planned = messages("session", request("plan", bundles[-2].request))
    assert planned[-1]["data"]["already_active"] is True and hashed(planned) == []


def test_corrupted_stream_is_refused_and_session_ends(pyz: Path, root: Path) -> None:
    bundle = make_bundle("m", "1", {"model.onnx": b"good" * 1000})
    stream = (receive(bundle, "model.onnx", data=b"evil" * 1000)
              + request("activate", bundle.request))
    code, results = session(pyz, root, stream)
    assert code == 1 and len(results) == 1  # activate never ran
    error = results[0]["error"]
    assert error["code"] == "verify_failed" and error["path"] == "model.onnx"
    assert not (root / "blobs" / bundle.sha_of("model.onnx")).exists()
    assert not list((root / "incoming").iterdir()) and not (root / "current").exists()


def test_short_stream_keeps_what_arrived_and_an_empty_one_leaves_nothing(
        pyz: Path, root: Path) -> None:
    """A link that drops mid-blob keeps the bytes that came, in a part of the session's own
    (tests/agent/test_resume.py resumes it); one that drops before any byte leaves nothing."""
    bundle = make_bundle("m", "1", {"model.onnx": b"x" * 5000})
    code, results = session(pyz, root, receive(bundle, "model.onnx", data=b""))
    assert code == 1 and "5000 bytes short of model.onnx" in results[0]["error"]["message"]
    assert not list((root / "incoming").iterdir())
    code, results = session(pyz, root, receive(bundle, "model.onnx", data=b"x" * 100))
    assert code == 1 and results[0]["error"]["code"] == "bad_input"
    error = results[0]["error"]
    assert "4900 bytes short of model.onnx" in error["message"] and error["kept"] == 100
    (part,) = (root / "incoming").iterdir()
    assert re.fullmatch(bundle.sha_of("model.onnx") + r"\.[0-9a-f]{16}\.part", part.name)
    assert part.read_bytes() == b"x" * 100 and error["part"] == str(part)
    assert "the next push resumes from there" in error["message"]


def test_bad_requests_are_errors_not_crashes(pyz: Path, root: Path) -> None:
    code, results = session(pyz, root, b"not json\n")
    assert code == 1 and results[0]["error"]["code"] == "bad_input"
    code, results = session(pyz, root, request("session") + request("status"))
    assert code == 0 and not results[0]["ok"] and results[1]["ok"]  # error, then carries on
    code, results = session(pyz, root, request("launch-missiles"))
    assert results[0]["error"]["code"] == "bad_input" and "launch-missiles" in results[0][
        "error"]["message"]


def test_a_plan_with_golden_prewarms_the_smoke_child_and_an_unused_one_exits(
        root: Path, monkeypatch: Any) -> None:
    """In a session, a plan that leads to an activation starts the smoke-test child at once (its
    onnxruntime import overlaps the transfer); a session that ends without activating ends it."""
    import io

    from agent import cli, smoke
    from agent.protocol import manifest_digest
    from agent.session import serve
    from agent.store import Store

    spawned: list[subprocess.Popen[bytes]] = []
    real_spawn = smoke._spawn

    sizes: list[int] = []

    def spawn(model_bytes: int = 0) -> subprocess.Popen[bytes]:
        sizes.append(model_bytes)
        spawned.append(real_spawn(model_bytes))
        return spawned[-1]

    monkeypatch.setattr(smoke, "_spawn", spawn)
    plain = make_bundle("m", "1", {"model.onnx": b"m" * 1000, "in.npz": b"i", "out.npz": b"o"})
    golden = dict(plain.manifest, model={"path": "model.onnx"},
                  golden={"inputs": "in.npz", "outputs": "out.npz", "rtol": 0.0, "atol": 0.0})
    messages: list[dict[str, Any]] = []

    def run(manifest: dict[str, Any]) -> int:
        stream = io.BytesIO(request("plan", {"manifest": manifest,
                                             "digest": manifest_digest(manifest)}))
        return serve(Store(str(root), messages.append), stream, messages.append,
                     lambda command, store, payload: cli.handle(command, store, lambda: payload),
                     cli._error_for)

    assert run(plain.manifest) == 0 and spawned == []  # no model named: nothing to warm
    assert run(golden) == 0 and len(spawned) == 1
    assert sizes == [1000]  # the model's size from the manifest: what agent.heap reserves for
    assert spawned[0].returncode == 0  # given EOF, it exited cleanly: no child left behind
    assert smoke._warm is None
    assert all(m["ok"] for m in messages if m.get("type") == "result")


def test_a_blob_larger_than_the_buffer_and_the_writeback_step_arrives_whole(
        pyz: Path, root: Path) -> None:
    """20 MB crosses the 1 MiB receive buffer and the 8 MiB writeback step many times; the pipe
    delivers it in reads of whatever size; the session enlarged its stdin pipe to 1 MiB."""
    import fcntl
    import os

    from agent.session import F_SETPIPE_SZ, PIPE_SIZE

    data = os.urandom(20 * 1024 * 1024 + 123)
    bundle = make_bundle("big", "1", {"model.onnx": data})
    proc = subprocess.Popen([sys.executable, str(pyz), f"--root={root}", "session"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=agent_env())
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(request("plan", bundle.request))
    proc.stdin.flush()
    plan = json.loads(proc.stdout.readline())
    assert plan["ok"] and plan["data"]["missing"] == [bundle.sha_of("model.onnx")]
    # F_GETPIPE_SZ = F_SETPIPE_SZ + 1; our end and the agent's stdin are the same pipe.
    assert fcntl.fcntl(proc.stdin.fileno(), F_SETPIPE_SZ + 1) == PIPE_SIZE
    out, _ = proc.communicate(receive(bundle, "model.onnx") + request("activate", bundle.request),
                              timeout=60)
    results = [m for m in parse_lines(out.decode().splitlines()) if m["type"] == "result"]
    assert proc.returncode == 0 and [r["ok"] for r in results] == [True, True], results
    assert results[0]["data"]["bytes"] == len(data)
    assert (root / "current" / "model.onnx").read_bytes() == data


def test_a_writeback_error_is_raised_not_swallowed(tmp_path: Path) -> None:
    """fdatasync failing in the helper thread (here: a pipe, which cannot be synced) must
    surface when the blob is finished, not be lost: a later fsync would not report it again."""
    import os

    import pytest

    from agent.session import WRITEBACK_EVERY, Writeback

    read_end, write_end = os.pipe()
    try:
        writeback = Writeback(write_end)
        writeback.wrote(WRITEBACK_EVERY)  # wakes the thread: fdatasync(pipe) -> EINVAL
        writeback.stop()
        with pytest.raises(OSError):
            writeback.sync()
        assert writeback.error is not None
    finally:
        os.close(read_end)
        os.close(write_end)


# The agent as a session, and its own peak RSS (VmHWM: this process's memory only; ru_maxrss
# from wait4 also counts the pre-exec copy of the pytest process it was forked from).
PEAK_PROBE = """
import os, runpy, sys
out, sys.argv = sys.argv[1], sys.argv[2:]

def record_peak():
    with open("/proc/self/status") as status:
        peak = [line.split()[1] for line in status if line.startswith("VmHWM:")][0]
    with open(out, "w") as handle:
        handle.write(peak)

real_exit = os._exit
def exit_recording(code):  # the zipapp ends with os._exit (no teardown)
    record_peak()
    real_exit(code)
os._exit = exit_recording
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_an_endless_request_line_ends_the_session_in_bounded_memory(
        pyz: Path, root: Path, tmp_path: Path) -> None:
    """A stream out of step (or not the control plane at all): 300 MiB with no newline was
    read whole into the agent's memory (~331 MB on a Pi with 1 GB)."""
    from agent.session import MAX_REQUEST_LINE

    peak_file = tmp_path / "peak-kb"
    proc = subprocess.Popen([sys.executable, "-c", PEAK_PROBE, str(peak_file), str(pyz),
                             f"--root={root}", "session"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=agent_env())
    chunk = b"x" * (1 << 20)
    try:
        for _ in range(MAX_REQUEST_LINE // len(chunk) * 4):  # four times the limit
            proc.stdin.write(chunk)  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]
    except BrokenPipeError:
        pass  # the agent stopped reading: what we want
    out = proc.stdout.read()  # type: ignore[union-attr]
    assert proc.wait(60) == 1, out[-2000:]
    results = [m for m in parse_lines(out.decode().splitlines()) if m["type"] == "result"]
    assert len(results) == 1 and results[0]["error"]["code"] == "bad_input"
    assert "longer than" in results[0]["error"]["message"]
    peak_kb = int(peak_file.read_text())
    assert peak_kb < (MAX_REQUEST_LINE >> 10) * 2 + 100_000, peak_kb  # not 4x the limit


class LiveSession:
    """An agent ``session`` kept open, asked one request at a time."""

    def __init__(self, pyz: Path, root: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, str(pyz), f"--root={root}", "session"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=agent_env())

    def ask(self, raw: bytes) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(raw)
        self.proc.stdin.flush()
        while line := self.proc.stdout.readline():
            (message,) = parse_lines([line.decode()])
            if message["type"] == "result":
                return message
        raise AssertionError("the session ended without a result")

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(60)


def test_another_sessions_activation_keeps_the_blobs_this_one_planned(
        pyz: Path, root: Path) -> None:
    """Two control planes push different bundles to one device at once. B has planned its
    bundle and received its blob when A's activation prunes every blob its kept versions do
    not use: B's must stay (B's activate failed with missing_blob), and once B ends, a later
    prune may take what nobody keeps."""
    a = make_bundle("a", "1", {"model.onnx": b"A" * 1000})
    b = make_bundle("b", "1", {"model.onnx": b"B" * 1000, "labels.txt": b"yes\nno\n"})
    first, second = LiveSession(pyz, root), LiveSession(pyz, root)
    try:
        planned = second.ask(request("plan", b.request))["data"]
        assert sorted(planned["missing"]) == sorted(b.contents)
        assert second.ask(receive(b, "model.onnx"))["ok"]  # one blob here, one still to send
        assert first.ask(request("plan", a.request))["ok"]
        assert first.ask(receive(a, "model.onnx"))["ok"]
        assert first.ask(request("activate", a.request))["ok"]  # prunes
        assert (root / "blobs" / b.sha_of("model.onnx")).exists()
        assert second.ask(receive(b, "labels.txt"))["ok"]
        activated = second.ask(request("activate", b.request))
        assert activated["ok"], activated
    finally:
        assert first.close() == 0 and second.close() == 0
    assert not list((root / "sessions").iterdir())  # both records gone with their sessions
