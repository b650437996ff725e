"""``eval``: run a staged dataset through an installed bundle, per thread count, timing
preprocessing and inference separately, with the same telemetry and validity as ``bench``.

Input: ``{"digest": bundle digest, "dataset": dataset digest, "threads": [1, 2], "warmup": 1}``
(docs/pipeline.md "Agent commands"). The bundle must be a kept version on the device and the
dataset staged (``dataset_stage``); both are verified through the hash cache first.

How a sample reaches the model:
- tensor datasets: the .npz arrays are keyed by input name with the sample on the first axis;
  each sample is fed as it is (keeping a batch axis of 1 when the model has one);
- audio datasets: float32 mono at the model's rate. When the manifest's ``preprocessing`` is
  ``ast-fbank`` the waveform goes through ``agent.features`` (log-mel filterbank in numpy) into
  the model's single input; otherwise the waveform itself is that input. Missing axes of size 1
  are added after the batch axis (``[1, T, F]`` features into a ``[batch, 1, T, F]`` CNN).

Which output holds the scores: the first output whose name contains "prob" (exporters often
give both ``logits`` and ``probabilities``), else the first output. Probabilities: a vector
whose entries are all in [0, 1] and sum to 1 within 1e-3 is taken as it is; anything else is
passed through a softmax (logits). A single score is a binary model's P(class 1): used as it is
when in [0, 1], else through a sigmoid; it becomes ``[1 - p, p]``.

Why one fresh child per thread count, why gc is off while timing: see agent.bench.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import time
from typing import Any, Callable, Dict, List

from agent import inuse, journal
from agent.bench import MAX_THREADS, holding_version, latency_stats, read_rss_mb
from agent.children import (
    child_command,
    emit_measured,
    failed_entry,
    import_onnxruntime,
    run_child,
    sampled,
    serve_child,
)
from agent.datasets import dataset_dir, load_staged
from agent.fsutil import AgentError
from agent.inputs import NUMPY_DTYPES
from agent.protocol import (
    E_BAD_INPUT,
    E_MISSING_DEPENDENCY,
    check_relative_path,
    event,
    is_sha256,
)
from agent.sampler import MAX_HZ, MIN_HZ, Sampler
from agent.sensors import is_simulated
from agent.store import MANIFEST_NAME, Store, parse_manifest_bytes

DEFAULTS: Dict[str, Any] = {"threads": [1], "warmup": 1, "sample_hz": 4,
                            "providers": ["CPUExecutionProvider"]}
PROGRESS_INTERVAL_NS = 250 * 1000 * 1000
PROB_SUM_TOLERANCE = 1e-3
FLOAT_TYPES = ("float", "float16", "double")

Emit = Callable[[Dict[str, Any]], None]


# -- the request ----------------------------------------------------------------------------
def parse_request(doc: Any) -> Dict[str, Any]:
    if not isinstance(doc, dict):
        raise AgentError(E_BAD_INPUT, 'eval expects {"digest": "<sha256>", "dataset": '
                         '"<sha256>", "threads": [1], "warmup": 1}')
    unknown = sorted(set(doc) - set(DEFAULTS) - {"digest", "dataset"})
    if unknown:
        raise AgentError(E_BAD_INPUT, "unknown eval field(s) %s" % ", ".join(unknown))
    req = dict(DEFAULTS, **doc)
    for key in ("digest", "dataset"):
        if not is_sha256(req.get(key)):
            raise AgentError(E_BAD_INPUT, "%s must be 64 lowercase hex characters, got %r"
                             % (key, req.get(key)))
    threads = req["threads"]
    if not isinstance(threads, list) or not threads or not all(
            isinstance(t, int) and not isinstance(t, bool) and 1 <= t <= MAX_THREADS
            for t in threads):
        raise AgentError(E_BAD_INPUT, "threads must be a non-empty list of integers from 1 to "
                         "%d, got %r" % (MAX_THREADS, threads))
    warmup = req["warmup"]
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup <= 1000:
        raise AgentError(E_BAD_INPUT, "warmup must be an integer from 0 to 1000, got %r"
                         % (warmup,))
    hz = req["sample_hz"]
    if isinstance(hz, bool) or not isinstance(hz, (int, float)) or not MIN_HZ <= hz <= MAX_HZ:
        raise AgentError(E_BAD_INPUT, "sample_hz must be from %s to %s, got %r"
                         % (MIN_HZ, MAX_HZ, hz))
    return req


# -- the agent process ----------------------------------------------------------------------
def _feeding(manifest: Dict[str, Any], vdir: str, data: Dict[str, Any], ddir: str,
             label: str) -> Dict[str, Any]:
    """How samples become model inputs (see module docstring); ``bad_input`` when they can't."""
    import numpy as np

    inputs = (manifest.get("model") or {}).get("inputs") or []
    names = [i.get("name") for i in inputs]
    fmt = data.get("format")
    if fmt == "tensors":
        rel = check_relative_path(data["samples"][0]["path"]) if data.get("samples") else None
        if rel is None:
            raise AgentError(E_BAD_INPUT, "the dataset has no samples")
        with np.load(os.path.join(ddir, rel), allow_pickle=False) as npz:
            keys = [k for k in npz.files if k != "labels"]
        if sorted(keys) != sorted(names):
            raise AgentError(E_BAD_INPUT, "the dataset's arrays %s are not %s's inputs %s; "
                             "rebuild it with --for" % (sorted(keys), label, names))
        return {"kind": "tensors", "npz": os.path.join(ddir, rel), "inputs": inputs}
    if fmt != "audio":
        raise AgentError(E_BAD_INPUT, "unknown dataset format %r" % (fmt,))
    if len(inputs) != 1 or inputs[0].get("dtype") not in FLOAT_TYPES:
        raise AgentError(E_BAD_INPUT, "%s has inputs %s; an audio dataset needs a model with "
                         "one float input" % (label, names))
    pre = manifest.get("preprocessing") or {}
    config = None
    if pre.get("type") == "ast-fbank":
        rate = pre.get("sampling_rate")
        if rate != data.get("sampling_rate"):
            raise AgentError(E_BAD_INPUT, "the dataset is at %s Hz but %s expects %s Hz; rebuild"
                             " it with `edgefleet dataset build DIR --for %s`"
                             % (data.get("sampling_rate"), label, rate, label))
        config = [vdir, check_relative_path(pre["config"])]
    return {"kind": "audio", "input": inputs[0], "config": config}


def evaluate(store: Store, doc: Any) -> Dict[str, Any]:
    req = parse_request(doc)
    with holding_version(store, req["digest"], "evaluate") as (entry, vdir), \
            contextlib.ExitStack() as held:
        with journal.locked(store):  # held against a dataset_stage's prune (agent.inuse)
            if is_sha256(req["dataset"]) and os.path.isdir(dataset_dir(store, req["dataset"])):
                held.enter_context(inuse.reading(dataset_dir(store, req["dataset"])))
        data, ddir = load_staged(store, req["dataset"])  # verified without the root lock
        return _evaluate(store, req, entry, vdir, data, ddir)


def _evaluate(store: Store, req: Dict[str, Any], entry: Dict[str, Any], vdir: str,
              data: Dict[str, Any], ddir: str) -> Dict[str, Any]:
    label = "%s@%s" % (entry.get("name"), entry.get("version"))
    with open(os.path.join(vdir, MANIFEST_NAME), "rb") as handle:
        manifest = parse_manifest_bytes(handle.read())
    try:
        model_rel = check_relative_path((manifest.get("model") or {}).get("path"))
    except ValueError:
        raise AgentError(E_BAD_INPUT, "%s's manifest names no model file" % label) from None
    feeding = _feeding(manifest, vdir, data, ddir, label)
    samples = [{"id": s["id"], "label": s["label"],
                "path": os.path.join(ddir, check_relative_path(s["path"]))}
               for s in data.get("samples") or []]
    spec = {"model_path": os.path.join(vdir, model_rel), "feeding": feeding, "samples": samples,
            "warmup": req["warmup"], "sample_hz": req["sample_hz"],
            "providers": req["providers"]}
    common = {
        "bundle": {"name": entry.get("name"), "version": entry.get("version"),
                   "digest": req["digest"]},
        "dataset": {"name": data.get("name"), "version": data.get("version"),
                    "digest": req["dataset"], "format": data.get("format"),
                    "samples": len(samples)},
        "labels": manifest.get("labels"), "providers": req["providers"],
    }
    runtime: Dict[str, Any] = {}
    argv = child_command("agent.evaluate")
    results = []
    for threads in req["threads"]:
        result = run_child(dict(spec, threads=threads), store.emit, runtime, argv=argv)
        result.setdefault("samples", [])
        results.append(result)
        emit_measured(store.emit, "eval", result, common, runtime)
    return dict(common, onnxruntime=runtime.get("onnxruntime"),
                providers=runtime.get("providers", req["providers"]), simulated=is_simulated(),
                settings={key: req[key] for key in ("threads", "warmup", "sample_hz")},
                results=results)


# -- the measurement child ------------------------------------------------------------------
def fit(array: Any, shape: List[Any], dtype: str, what: str) -> Any:
    """``array`` with size-1 axes added after the batch axis (or leading ones dropped) to the
    model input's rank, cast to its dtype; ``bad_input`` when a fixed dimension differs."""
    import numpy as np

    x = np.asarray(array)
    while x.ndim < len(shape):
        x = np.expand_dims(x, 1 if x.ndim else 0)
    while x.ndim > len(shape) and x.shape[0] == 1:
        x = x[0]
    if x.ndim != len(shape) or any(isinstance(shape[i], int) and shape[i] != x.shape[i]
                                   for i in range(x.ndim)):
        raise AgentError(E_BAD_INPUT, "%s has shape %s but the model input wants %s"
                         % (what, list(x.shape), shape))
    return x.astype(NUMPY_DTYPES.get(dtype, "float32"), copy=False)


def to_probabilities(output: Any) -> List[float]:
    """Class probabilities from one sample's output (rule in the module docstring)."""
    import numpy as np

    v = np.asarray(output, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(v)):
        raise ValueError("the model output holds NaN or infinity: %s" % v.tolist())
    if v.size == 1:
        p = float(v[0]) if 0.0 <= v[0] <= 1.0 else 1.0 / (1.0 + math.exp(-float(v[0])))
        return [1.0 - p, p]
    if np.all(v >= 0) and np.all(v <= 1) and abs(float(v.sum()) - 1.0) <= PROB_SUM_TOLERANCE:
        return [float(x) for x in v]
    e = np.exp(v - v.max())
    return [float(x) for x in e / e.sum()]


def _preparer(spec: Dict[str, Any]) -> Callable[[int, Any], Dict[str, Any]]:
    """``prepare(index, raw) -> feeds``: the part timed as preprocessing."""
    feeding = spec["feeding"]
    samples = spec["samples"]
    if feeding["kind"] == "tensors":
        inputs = feeding["inputs"]

        def tensors(index: int, raw: Any) -> Dict[str, Any]:
            return {i["name"]: fit(raw[i["name"]][index:index + 1], i["shape"], i["dtype"],
                                   "sample %s's %s" % (samples[index]["id"], i["name"]))
                    for i in inputs}
        return tensors
    extractor = None
    if feeding["config"]:
        try:
            from agent.features import load_from_bundle_dir
        except ImportError as exc:
            raise AgentError(E_MISSING_DEPENDENCY, "this agent has no audio preprocessing "
                             "(%s); reinstall it with `edgefleet agent install`" % exc) from None
        extractor = load_from_bundle_dir(*feeding["config"])
    spec_in = feeding["input"]

    def audio(index: int, raw: Any) -> Dict[str, Any]:
        x = extractor(raw) if extractor is not None else raw[None]  # a batch of one
        return {spec_in["name"]: fit(x, spec_in["shape"], spec_in["dtype"],
                                     "sample %s" % samples[index]["id"])}
    return audio


def _raw(spec: Dict[str, Any], index: int, cache: Dict[str, Any]) -> Any:
    """Sample ``index`` as stored (read outside any timing)."""
    import numpy as np

    path = spec["samples"][index]["path"]
    if spec["feeding"]["kind"] == "tensors":
        if path not in cache:
            with np.load(path, allow_pickle=False) as npz:
                cache[path] = {k: npz[k] for k in npz.files}
        return cache[path]
    return np.load(path, allow_pickle=False)


def _run_samples(ort: Any, spec: Dict[str, Any], sampler: Sampler, emit: Emit) -> Dict[str, Any]:
    threads, clock = spec["threads"], time.perf_counter_ns
    samples = spec["samples"]
    last = [0]

    def progress(phase: str, done: int, total: int, force: bool = False) -> None:
        now = clock()
        if force or now - last[0] >= PROGRESS_INTERVAL_NS:
            last[0] = now
            emit(event("eval", threads=threads, phase=phase, done=done, total=total,
                       pid=os.getpid()))

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    progress("load", 0, 1, force=True)
    before = read_rss_mb()["VmRSS"]
    start = clock()
    session = ort.InferenceSession(spec["model_path"], options, providers=spec["providers"])
    load_ns = clock() - start
    names = [o.name for o in session.get_outputs()]
    pick = next((i for i, n in enumerate(names) if "prob" in n.lower()), 0)
    prepare = _preparer(spec)
    cache: Dict[str, Any] = {}
    if not samples:
        raise AgentError(E_BAD_INPUT, "the dataset has no samples")
    first_feeds = prepare(0, _raw(spec, 0, cache))
    start = clock()
    session.run(None, first_feeds)
    first_ns = clock() - start
    gc.disable()
    progress("warmup", 0, spec["warmup"], force=True)
    for _ in range(spec["warmup"]):
        session.run(None, prepare(0, _raw(spec, 0, cache)))
    sampler.mark("timed_start")
    out: List[Dict[str, Any]] = []
    began = clock()
    for index, sample in enumerate(samples):
        raw = _raw(spec, index, cache)
        t0 = clock()
        feeds = prepare(index, raw)
        t1 = clock()
        outputs = session.run(None, feeds)
        t2 = clock()
        out.append({"id": sample["id"], "label": sample["label"],
                    "probs": to_probabilities(outputs[pick]),
                    "pre_ms": round((t1 - t0) / 1e6, 4), "infer_ms": round((t2 - t1) / 1e6, 4)})
        progress("samples", index + 1, len(samples))
    wall_ns = clock() - began
    gc.enable()
    progress("samples", len(samples), len(samples), force=True)
    rss = read_rss_mb()
    infer = [s["infer_ms"] for s in out]
    return {"ok": True, "load_ms": round(load_ns / 1e6, 3),
            "first_inference_ms": round(first_ns / 1e6, 4), "warmup": spec["warmup"],
            "runs": len(out), "wall_s": round(wall_ns / 1e9, 4), "latencies_ms": infer,
            "latency_ms": latency_stats(infer),
            "preprocessing_ms": latency_stats([s["pre_ms"] for s in out]),
            "peak_rss_mb": rss["VmHWM"], "steady_rss_mb": rss["VmRSS"],
            "rss_before_load_mb": before, "samples": out, "output": names[pick],
            "providers": session.get_providers()}


def measure(spec: Dict[str, Any], emit: Emit) -> Dict[str, Any]:
    """One thread count, in this (fresh) process; set-up problems raise AgentError."""
    ort = import_onnxruntime()
    entry = sampled(dict(failed_entry(spec["threads"], ""), samples=[]), spec,
                    lambda sampler: _run_samples(ort, spec, sampler, emit))
    providers = entry.pop("providers", None)
    return {"entry": entry, "onnxruntime": str(ort.__version__), "providers": providers}


def child_main() -> int:
    """Entry point of an eval child (see agent.children.child_command)."""
    return serve_child("eval_child", measure)
