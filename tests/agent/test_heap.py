"""agent.heap: the smoke-test child faults in heap for the model load during the transfer.

The mechanism is checked in real child processes (glibc reads its tunables at start); the end to
end case streams a 20 MiB golden bundle through a real ``session`` and reads, from the smoke
report, that the pre-warmed child reserved for it and the model still matched its golden outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import agent_env, make_bundle
from test_session import receive, request

from agent import heap
from agent.protocol import manifest_digest, parse_lines
from orchestrator.artifacts.golden import compute_golden
from orchestrator.demo.model import make_large_model

MIB = 1 << 20
REPO = Path(__file__).resolve().parents[2]

RSS_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
from agent import heap
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
before = rss()
reserved = heap.reserve_from_env()
print(reserved, rss() - before)
"""


def probe(env: dict[str, str]) -> tuple[int, int]:
    """(bytes reserved, VmRSS growth once the reserve was freed) in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(REPO)], env=env, check=True,
                         capture_output=True, text=True, timeout=60).stdout.split()
    return int(out[0]), int(out[1])


def test_this_machine_runs_glibc_with_tunables() -> None:
    """The tests below exercise the real mechanism: they need glibc >= 2.26 (Debian has it)."""
    version = heap.glibc_version()
    assert version is not None and version >= (2, 26), version


def test_the_reserve_stays_faulted_in_only_with_the_tunables() -> None:
    """With the tunables, the freed block stays in the process (RSS keeps it) for the load to
    reuse; asking for the reserve without them frees it back to the kernel: no head start."""
    env = heap.reserve_env(dict(os.environ), 40 * MIB)
    reserved, kept = probe(env)
    assert reserved == int(40 * MIB * heap.RESERVE_FACTOR)
    assert kept >= 0.9 * reserved, (reserved, kept)

    bare = {k: v for k, v in env.items() if k != "GLIBC_TUNABLES"}
    reserved, kept = probe(bare)
    assert reserved == int(40 * MIB * heap.RESERVE_FACTOR) and kept < 0.2 * reserved


def test_reserve_env_extends_tunables_and_keeps_the_devices_own(monkeypatch: Any) -> None:
    monkeypatch.setattr(heap, "glibc_version", lambda: (2, 36))
    env = {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.mmap_max=4", "A": "b"}
    out = heap.reserve_env(env, 100 * MIB)
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.mmap_max=4",
                   "A": "b"}  # the caller's dict is left alone
    assert out["GLIBC_TUNABLES"].split(":") == [
        "glibc.malloc.tcache_count=0", "glibc.malloc.mmap_max=4",  # theirs wins
        f"glibc.malloc.trim_threshold={heap.KEEP_FREED}"]
    assert out[heap.RESERVE_ENV] == str(250 * MIB) and out["A"] == "b"


@pytest.mark.parametrize(("version", "size"), [
    (None, 100 * MIB),  # musl or another libc: the tunables mean nothing there
    ((2, 24), 100 * MIB),  # glibc before tunables
    ((2, 36), heap.MIN_MODEL_BYTES - 1),  # a small model: faults cost a few ms
])
def test_no_reserve_where_it_cannot_help(monkeypatch: Any, version: Any, size: int) -> None:
    monkeypatch.setattr(heap, "glibc_version", lambda: version)
    assert heap.reserve_env({"A": "b"}, size) == {"A": "b"}


def test_the_reserve_is_capped_by_free_memory(monkeypatch: Any) -> None:
    monkeypatch.setattr(heap, "mem_available", lambda: 16 * MIB)
    monkeypatch.setenv(heap.RESERVE_ENV, str(1 << 40))
    assert heap.reserve_from_env() == 8 * MIB  # half of MemAvailable, not a terabyte
    assert heap.RESERVE_ENV not in os.environ  # not passed on to anything the child starts
    monkeypatch.setenv(heap.RESERVE_ENV, "lots")
    assert heap.reserve_from_env() == 0
    assert heap.reserve_from_env() == 0  # nothing asked


def test_a_pushed_large_model_is_smoke_tested_with_the_reserve(pyz: Path, root: Path,
                                                              tmp_path: Path) -> None:
    """plan (pre-warms the child with the model's size) -> receive -> activate, one session."""
    model = make_large_model(tmp_path / "model.onnx", 20)
    signature = [{"name": "x", "dtype": "float", "shape": [1, 20 * MIB // 256]}]
    golden = compute_golden(model, "model.onnx", signature, [("model.onnx", model)], {},
                            "fp32").golden
    assert golden is not None
    base = make_bundle("big", "1", {"model.onnx": model.read_bytes(),
                                    ".edgefleet/golden_inputs.npz": golden.inputs,
                                    ".edgefleet/golden_outputs.npz": golden.outputs})
    manifest = dict(base.manifest, model={"path": "model.onnx", "inputs": signature},
                    golden={"inputs": ".edgefleet/golden_inputs.npz",
                            "outputs": ".edgefleet/golden_outputs.npz",
                            "rtol": golden.rtol, "atol": golden.atol})
    bundle = type(base)(manifest, manifest_digest(manifest), base.contents)
    stream = (request("plan", bundle.request)
              + b"".join(receive(bundle, f["path"]) for f in manifest["files"])
              + request("activate", bundle.request))
    proc = subprocess.run([sys.executable, str(pyz), f"--root={root}", "session"], input=stream,
                          capture_output=True, env=agent_env(), timeout=120, check=False)
    results = [m for m in parse_lines(proc.stdout.decode().splitlines())
               if m["type"] == "result"]
    assert proc.returncode == 0 and all(r["ok"] for r in results), (results, proc.stderr)
    smoke = results[-1]["data"]["smoke"]
    size = model.stat().st_size
    assert smoke["ok"] and json.dumps(smoke)
    assert smoke["heap_reserved_mb"] == round(int(size * heap.RESERVE_FACTOR) / 1e6, 1)
