"""Helpers for the agent tests: run the real zipapp as a subprocess, make bundles, upload.

Every run goes through ``run_agent``, which also checks the protocol invariants (every stdout line
is a protocol object, exactly one result, last, exit status 0 iff ok), so each test asserts them
for free. (A plain module, not conftest, so tests can import it by a name no other test dir uses.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.protocol import MANIFEST_SCHEMA, manifest_digest, parse_lines

REPO = Path(__file__).resolve().parents[2]


@dataclass
class AgentRun:
    returncode: int
    lines: list[dict[str, Any]]
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        return self.lines[-1]

    @property
    def ok(self) -> bool:
        return bool(self.result["ok"])

    @property
    def data(self) -> dict[str, Any]:
        assert self.ok, (self.result, self.stderr)
        return self.result["data"]

    @property
    def error(self) -> dict[str, Any]:
        assert not self.ok, self.result
        return self.result["error"]

    @property
    def events(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["type"] == "progress"]


def agent_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update(extra)
    return env


def run_agent(
    pyz: Path,
    root: Path | str,
    command: str,
    stdin: Any = None,
    *,
    python: str = sys.executable,
    flags: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    argv: list[str] | None = None,
    cwd: Path | None = None,
) -> AgentRun:
    """Run ``python [flags] pyz --root ROOT COMMAND`` with ``stdin`` (a dict is JSON-encoded)."""
    if isinstance(stdin, (dict, list)):
        data = json.dumps(stdin).encode()
    elif isinstance(stdin, str):
        data = stdin.encode()
    else:
        data = stdin if stdin is not None else b""
    cmd = argv if argv is not None else [python, *flags, str(pyz), "--root", str(root), command]
    proc = subprocess.run(
        cmd, input=data, capture_output=True, env=env if env is not None else agent_env(),
        timeout=60, check=False, cwd=cwd,
    )
    stdout = proc.stdout.decode()
    lines = parse_lines(stdout.splitlines())
    results = [line for line in lines if line["type"] == "result"]
    assert len(results) == 1 and lines[-1] is results[0], stdout + proc.stderr.decode()
    assert all(line["type"] == "progress" for line in lines[:-1]), stdout
    assert proc.returncode == (0 if results[0]["ok"] else 1), (proc.returncode, stdout)
    return AgentRun(proc.returncode, lines, proc.stderr.decode())


@dataclass
class Bundle:
    manifest: dict[str, Any]
    digest: str
    contents: dict[str, bytes] = field(default_factory=dict)  # sha -> bytes

    @property
    def request(self) -> dict[str, Any]:
        return {"manifest": self.manifest, "digest": self.digest}

    def sha_of(self, path: str) -> str:
        return next(f["sha256"] for f in self.manifest["files"] if f["path"] == path)


def make_bundle(name: str, version: str, files: dict[str, bytes]) -> Bundle:
    entries = []
    contents = {}
    for path, data in sorted(files.items()):
        sha = hashlib.sha256(data).hexdigest()
        entries.append({"path": path, "sha256": sha, "size": len(data)})
        contents[sha] = data
    manifest = {"schema": MANIFEST_SCHEMA, "name": name, "version": version, "files": entries}
    return Bundle(manifest, manifest_digest(manifest), contents)


def upload(root: Path, bundle: Bundle, shas: list[str] | None = None) -> None:
    """What the control plane does over SFTP: write incoming/<sha>.part for each blob."""
    incoming = root / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    for sha in shas if shas is not None else bundle.contents:
        (incoming / f"{sha}.part").write_bytes(bundle.contents[sha])


def push(pyz: Path, root: Path, bundle: Bundle, *, plan: bool = True, **kw: Any) -> AgentRun:
    """[plan ->] upload (missing) blobs -> activate, asserting success.

    ``plan=False`` uploads every blob and skips ``plan`` (which imports onnxruntime and is the
    slowest command) for tests about activation itself.
    """
    if plan:
        planned = run_agent(pyz, root, "plan", bundle.request, **kw).data
        upload(root, bundle, planned["missing"])
    else:
        upload(root, bundle)
    run = run_agent(pyz, root, "activate", bundle.request, **kw)
    assert run.ok, (run.result, run.stderr)
    return run


def read_state(root: Path) -> dict[str, Any]:
    return json.loads((root / "state.json").read_text())


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_sysfs(base: Path, *, temp: str | None = "61500\n", freqs: tuple[int, ...] = (
        600000, 1500000, 1500000, 1800000), throttled_file: str | None = None) -> Path:
    """A minimal sysfs tree laid out as DESIGN's simulated-hardware contract says."""
    sysfs = base / "sys"
    sysfs.mkdir(parents=True)
    if temp is not None:
        write(sysfs / "class/thermal/thermal_zone0/temp", temp)
    for cpu, khz in enumerate(freqs):
        write(sysfs / f"devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq", f"{khz}\n")
    write(sysfs / "devices/system/cpu/cpufreq/policy0/scaling_cur_freq", "1\n")  # not a CPU
    if throttled_file is not None:
        write(sysfs / "devices/platform/soc/soc:firmware/get_throttled", throttled_file)
    return sysfs


def fake_vcgencmd(base: Path, throttled: str = "0x50005", temp: str = "52.1",
                  fail: bool = False) -> Path:
    """A ``vcgencmd`` script answering like the real one (or failing like a non-Pi)."""
    bindir = base / "bin"
    bindir.mkdir(parents=True)
    script = bindir / "vcgencmd"
    body = ('echo "VCHI initialization failed" >&2; exit 255' if fail else
            f'case "$1" in get_throttled) echo "throttled={throttled}";; '
            f"measure_temp) echo \"temp={temp}'C\";; *) exit 1;; esac")
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return bindir


def run_watching(pyz: Path, root: Path, command: str, request: dict[str, Any],
                 env: dict[str, str], on_event: Callable[[dict[str, Any]], None]) -> AgentRun:
    """``command`` with ``on_event`` called on each progress line as it arrives (with the
    agent's pid added as ``agent_pid``)."""
    stderr_path = root.parent / "agent-stderr.log"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, str(pyz), "--root", str(root), command],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                env=env)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(request).encode())
        proc.stdin.close()
        raw_lines = []
        for raw in proc.stdout:
            raw_lines.append(raw.decode())
            obj = json.loads(raw)
            if obj["type"] == "progress":
                on_event(dict(obj, agent_pid=proc.pid))
        returncode = proc.wait(timeout=60)
    lines = parse_lines(raw_lines)
    assert [line["type"] for line in lines].count("result") == 1 and lines[-1]["type"] == "result"
    assert returncode == (0 if lines[-1]["ok"] else 1)
    return AgentRun(returncode, lines, stderr_path.read_text())


@contextlib.contextmanager
def stopped(event: dict[str, Any]) -> Iterator[None]:
    """SIGSTOP the agent of a ``run_watching`` event (first: it starts no next child then) and
    the measuring child that sent it, if still there, for the block: what the block does
    happens before the agent's next step, however fast the machine."""
    pids = [event["agent_pid"], event["pid"]]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # a fast child may be done already
            os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in reversed(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
