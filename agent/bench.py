"""``bench``: latency of an installed bundle at several thread counts, with the telemetry that
says whether the numbers can be trusted (see ``agent.sampler``).

Flow in the agent process: find the bundle version by digest in the device history, verify its
files (through the hash cache, so cheap), plan the inputs (``agent.inputs``; every mistake is a
``bad_input`` before anything runs), then measure each thread count in a fresh child process and
relay its progress events.

Why a fresh process per thread count: peak RSS (VmHWM) only ever grows within a process, so in
one process every thread count after the first would report the first one's peak; ORT's thread
pools and allocator arenas would carry over between sessions; and a crash or the OOM killer in
the 4-thread run must become that entry's error while 1 and 2 threads still report.

Why gc is disabled during warmup and timed runs (as ``timeit`` does): a cyclic collection
landing inside one run would be timed as model latency.

Why each timed run's CPU time is measured too (``cpu_ms``: stats of the process's CPU time
per run, all its threads, read just outside the wall-clock window so the latencies are timed as
before): wall time is what a user waits, but it also counts the time the scheduler gave the
cores to someone else. On a 2-core VM shared with other work, one run's wall p50 of a 2 ms model
was 6-9 ms in a third of fresh processes while its CPU p50 stayed at 2.0 +- 0.2 ms (median
run-to-run change 28% wall, 8.5% CPU, bench/changepoints.py's recording). The CPU time an
inference costs is what a new model version changes, so change-point detection reads it.
At more than one thread a run's reading is, in effect, the calling thread's: Linux adds a running
worker thread's time to the process clock only at a tick or a switch, so sub-tick runs miss it
and a few runs show it in bursts (the sum over the timed runs stays exact; README "Regressions").
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from agent import inuse, journal
from agent.children import (
    emit_measured,
    failed_entry,
    import_onnxruntime,
    run_child,
    sampled,
    serve_child,
)
from agent.fsutil import AgentError
from agent.inputs import build_inputs, describe, find_sample_npz, plan_inputs
from agent.protocol import (
    E_BAD_INPUT,
    E_VERIFY_FAILED,
    check_relative_path,
    event,
    is_sha256,
    manifest_files,
)
from agent.sampler import MAX_HZ, MIN_HZ, Sampler
from agent.sensors import is_simulated
from agent.store import MANIFEST_NAME, Store, parse_manifest_bytes

E_NOT_ON_DEVICE = "not_on_device"
DEFAULTS: Dict[str, Any] = {
    "threads": [1, 2, 4], "warmup": 5, "runs": 30, "min_seconds": 0, "shapes": {},
    "constants": {}, "providers": ["CPUExecutionProvider"], "graph_optimization": "all",
    "sample_hz": 4,
}
OPT_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED",
              "basic": "ORT_ENABLE_BASIC", "disabled": "ORT_DISABLE_ALL"}
MAX_THREADS = 256
MAX_TIMED_RUNS = 1000000  # bounds memory and result size when min_seconds meets a tiny model
PROGRESS_INTERVAL_NS = 250 * 1000 * 1000  # at most ~4 progress events a second
MB = 1024.0 * 1024.0

Emit = Callable[[Dict[str, Any]], None]


# -- the request ----------------------------------------------------------------------------
def _number(req: Dict[str, Any], key: str, low: float, high: float, integer: bool) -> Any:
    value = req[key]
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        raise AgentError(E_BAD_INPUT, "%s must be %s from %s to %s, got %r" % (
            key, "an integer" if integer else "a number", low, high, value))
    return value


def parse_request(doc: Any) -> Dict[str, Any]:
    """The bench input with defaults filled in; ``bad_input`` naming the first bad field."""
    if not isinstance(doc, dict):
        raise AgentError(E_BAD_INPUT, 'bench expects {"digest": "<sha256>", ...}')
    unknown = sorted(set(doc) - set(DEFAULTS) - {"digest"})
    if unknown:
        raise AgentError(E_BAD_INPUT, "unknown bench field(s) %s (known: digest, %s)"
                         % (", ".join(unknown), ", ".join(DEFAULTS)))
    req = dict(DEFAULTS, **doc)
    if not is_sha256(req.get("digest")):
        raise AgentError(E_BAD_INPUT, "digest must be 64 lowercase hex characters, got %r"
                         % (req.get("digest"),))
    threads = req["threads"]
    if not isinstance(threads, list) or not threads or not all(
            isinstance(t, int) and not isinstance(t, bool) and 1 <= t <= MAX_THREADS
            for t in threads):
        raise AgentError(E_BAD_INPUT, "threads must be a non-empty list of integers from 1 to "
                         "%d, got %r" % (MAX_THREADS, threads))
    _number(req, "warmup", 0, 100000, True)
    _number(req, "runs", 1, MAX_TIMED_RUNS, True)
    _number(req, "min_seconds", 0, 3600, False)
    _number(req, "sample_hz", MIN_HZ, MAX_HZ, False)
    providers = req["providers"]
    if not isinstance(providers, list) or not providers or not all(
            isinstance(p, str) and p for p in providers):
        raise AgentError(E_BAD_INPUT, "providers must be a non-empty list of names, got %r"
                         % (providers,))
    if req["graph_optimization"] not in OPT_LEVELS:
        raise AgentError(E_BAD_INPUT, "graph_optimization must be one of %s, got %r"
                         % (", ".join(OPT_LEVELS), req["graph_optimization"]))
    return req


# -- the agent process ----------------------------------------------------------------------
def find_version(store: Store, digest: str) -> Tuple[Dict[str, Any], str]:
    """The newest history entry with ``digest`` whose version dir exists, and that dir."""
    state = store.load_state() if os.path.isdir(store.root) else {"history": []}
    entries = [e for e in state["history"] if e.get("digest") == digest]
    for entry in reversed(entries):
        path = store.version_path(entry)
        if path is not None and os.path.isdir(path):
            return entry, path
    ref = "%s@%s" % (entries[-1].get("name"), entries[-1].get("version")) if entries else None
    label = "%s (%s)" % (ref, digest[:16]) if ref else "with digest %s" % digest
    raise AgentError(E_NOT_ON_DEVICE, "bundle %s is not on this device: push it first "
                     "(edgefleet push %s TARGETS), then bench it"
                     % (label, ref or "NAME@VERSION"), digest=digest)


@contextlib.contextmanager
def holding_version(store: Store, digest: str,
                    verb: str = "bench") -> Iterator[Tuple[Dict[str, Any], str]]:
    """(history entry, version dir) of ``digest``, verified and held against prunes
    (agent.inuse) until the block ends: both under the root lock, so a push's prune cannot
    remove it in between, nor while it is measured."""
    def find() -> Tuple[Dict[str, Any], str]:
        try:
            return find_version(store, digest)
        except AgentError as exc:
            if exc.code == E_NOT_ON_DEVICE:
                exc.message = exc.message.replace("then bench it", "then %s it" % verb)
            raise

    if not os.path.isdir(store.root):
        find()  # a root never used has nothing to lock: say "not on this device" instead
    with contextlib.ExitStack() as held:
        with journal.locked(store):
            entry, vdir = find()  # again: a prune may have come in between
            held.enter_context(inuse.reading(vdir))
            problem = store.version_problem(entry)
            store.verifier.cache.save()
        if problem is not None:
            raise AgentError(E_VERIFY_FAILED, "%s@%s on this device fails verification (%s); "
                             "push it again" % (entry.get("name"), entry.get("version"),
                                                problem), digest=digest)
        yield entry, vdir


def bench(store: Store, doc: Any) -> Dict[str, Any]:
    req = parse_request(doc)
    with holding_version(store, req["digest"]) as (entry, vdir):
        return _bench(store, req, entry, vdir)


def _bench(store: Store, req: Dict[str, Any], entry: Dict[str, Any],
           vdir: str) -> Dict[str, Any]:
    label = "%s@%s" % (entry.get("name"), entry.get("version"))
    with open(os.path.join(vdir, MANIFEST_NAME), "rb") as handle:
        manifest = parse_manifest_bytes(handle.read())
    files = manifest_files(manifest)
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    sizes = {f["path"]: f["size"] for f in files}
    try:
        model_rel = check_relative_path(model.get("path"))
    except ValueError:
        model_rel = None
    if model_rel not in sizes:
        raise AgentError(E_BAD_INPUT, "%s's manifest names no model file (model.path); rebuild "
                         "it with `edgefleet bundle build`" % label)
    npz_rel = find_sample_npz(files)
    # Constants recorded at build (``bundle build --input sr=16000``) are this bundle's
    # defaults; the request's own win.
    constants = req["constants"]
    recorded_constants = manifest.get("input_constants")
    if isinstance(constants, dict) and isinstance(recorded_constants, dict):
        constants = dict(recorded_constants, **constants)
    plan = plan_inputs(model.get("inputs"), shapes=req["shapes"], constants=constants,
                       recorded=manifest.get("input_shapes"),
                       recorded_assumed=manifest.get("shape_defaults"),
                       npz=(os.path.join(vdir, npz_rel), npz_rel) if npz_rel else None)
    spec = {key: req[key] for key in ("warmup", "runs", "min_seconds", "providers",
                                      "graph_optimization", "sample_hz")}
    spec.update(model_path=os.path.join(vdir, model_rel), inputs=plan)
    external = (model_rel + ".data", model_rel + "_data")  # exporters' external-weight names
    common = {
        "bundle": {"name": entry.get("name"), "version": entry.get("version"),
                   "digest": req["digest"]},
        "model_size_mb": round(sum(sizes[p] for p in (model_rel,) + external if p in sizes)
                               / MB, 3),
        "inputs": describe(plan),
        "providers": req["providers"],
    }
    runtime: Dict[str, Any] = {}
    results = []
    for threads in req["threads"]:
        results.append(run_child(dict(spec, threads=threads), store.emit, runtime))
        emit_measured(store.emit, "bench", results[-1], common, runtime)
    if "onnxruntime" not in runtime:
        from agent.facts import onnxruntime_version_fast

        runtime["onnxruntime"] = onnxruntime_version_fast()
    return dict(
        common,
        providers=runtime.get("providers", req["providers"]),
        onnxruntime=runtime["onnxruntime"],
        simulated=is_simulated(),
        settings={key: req[key] for key in ("threads", "warmup", "runs", "min_seconds",
                                            "graph_optimization", "sample_hz")},
        results=results,
    )


def read_rss_mb(path: str = "/proc/self/status") -> Dict[str, Optional[float]]:
    """VmRSS (resident now) and VmHWM (peak resident) in MB; None where /proc has no answer."""
    values: Dict[str, Optional[float]] = {"VmRSS": None, "VmHWM": None}
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in values and rest.split():
                    values[key] = round(int(rest.split()[0]) / 1024.0, 2)  # kB
    except (OSError, ValueError):
        pass
    return values


def latency_stats(latencies_ms: List[float]) -> Dict[str, Any]:
    """Summary of the recorded (rounded) latencies, so anyone can recompute it from the list."""
    import numpy as np

    values = np.asarray(latencies_ms, dtype=np.float64)
    p50, p90, p95, p99 = (float(v) for v in np.percentile(values, [50, 90, 95, 99]))
    return {"n": int(values.size), "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if values.size > 1 else None,
            "min": float(values.min()), "max": float(values.max()),
            "p50": p50, "p90": p90, "p95": p95, "p99": p99}


class Progress:
    """``bench`` progress events, at most one per PROGRESS_INTERVAL_NS within a phase."""

    def __init__(self, emit: Emit, threads: int) -> None:
        self.emit, self.threads, self.phase, self.last = emit, threads, "", 0

    def update(self, phase: str, done: int, total: int, now: int = 0, force: bool = False,
               seconds: Optional[float] = None, min_seconds: float = 0) -> None:
        """``done``/``total``: runs of the phase done and asked for. When ``min_seconds`` also
        decides how long the timed loop lasts, ``done`` may pass ``total`` (a tiny model does
        thousands of runs in the seconds asked for): the event then also carries ``seconds``
        (timed so far) and ``min_seconds``, so a reader shows both conditions against their
        own totals instead of a count past its total."""
        now = now or time.perf_counter_ns()
        if not force and phase == self.phase and now - self.last < PROGRESS_INTERVAL_NS:
            return
        self.phase, self.last = phase, now
        fields: Dict[str, Any] = {}
        if min_seconds and seconds is not None:
            fields = {"seconds": round(seconds, 2), "min_seconds": min_seconds}
        self.emit(event("bench", threads=self.threads, phase=phase, done=done, total=total,
                        pid=os.getpid(), **fields))


def _timed(ort: Any, spec: Dict[str, Any], feeds: Dict[str, Any], sampler: Sampler,
           progress: Progress) -> Dict[str, Any]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    options.inter_op_num_threads = 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                               OPT_LEVELS[spec["graph_optimization"]])
    options.log_severity_level = 3
    clock = time.perf_counter_ns
    progress.update("load", 0, 1, force=True)
    before = read_rss_mb()["VmRSS"]
    start = clock()
    session = ort.InferenceSession(spec["model_path"], options, providers=spec["providers"])
    load_ns = clock() - start
    run = session.run
    start = clock()
    run(None, feeds)
    first_ns = clock() - start
    progress.update("load", 1, 1, force=True)
    gc.disable()
    warmup, runs, min_ns = spec["warmup"], spec["runs"], int(spec["min_seconds"] * 1e9)
    progress.update("warmup", 0, warmup, force=True)
    for done in range(1, warmup + 1):
        run(None, feeds)
        progress.update("warmup", done, warmup, force=done == warmup)
    sampler.mark("timed_start")
    min_s = spec["min_seconds"]
    progress.update("timed", 0, runs, force=True, seconds=0.0, min_seconds=min_s)
    latencies: List[int] = []
    cpu: List[int] = []
    cpu_clock = time.process_time_ns
    began = end = clock()
    while (len(latencies) < runs or end - began < min_ns) and len(latencies) < MAX_TIMED_RUNS:
        cpu_start = cpu_clock()
        start = clock()
        run(None, feeds)
        end = clock()
        cpu.append(cpu_clock() - cpu_start)
        latencies.append(end - start)
        progress.update("timed", len(latencies), runs, now=end, seconds=(end - began) / 1e9,
                        min_seconds=min_s)
    gc.enable()
    progress.update("timed", len(latencies), runs, force=True, seconds=(end - began) / 1e9,
                    min_seconds=min_s)
    rss = read_rss_mb()
    latencies_ms = [round(ns / 1e6, 4) for ns in latencies]
    return {
        "ok": True, "load_ms": round(load_ns / 1e6, 3),
        "first_inference_ms": round(first_ns / 1e6, 4), "warmup": warmup,
        "runs": len(latencies), "wall_s": round((end - began) / 1e9, 4),
        "timed_s": round(sum(latencies) / 1e9, 6),
        "latencies_ms": latencies_ms, "latency_ms": latency_stats(latencies_ms),
        "cpu_ms": latency_stats([round(ns / 1e6, 4) for ns in cpu]),
        "peak_rss_mb": rss["VmHWM"], "steady_rss_mb": rss["VmRSS"],
        "rss_before_load_mb": before, "providers": session.get_providers(),
    }


def measure(spec: Dict[str, Any], emit: Emit) -> Dict[str, Any]:
    """One thread count, in this (fresh) process; fatal set-up problems raise AgentError."""
    ort = import_onnxruntime()
    available = ort.get_available_providers()
    unknown = [p for p in spec["providers"] if p not in available]
    if unknown:
        raise AgentError(E_BAD_INPUT, "execution provider(s) %s not available in onnxruntime %s "
                         "on this device (available: %s)"
                         % (", ".join(unknown), ort.__version__, ", ".join(available)))
    feeds = build_inputs(spec["inputs"])  # once, outside anything timed
    progress = Progress(emit, spec["threads"])
    entry = sampled(failed_entry(spec["threads"], ""), spec,
                    lambda sampler: _timed(ort, spec, feeds, sampler, progress))
    providers = entry.pop("providers", None)
    return {"entry": entry, "onnxruntime": str(ort.__version__), "providers": providers}


def child_main() -> int:
    """Entry point of a bench measurement child (see agent.children.child_command)."""
    return serve_child("bench_child", measure)
