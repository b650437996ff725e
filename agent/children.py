"""Measurement children shared by ``bench``, ``eval`` and the smoke test: how one is started,
how its events and result come back, how its death becomes an entry's error, and the telemetry
harness around what it measures.

Why the child is ``python -c BOOTSTRAP <sys.path entry>``: the entry is the directory the
``agent`` package was imported from, i.e. the .pyz itself for the zipapp (``python -m agent``
gives the source checkout). Putting it first on sys.path (and dropping the working directory
that ``-c`` adds) makes the child import the very same agent code whichever way the parent was
started; the interpreter is ``sys.executable``, so it sees the same numpy and onnxruntime.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import traceback
from typing import IO, Any, Callable, Deque, Dict, List, Optional

from agent.fsutil import AgentError
from agent.protocol import (
    E_BAD_INPUT,
    E_INTERNAL,
    E_MISSING_DEPENDENCY,
    event,
    private_stdout,
    result_error,
    result_ok,
)
from agent.sampler import Sampler, energy_summary, summarize
from agent.sensors import SensorReader

STDERR_TAIL = 12
FATAL_CHILD_CODES = (E_BAD_INPUT, E_MISSING_DEPENDENCY)  # same for every thread count

Emit = Callable[[Dict[str, Any]], None]


def bootstrap(module: str) -> str:
    return ("import sys; sys.path = [sys.argv[1]] + [p for p in sys.path if p]; "
            "from %s import child_main; sys.exit(child_main())" % module)


def child_command(module: str = "agent.bench") -> List[str]:
    """``python -c <bootstrap of module> <sys.path entry of this agent>``."""
    import agent

    entry = os.path.dirname(os.path.dirname(os.path.abspath(agent.__file__)))
    return [sys.executable or "python3", "-c", bootstrap(module), entry]


def _drain(stream: IO[bytes], tail: Deque[str]) -> None:
    """Pass the child's stderr through to ours, keeping the last lines for an error message."""
    for raw in stream:
        text = raw.decode("utf-8", "replace")
        sys.stderr.write(text)
        tail.append(text.rstrip("\n"))
    sys.stderr.flush()


# numpy's BLAS (the eval child's mel filterbank matmul) would otherwise start a thread per core
# and compete with onnxruntime's intra-op threads, skewing exactly the thread-count comparison
# being measured. onnxruntime does not use these; a value set in edgefleet_env is kept.
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# The pid of the agent that started a measurement child (die_with_parent).
PARENT_PID_VAR = "EDGEFLEET_MEASURE_PARENT"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    for name in BLAS_THREAD_VARS:
        env.setdefault(name, "1")
    env[PARENT_PID_VAR] = str(os.getpid())
    return env


def die_with_parent() -> None:
    """Have the kernel SIGKILL this measurement child when the agent that started it dies,
    and exit now if it is already gone.

    Why: an agent killed mid-bench (the OOM killer, a dropped session's kill) left its child
    measuring for as long as its runs lasted, minutes on a Pi, at up to 4 threads: the next
    bench on the device was measured beside it, its numbers slowed and nothing flagged them.
    Linux only (``prctl``); elsewhere the child outlives the agent as before. The signal
    follows the thread that started the child, which waits for it in run_child."""
    with contextlib.suppress(OSError, AttributeError, ImportError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    expected = os.environ.get(PARENT_PID_VAR)
    if expected and expected != str(os.getppid()):
        sys.stderr.write("edgefleet-agent: measurement child %d: its agent (pid %s) is gone "
                         "(or started it through a launcher that forks); exiting\n"
                         % (os.getpid(), expected))
        sys.stderr.flush()
        os._exit(1)  # the agent died before the prctl: nobody reads our result


def run_child(spec: Dict[str, Any], emit: Emit, runtime: Dict[str, Any],
              argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Measure one thread count in a child; its death becomes this entry's error. ``argv``
    starts another child entry point (``eval`` uses agent.evaluate's)."""
    threads = spec["threads"]
    proc = subprocess.Popen(  # noqa: S603 - our interpreter and our own bootstrap
        argv or child_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=child_env())
    tail: Deque[str] = collections.deque(maxlen=STDERR_TAIL)
    drain = threading.Thread(target=_drain, args=(proc.stderr, tail), daemon=True)
    drain.start()
    result: Optional[Dict[str, Any]] = None
    try:
        with contextlib.suppress(OSError):  # if it died at once, its exit status says why
            proc.stdin.write(json.dumps(spec).encode("utf-8"))  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        for raw in proc.stdout:  # type: ignore[union-attr]
            try:
                obj = json.loads(raw.decode("utf-8"))
            except ValueError:
                tail.append(raw.decode("utf-8", "replace").rstrip("\n"))
                continue
            if isinstance(obj, dict) and obj.get("type") == "progress":
                emit(obj)
            elif isinstance(obj, dict) and obj.get("type") == "result":
                result = obj
        returncode = proc.wait()
        drain.join()
    finally:
        if proc.poll() is None:  # we are being interrupted: never leave a child measuring
            proc.kill()
            proc.wait()
    if result is not None and result.get("ok"):
        data = result["data"]
        runtime.setdefault("onnxruntime", data.get("onnxruntime"))
        if data["entry"]["ok"]:
            runtime.setdefault("providers", data.get("providers"))
        return data["entry"]
    if result is not None:
        error = result.get("error") or {}
        if error.get("code") in FATAL_CHILD_CODES:
            raise AgentError(error["code"], str(error.get("message")))
        return failed_entry(threads, "measurement for %s failed: %s"
                            % (_threads(threads), error.get("message")))
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else "?"
        how = "was killed by signal %d (%s)" % (-returncode, name)
        if -returncode == signal.SIGKILL:
            how += "; the kernel's out-of-memory killer sends this when memory runs out"
    else:
        how = "exited with status %d without a result" % returncode
    return failed_entry(threads, "measurement process for %s %s; %s" % (
        _threads(threads), how, "last stderr lines:\n" + "\n".join(tail) if tail
        else "it wrote nothing on stderr"))


def _threads(count: int) -> str:
    """``"1 thread"``, ``"2 threads"``."""
    return "%d thread%s" % (count, "" if count == 1 else "s")


def emit_measured(emit: Emit, command: str, entry: Dict[str, Any], common: Dict[str, Any],
                  runtime: Dict[str, Any]) -> None:
    """Report one finished thread count at once (event ``measured``, docs/pipeline.md).

    Why: the result line comes only after the last thread count. If the device drops off, the
    session times out or the job is cancelled before then, the control plane still stores what
    was measured instead of losing it with the rest.
    """
    emit(event("measured", command=command, threads=entry.get("threads"), entry=entry,
               common=dict(common, onnxruntime=runtime.get("onnxruntime"),
                           providers=runtime.get("providers", common.get("providers")))))


def failed_entry(threads: int, error: str) -> Dict[str, Any]:
    """A result entry with every key present, so readers need no special case for failures."""
    return {
        "threads": threads, "ok": False, "error": error, "load_ms": None,
        "first_inference_ms": None, "warmup": None, "runs": None, "wall_s": None,
        "latencies_ms": [], "latency_ms": None, "peak_rss_mb": None, "steady_rss_mb": None,
        "rss_before_load_mb": None, "telemetry": None, "valid": None, "flags": [],
        "reasons": [], "energy": None,
    }


# -- the measurement child ------------------------------------------------------------------
def import_onnxruntime() -> Any:
    """onnxruntime, or the error that says how to install it on the device."""
    try:
        import onnxruntime as ort
    except Exception as exc:
        raise AgentError(E_MISSING_DEPENDENCY, "onnxruntime cannot be imported on this device "
                         "(%s: %s); install it (pip install onnxruntime)"
                         % (type(exc).__name__, exc)) from None
    return ort


def sampled(entry: Dict[str, Any], spec: Dict[str, Any],
            body: Callable[[Sampler], Dict[str, Any]]) -> Dict[str, Any]:
    """Run ``body`` under the telemetry sampler and fill ``entry`` with its measurements, the
    telemetry summary, throttle flags, validity and energy over the timed phase.

    Shared by ``bench`` and ``eval`` children, so both judge validity the same way. A set-up
    problem (AgentError) propagates; anything else becomes this entry's error."""
    sampler = Sampler(SensorReader(), float(spec["sample_hz"]))
    sampler.start()
    try:
        entry.update(body(sampler))
        entry["error"] = None
    except AgentError:
        raise
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        entry["error"] = "%s: %s" % (type(exc).__name__, exc)
    finally:
        gc.enable()
        samples = sampler.stop()
    telemetry, flags, reasons = summarize(samples, sampler.interval_s,
                                          sampler.marks.get("timed_start"), sampler.errors)
    # energy over the timed loop (Pi 5: vcgencmd pmic_read_adc), also in telemetry, which
    # is the summary other commands (eval) share. Per inference: over the inferences' own
    # time when the command reports it (bench's ``timed_s``, the sum of its timed runs), so
    # what the loop does between runs (reading each run's CPU time: a syscall summing every
    # onnxruntime thread) is not charged to the model; else the loop's wall time.
    energy = energy_summary(samples, sampler.marks.get("timed_start"),
                            entry.get("timed_s") or entry.get("wall_s"),
                            entry.get("runs"), sampler.power_reason)
    telemetry["energy"] = energy
    entry.update(telemetry=telemetry, flags=flags, reasons=reasons, energy=energy,
                 valid=(not flags) if entry["ok"] else None)
    return entry


def serve_child(name: str, measure_fn: Callable[[Dict[str, Any], Emit], Dict[str, Any]]) -> int:
    """A measurement child's main: spec on stdin, progress events and one result line out."""
    die_with_parent()
    out = private_stdout()  # a native library writing to fd 1 must not break the protocol

    def emit(obj: Dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    try:
        spec = json.loads(sys.stdin.buffer.read().decode("utf-8"))
        sys.stderr.write("edgefleet-agent %s: measuring %s in pid %d\n"
                         % (name, _threads(spec["threads"]), os.getpid()))
        sys.stderr.flush()
        emit(result_ok(name, measure_fn(spec, emit)))
        return 0
    except AgentError as exc:
        emit(result_error(name, exc.code, exc.message))
    except BaseException as exc:
        traceback.print_exc(file=sys.stderr)
        emit(result_error(name, E_INTERNAL, "%s: %s" % (type(exc).__name__, exc)))
    return 1
