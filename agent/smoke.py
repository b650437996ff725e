"""Smoke test of a bundle against its golden outputs (``verify``, in agent/verify.py, reuses it).

The control plane ran the model on fixed inputs at build time and shipped inputs and outputs in
the bundle (``.edgefleet/golden_*.npz``, manifest key ``golden``, docs/pipeline.md). ``activate``
stages the new version, records the intent (agent.journal) and runs those inputs here before
``current`` is swapped, so a model that fails is never live; ``activation`` drops it. Hash
verification proves the bytes arrived; this proves the device's onnxruntime computes with them
what the build machine computed.

Why a fresh child process (started like ``bench``'s, see ``agent.children.child_command``): loading
a model is where onnxruntime crashes on an unsupported op or a bad build (SIGSEGV, SIGILL on an
old CPU, the OOM killer); in the agent process that would kill the session half-way through an
activation. In a child, a crash is just a failed smoke test, and the parent drops the version.

Why numpy is imported only inside functions: the agent process imports this module on every
``activate``; only the child (and a bundle with golden outputs) needs numpy and onnxruntime.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

from agent.fsutil import AgentError
from agent.journal import crash_point
from agent.protocol import (
    E_BAD_INPUT,
    E_INTERNAL,
    check_relative_path,
    event,
    private_stdout,
    result_error,
    result_ok,
)

REL_FLOOR = 1e-12  # max_rel divides by max(|expected|, REL_FLOOR) (docs/pipeline.md)
STDERR_TAIL = 12
# How long the smoke child may take (start, imports, load, run) before it is killed and the
# activation reverted. Why a bound: the activation holds the device's lock meanwhile, and a
# model that hangs while loading would keep every later push, rollback and bench waiting.
SMOKE_TIMEOUT_ENV = "EDGEFLEET_SMOKE_TIMEOUT_S"
SMOKE_TIMEOUT_S = 300.0


def smoke_timeout_s() -> float:
    try:
        value = float(os.environ.get(SMOKE_TIMEOUT_ENV, SMOKE_TIMEOUT_S))
    except ValueError:
        return SMOKE_TIMEOUT_S
    return value if 0 < value < float("inf") else SMOKE_TIMEOUT_S

Emit = Callable[[Dict[str, Any]], None]


def golden_of(manifest: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The manifest's validated ``golden`` (None if it has none); ``bad_input`` if malformed.

    Called before anything is staged, so a broken golden key refuses the push cleanly.
    """
    golden = manifest.get("golden")
    if golden is None:
        return None
    paths = set(f.get("path") for f in manifest.get("files") or [] if isinstance(f, dict))
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    try:
        if not isinstance(golden, dict):
            raise ValueError("is not an object")
        for key in ("inputs", "outputs"):
            if check_relative_path(golden.get(key)) not in paths:
                raise ValueError("%s %r is not a file of the bundle" % (key, golden.get(key)))
        for key in ("rtol", "atol"):
            value = golden.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError("%s must be a number >= 0, got %r" % (key, value))
        if check_relative_path(model.get("path")) not in paths:
            raise ValueError("the model (model.path) is not a file of the bundle")
    except (ValueError, TypeError) as exc:
        raise AgentError(E_BAD_INPUT, "the manifest's golden outputs are malformed (%s); "
                         "rebuild the bundle with `edgefleet bundle build`" % exc) from None
    return {"inputs": golden["inputs"], "outputs": golden["outputs"],
            "rtol": float(golden["rtol"]), "atol": float(golden["atol"]),
            "model": model["path"]}


def load_check_of(manifest: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """A bundle without golden outputs: the smoke test only loads its model (``check``'s
    load-only form), so what goes live is at least a model this onnxruntime loads. None when
    the manifest names no model file of the bundle (nothing to load).

    Why: such a bundle (a dynamic dimension no --shape resolved, an output that is not a
    tensor) went live unchecked; a model this device's onnxruntime cannot load (a newer
    opset, a truncated export) was found by the first bench, with the device already on it."""
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    paths = set(f.get("path") for f in manifest.get("files") or [] if isinstance(f, dict))
    try:
        path = check_relative_path(model.get("path"))
    except (ValueError, TypeError):
        return None
    return {"model": path, "load_only": True} if path in paths else None


# -- the agent process ----------------------------------------------------------------------
def smoke_command() -> List[str]:
    """``bench``'s child command (same interpreter, same agent code) with our bootstrap."""
    from agent.children import child_command

    return child_command("agent.smoke")


_warm: Optional["subprocess.Popen[bytes]"] = None


def _spawn(model_bytes: int = 0) -> "subprocess.Popen[bytes]":
    """The child, with ``child_env``'s one BLAS thread (numpy's import otherwise starts an
    OpenBLAS thread per core that spins before it sleeps: 0.13 CPU-s here on 2 cores, more on a
    Pi's 4, taken from the transfer a pre-warmed child overlaps), and, knowing the model's size,
    the heap reserve of agent.heap."""
    from agent import heap
    from agent.children import child_env

    return subprocess.Popen(  # noqa: S603 - our interpreter and our own bootstrap
        smoke_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=heap.reserve_env(child_env(), model_bytes))


def model_bytes(manifest: Dict[str, Any]) -> int:
    """Size of the manifest's model file (0 if the manifest does not say)."""
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    for entry in manifest.get("files") or []:
        if isinstance(entry, dict) and entry.get("path") == model.get("path"):
            size = entry.get("size")
            return size if isinstance(size, int) and not isinstance(size, bool) else 0
    return 0


def prewarm(manifest: Dict[str, Any]) -> None:
    """Start the smoke-test child of ``manifest``'s model now; it imports onnxruntime, faults
    in heap for the load (agent.heap), and then waits for its spec.

    Why: in a push session the plan says an activation will follow, and the child's interpreter
    start, onnxruntime import (0.3-0.6 s here, more on a Pi) and page faults then overlap the
    blob transfer instead of being added after it."""
    global _warm
    if _warm is None or _warm.poll() is not None:
        _warm = _spawn(model_bytes(manifest))


def discard_warm() -> None:
    """End an unused pre-warmed child (the session ended without an activation)."""
    global _warm
    proc, _warm = _warm, None
    if proc is not None and proc.poll() is None:
        try:
            proc.communicate(b"", timeout=30)  # EOF: it exits without doing anything
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _take_child() -> "subprocess.Popen[bytes]":
    global _warm
    proc, _warm = _warm, None
    if proc is None or proc.poll() is not None:
        return _spawn()
    return proc


def run_smoke(vdir: str, golden: Dict[str, Any], emit: Emit) -> Dict[str, Any]:
    """Run the golden inputs through the model in ``vdir`` in a fresh child.

    Returns ``{"ok", "reason": None|"mismatch"|"load_failed", "error", "outputs", "max_abs",
    "max_rel", "ms", ...}``; ``ms`` is the whole cost: child start, imports, load and run.
    """
    spec = {"model_path": os.path.join(vdir, golden["model"]), "model": golden["model"]}
    if not golden.get("load_only"):
        spec.update(inputs=os.path.join(vdir, golden["inputs"]),
                    outputs=os.path.join(vdir, golden["outputs"]),
                    rtol=golden["rtol"], atol=golden["atol"])
    emit(event("smoke", phase="start", model=golden["model"]))
    started = time.perf_counter()
    timed_out: Optional[float] = None
    proc = _take_child()
    try:
        # The spec goes first, then the crash point "during the smoke test" (agent.journal):
        # the child reads to EOF, so it starts when communicate() closes its stdin, or when
        # this process dies.
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(spec).encode("utf-8"))
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died early (a pre-warmed child): its exit status and stderr say why
        crash_point("smoke")
        limit = smoke_timeout_s()
        try:
            out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            timed_out = limit
    finally:
        if proc.poll() is None:  # interrupted: never leave a child behind
            proc.kill()
            proc.wait()
    ms = round((time.perf_counter() - started) * 1000.0, 1)
    stderr = err.decode("utf-8", "replace")
    sys.stderr.write(stderr)
    sys.stderr.flush()
    result = None
    for raw in out.splitlines():
        try:
            obj = json.loads(raw.decode("utf-8"))
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("type") == "result":
            result = obj
    if result is not None and result.get("ok"):
        report = dict(result["data"])
    else:
        tail = "\n".join(stderr.rstrip("\n").splitlines()[-STDERR_TAIL:])
        if timed_out is not None:
            why = ("the smoke test took longer than %g s (%s) and was killed" %
                   (timed_out, SMOKE_TIMEOUT_ENV))
        elif result is not None:
            why = str((result.get("error") or {}).get("message"))
        elif proc.returncode < 0:
            number = -proc.returncode
            name = signal.Signals(number).name if number in signal.valid_signals() else "?"
            why = "the smoke-test process was killed by signal %d (%s)" % (number, name)
        else:
            why = "the smoke-test process exited with status %d without a result" % (
                proc.returncode)
        if result is None:
            why += "; last stderr lines:\n" + tail if tail else "; it wrote nothing on stderr"
        report = {"ok": False, "reason": "load_failed", "error": why, "outputs": []}
    report["ms"] = ms
    report.setdefault("max_abs", _worst(report.get("outputs") or [], "max_abs"))
    report.setdefault("max_rel", _worst(report.get("outputs") or [], "max_rel"))
    emit(event("smoke", phase="done", ok=report["ok"], ms=ms))
    return report


def _worst(outputs: List[Dict[str, Any]], key: str) -> Optional[float]:
    values = [o[key] for o in outputs if o.get(key) is not None]
    return max(values) if values else None


def failure_message(report: Dict[str, Any], golden: Dict[str, Any]) -> str:
    """What went wrong, naming the output and its differences (or the load error)."""
    if report.get("reason") != "mismatch":
        return "the model %s did not load or run: %s" % (golden["model"], report.get("error"))
    bad = [o for o in report["outputs"] if not o["ok"]]
    parts = []
    for o in bad:
        if o.get("error"):
            parts.append("output '%s': %s" % (o["name"], o["error"]))
        else:
            parts.append("output '%s' differs from the golden output by max abs %.6g, max rel "
                         "%.6g" % (o["name"], o["max_abs"], o["max_rel"]))
    return "%s (allowed: atol %g + rtol %g x |golden|)" % (
        "; ".join(parts), golden["atol"], golden["rtol"])


# -- the smoke-test child -------------------------------------------------------------------
def compare(expected: Dict[str, Any], actual: Dict[str, Any], rtol: float,
            atol: float) -> List[Dict[str, Any]]:
    """One ``{"name", "ok", "max_abs", "max_rel"}`` per golden output (docs/pipeline.md).

    Floats pass with numpy ``allclose`` semantics (NaN where the golden has NaN counts as
    equal: the model computed the same thing); other dtypes must be equal.
    """
    import numpy as np

    report = []
    for name, want in expected.items():
        entry: Dict[str, Any] = {"name": name, "ok": False, "max_abs": None, "max_rel": None}
        have = actual.get(name)
        if have is None:
            entry["error"] = "the model has no output named '%s'" % name
        elif have.shape != want.shape:
            entry["error"] = "shape %s differs from the golden shape %s" % (
                list(have.shape), list(want.shape))
        else:
            floating = want.dtype.kind in "fc" or have.dtype.kind in "fc"
            kind = np.float64 if floating else np.int64
            a, e = have.astype(kind), want.astype(kind)
            diff = np.abs(a - e)
            if floating:
                both_nan = np.isnan(a) & np.isnan(e)
                diff = np.where(both_nan, 0.0, diff)
                entry["ok"] = bool(np.allclose(a, e, rtol=rtol, atol=atol, equal_nan=True))
            else:
                entry["ok"] = bool(np.array_equal(a, e))
            if diff.size:
                rel = diff / np.maximum(np.abs(e), REL_FLOOR)
                max_abs, max_rel = float(np.max(diff)), float(np.max(rel))
            else:
                max_abs = max_rel = 0.0
            if np.isfinite(max_abs) and np.isfinite(max_rel):
                entry.update(max_abs=max_abs, max_rel=max_rel)
            else:  # JSON has no NaN/Infinity
                entry["error"] = "NaN or infinity where the golden output has a number"
        report.append(entry)
    return report


def _load_npz(path: str) -> Dict[str, Any]:
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def golden_session_options(ort: Any) -> Any:
    """Session options of the golden run, at build time (orchestrator/artifacts/golden.py) and here.

    One thread, as for a reference. No weight prepacking: it re-lays out every MatMul/Conv
    weight at load so that *repeated* runs go faster, and a golden run is a single run; on a
    94 MB model it was a third of the load time (bench/push.py). Prepacking changes the
    summation order, so both sides must agree on it for the outputs to match exactly.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_prepacking", "1")
    return options


def check(spec: Dict[str, Any]) -> Dict[str, Any]:
    """In the child: load, run once on 1 thread (as the build did), compare; a spec without
    golden inputs (``load_check_of``) only loads."""
    failed: Dict[str, Any] = {"ok": False, "reason": "load_failed", "outputs": []}
    try:
        import onnxruntime as ort
    except Exception as exc:
        return dict(failed, error="onnxruntime cannot be imported (%s: %s)"
                    % (type(exc).__name__, exc))
    load_only = "inputs" not in spec
    feeds = {} if load_only else _load_npz(spec["inputs"])
    expected = {} if load_only else _load_npz(spec["outputs"])
    options = golden_session_options(ort)
    clock = time.perf_counter
    start = clock()
    try:
        session = ort.InferenceSession(spec["model_path"], options,
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:
        return dict(failed, error="onnxruntime %s cannot load it: %s" % (ort.__version__, exc),
                    onnxruntime=ort.__version__)
    load_ms = (clock() - start) * 1000.0
    if load_only:
        return {"ok": True, "reason": None, "error": None, "outputs": [], "load_only": True,
                "load_ms": round(load_ms, 2), "onnxruntime": ort.__version__}
    start = clock()
    try:
        names = [o.name for o in session.get_outputs()]
        run_options = ort.RunOptions()
        run_options.log_severity_level = 3  # the error is in the exception
        values = session.run(None, feeds, run_options)
    except Exception as exc:
        return dict(failed, error="onnxruntime %s loads it but fails to run the golden inputs: "
                    "%s" % (ort.__version__, exc), onnxruntime=ort.__version__)
    run_ms = (clock() - start) * 1000.0
    actual = {name: values[index] for index, name in enumerate(names)}
    outputs = compare(expected, actual, spec["rtol"], spec["atol"])
    ok = all(o["ok"] for o in outputs)
    return {"ok": ok, "reason": None if ok else "mismatch", "error": None, "outputs": outputs,
            "load_ms": round(load_ms, 2), "run_ms": round(run_ms, 2),
            "onnxruntime": ort.__version__}


def child_main() -> int:
    """Entry point of the smoke-test child: spec on stdin, one result line.

    It dies with the agent that started it (``children.die_with_parent``): the smoke test's
    time limit is kept by that agent, so a child left behind by a killed agent ran a hanging
    model for ever, holding its heap reserve and the model, and the retried push's own smoke
    test was measured (or OOM-killed) beside it."""
    from agent.children import die_with_parent

    die_with_parent()
    out = private_stdout()  # a native library writing to fd 1 must not break the protocol
    with contextlib.suppress(Exception):  # an import failure is reported by check()
        import onnxruntime  # noqa: F401 - before waiting for the spec (see prewarm)
    from agent import heap

    reserved = heap.reserve_from_env()  # while the model is still on its way (agent.heap)
    try:
        raw = sys.stdin.buffer.read()
        if not raw.strip():  # a pre-warmed child that was not needed
            return 0
        spec = json.loads(raw.decode("utf-8"))
        report = dict(check(spec), heap_reserved_mb=round(reserved / 1e6, 1))
        out.write(json.dumps(result_ok("smoke_child", report)) + "\n")
        out.flush()
        sys.stderr.flush()
        # The parent waits for our exit; tearing down the session and the interpreter (freeing
        # the model's weights, running finalizers) only delays the activation: skip it.
        os._exit(0)
    except BaseException as exc:
        traceback.print_exc(file=sys.stderr)
        out.write(json.dumps(result_error("smoke_child", E_INTERNAL, "%s: %s"
                                          % (type(exc).__name__, exc))) + "\n")
        out.flush()
    return 1
