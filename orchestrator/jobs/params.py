"""What a job may be asked to do: the parameters of each job kind, checked before it is queued.

Split from ``jobs.execute`` (which runs jobs) because the checks are what the API, the pages, the
schedules and the CLI share, and because a typo must never become a job that fails minutes
later: every reference (targets, bundles, datasets) is resolved here, and an eval's dataset is
matched against the model's labels (``evals.plan_eval``) before anything is queued.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

from sqlmodel import Session

from orchestrator.artifacts.bundles import get_bundle
from orchestrator.core.errors import EdgeFleetError
from orchestrator.fleet import rollout
from orchestrator.inventory.devices import select_devices
from orchestrator.measure import rounds, runs

GRAPH_OPTIMIZATIONS = ("all", "extended", "basic", "disabled")

ALLOWED = {
    "push": {"bundle", "forks", "timeout", "rollout"},
    "bench": {"bundle", "threads", "warmup", "runs", "min_seconds", "shapes", "constants",
              "providers", "graph_optimization", "baseline", "rounds", "max_regression",
              "include_invalid", "forks", "timeout"},
    "eval": {"bundle", "dataset", "threads", "warmup", "positive", "threshold", "forks",
             "timeout"},
    "rollback": {"forks", "timeout"},
    "verify": {"forks", "timeout"},
    "telemetry": {"forks", "timeout"},
}
EVAL_DEFAULTS: dict[str, Any] = {"threads": [1], "warmup": 1, "positive": None,
                                 "threshold": 0.5}  # as `edgefleet eval`


# Upper bounds, so a job that cannot run is refused when it is submitted, not in a worker
# later (10^20 runs queued fine and failed storing the result). The agent refuses more than
# these too (agent.bench.MAX_THREADS / MAX_TIMED_RUNS; tests/unit/jobs/test_jobs.py keeps them
# equal).
MAX_THREADS = 256
MAX_RUNS = 1_000_000
HIGH = {"runs": MAX_RUNS, "warmup": MAX_RUNS, "rounds": 1000, "forks": 1000}


def _int(kind: str, params: dict[str, Any], key: str, default: int | None, low: int) -> Any:
    value = params.get(key, default)
    if value is None:
        return None
    high = HIGH.get(key, 2**31 - 1)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise EdgeFleetError(f"{kind} job: {key!r} must be an integer from {low} to {high} "
                             f"(got {value!r})")
    return value


def _number(kind: str, params: dict[str, Any], key: str, default: float | None,
            positive: bool = False) -> Any:
    value = params.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or (isinstance(value, float) and not math.isfinite(value)) or value < 0 \
            or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise EdgeFleetError(f"{kind} job: {key!r} must be a number {bound} (got {value!r})")
    try:
        return float(value)
    except OverflowError:  # an integer past the largest float
        raise EdgeFleetError(f"{kind} job: {key!r} is too large (got {value!r})") from None


def _bundle_ref(session: Session, kind: str, params: dict[str, Any], key: str) -> str:
    ref = params.get(key)
    if not isinstance(ref, str) or not ref.strip():
        raise EdgeFleetError(f"{kind} job: {key!r} must be a bundle reference like "
                             f"'first-crack' or 'first-crack@3' (got {ref!r})")
    get_bundle(session, ref.strip())  # unknown bundle -> NotFoundError naming it
    return ref.strip()


def _threads(value: Any, kind: str = "bench") -> list[int]:
    """Thread counts as a list (the API) or as typed in a form or on the command line
    (``"1, 2,4"``). A bad one is named, with what would do, as ``--threads`` does: the page
    used to say ``e.g. [1, 2, 4] (got None)`` for a typo, naming neither the typo nor where."""
    example = "give thread counts separated by commas, e.g. 1,2,4"
    if isinstance(value, str):
        text, tokens = value, [t.strip() for t in value.split(",") if t.strip()]
        if not tokens:
            raise EdgeFleetError(f"{kind} job: threads is empty: {example}")
        bad = next((t for t in tokens if not t.isascii() or not t.isdigit()), None)
        if bad is not None:
            raise EdgeFleetError(f"{kind} job: threads {text!r}: {bad!r} is not a whole "
                                 f"number; {example}")
        value = [int(t) for t in tokens]
        wrong = next((t for t in value if not 1 <= t <= MAX_THREADS), None)
        if wrong is not None:
            raise EdgeFleetError(f"{kind} job: threads {text!r}: {wrong} is out of range; each "
                                 f"thread count must be from 1 to {MAX_THREADS}")
    if not isinstance(value, list) or not value or len(value) > MAX_THREADS or any(
            isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= MAX_THREADS
            for t in value):
        raise EdgeFleetError(f"{kind} job: 'threads' must be a list of thread counts from 1 "
                             f"to {MAX_THREADS}, e.g. [1, 2, 4] (got {value!r})")
    return value


def _shapes(value: Any) -> dict[str, list[int]]:
    ok = isinstance(value, dict) and all(
        isinstance(k, str) and k and isinstance(dims, list) and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims)
        for k, dims in value.items())
    if not ok:
        raise EdgeFleetError("bench job: 'shapes' must map input names to dimension lists, "
                             f"e.g. {{\"audio\": [1, 16000]}} (got {value!r})")
    return value


def _constants(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and k and isinstance(v, int | float | bool)
            and (not isinstance(v, float) or math.isfinite(v)) for k, v in value.items()):
        raise EdgeFleetError("bench job: 'constants' must map input names to finite numbers "
                             f"or true/false, e.g. {{\"sampling_rate\": 16000}} (got {value!r})")
    return value


def _check_inputs(session: Session, ref: str, shapes: dict[str, Any],
                  constants: dict[str, Any]) -> None:
    """``--shape``/``--input`` checked against the bundle's model now, by the code the device
    runs (``agent.inputs.plan_inputs``): a typo used to reach every device, fail there, leave
    a failed run and job and raise a ``job_failed`` alert. With a sample ``.npz`` in the bundle
    (it sizes the inputs it holds, on the device) an unsized dimension is left to the device."""
    from agent.fsutil import AgentError
    from agent.inputs import find_sample_npz, plan_inputs

    if not shapes and not constants:
        return
    manifest = json.loads(get_bundle(session, ref).manifest_json)
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    recorded = manifest.get("input_constants")
    try:
        plan_inputs(model.get("inputs"), shapes=shapes,
                    constants=dict(recorded, **constants) if isinstance(recorded, dict)
                    else constants,
                    recorded=manifest.get("input_shapes"),
                    recorded_assumed=manifest.get("shape_defaults"))
    except AgentError as exc:
        if "dimension" in exc.extra and find_sample_npz(manifest.get("files") or []):
            return
        raise EdgeFleetError(f"bench job: {exc.message} (bundle {ref})") from None


def default_targets(kind: str, targets: str | None) -> str:
    """A telemetry job without targets polls the whole fleet."""
    targets = (targets or "").strip()
    return targets or ("all" if kind == "telemetry" else "")


def _bench(session: Session, params: dict[str, Any], out: dict[str, Any]) -> None:
    defaults, kind = runs.BenchParams(), "bench"
    out["bundle"] = _bundle_ref(session, kind, params, "bundle")
    out["threads"] = _threads(params.get("threads", defaults.threads))
    out["warmup"] = _int(kind, params, "warmup", defaults.warmup, 0)
    out["runs"] = _int(kind, params, "runs", defaults.runs, 1)
    out["min_seconds"] = _number(kind, params, "min_seconds", defaults.min_seconds)
    out["shapes"] = _shapes(params.get("shapes", {}))
    out["constants"] = _constants(params.get("constants", {}))
    _check_inputs(session, out["bundle"], out["shapes"], out["constants"])
    providers = params.get("providers", defaults.providers)
    if not isinstance(providers, list) or not providers or not all(
            isinstance(p, str) and p for p in providers):
        raise EdgeFleetError(f"bench job: 'providers' must be a list of onnxruntime "
                             f"execution providers (got {providers!r})")
    out["providers"] = providers
    graph = params.get("graph_optimization", defaults.graph_optimization)
    if graph not in GRAPH_OPTIMIZATIONS:
        raise EdgeFleetError(f"bench job: 'graph_optimization' {graph!r}: choose one of "
                             f"{', '.join(GRAPH_OPTIMIZATIONS)}")
    out["graph_optimization"] = graph
    if params.get("baseline") is not None:
        out["baseline"] = _bundle_ref(session, kind, params, "baseline")
    out["rounds"] = _int(kind, params, "rounds", rounds.GATE_ROUNDS if "baseline" in out
                         else rounds.BENCH_ROUNDS, 1)
    gate_keys = sorted({"max_regression", "include_invalid"} & set(params))
    if gate_keys and "baseline" not in out:
        raise EdgeFleetError(f"bench job: {', '.join(map(repr, gate_keys))} gate(s) a comparison "
                             "with a baseline: give 'baseline' too (a bundle reference)")
    if "baseline" in out:
        # The gate (measure.gate): fail the job when the candidate is slower by more than this.
        out["max_regression"] = _number(kind, params, "max_regression", 0.05)
        include = params.get("include_invalid", False)
        if not isinstance(include, bool):
            raise EdgeFleetError(f"bench job: 'include_invalid' must be true or false "
                                 f"(got {include!r})")
        out["include_invalid"] = include


def _eval(session: Session, params: dict[str, Any], out: dict[str, Any]) -> None:
    """An eval job's params; the dataset must exist and fit the model (``plan_eval``: labels
    the model lacks, another sampling rate, an unknown positive class are refused here)."""
    from orchestrator.artifacts.datasets import get_dataset
    from orchestrator.measure.evals import plan_eval

    kind = "eval"
    out["bundle"] = _bundle_ref(session, kind, params, "bundle")
    ref = params.get("dataset")
    if not isinstance(ref, str) or not ref.strip():
        raise EdgeFleetError(f"eval job: 'dataset' must be a dataset reference like "
                             f"'roaster-eval' or 'roaster-eval@2' (got {ref!r}); see "
                             "`edgefleet dataset list`")
    out["dataset"] = ref.strip()
    out["threads"] = _threads(params.get("threads", EVAL_DEFAULTS["threads"]), kind)
    out["warmup"] = _int(kind, params, "warmup", EVAL_DEFAULTS["warmup"], 0)
    positive = params.get("positive")
    if isinstance(positive, str):
        positive = positive.strip() or None
    if positive is not None and not isinstance(positive, str):
        raise EdgeFleetError(f"eval job: 'positive' must be a class label of the model "
                             f"(got {positive!r})")
    out["positive"] = positive
    threshold = _number(kind, params, "threshold", EVAL_DEFAULTS["threshold"])
    if threshold > 1.0:
        raise EdgeFleetError(f"eval job: 'threshold' must be within [0, 1] (got {threshold!r})")
    out["threshold"] = threshold
    dataset = get_dataset(session, out["dataset"])  # unknown -> NotFoundError naming it
    plan_eval(get_bundle(session, out["bundle"]), dataset, positive, threshold)


def validate_params(session: Session, kind: str, params: dict[str, Any] | None,
                    targets: str) -> dict[str, Any]:
    """The params a job of ``kind`` will run with, defaults filled in; EdgeFleetError naming the
    first problem otherwise. Checked before anything is queued, so a typo never becomes a job
    that fails minutes later (the targets must select devices and the bundles must exist)."""
    if kind not in ALLOWED:
        raise EdgeFleetError(f"unknown job kind {kind!r}; choose one of {', '.join(ALLOWED)}")
    params = dict(params or {})
    unknown = sorted(set(params) - ALLOWED[kind])
    if unknown:
        raise EdgeFleetError(f"{kind} job: unknown parameter(s) {', '.join(map(repr, unknown))}; "
                             f"allowed: {', '.join(sorted(ALLOWED[kind]))}")
    if not isinstance(targets, str) or not targets.strip():
        raise EdgeFleetError(f"{kind} job: targets must be a pattern such as 'all' or 'pi5-*'")
    devices = select_devices(session, targets)  # PatternError / NotFoundError name it
    out: dict[str, Any] = {"forks": _int(kind, params, "forks", 10, 1),
                           "timeout": _number(kind, params, "timeout", None, positive=True)}
    if kind == "push":
        out["bundle"] = _bundle_ref(session, kind, params, "bundle")
        if params.get("rollout") is not None:
            # Staged (fleet.rollout): the plan is made here too, so a canary pattern that
            # selects none of the targets is refused before anything is queued.
            options = rollout.check_options(params["rollout"])
            rollout.plan(devices, options)
            out["rollout"] = options.public()
    elif kind == "bench":
        _bench(session, params, out)
    elif kind == "eval":
        _eval(session, params, out)
    return out


def bench_params(params: dict[str, Any]) -> runs.BenchParams:
    return runs.BenchParams(
        threads=list(params["threads"]), warmup=params["warmup"], runs=params["runs"],
        min_seconds=params["min_seconds"], shapes=dict(params["shapes"]),
        constants=dict(params["constants"]), providers=list(params["providers"]),
        graph_optimization=params["graph_optimization"])


def bench_job_params(bundle: str, params: runs.BenchParams, baseline: str | None,
                     rounds: int, forks: int, timeout: float | None = None,
                     max_regression: float | None = None,
                     include_invalid: bool = False) -> dict[str, Any]:
    """The job params for a bench started from the CLI: what a server job with the same
    effect would carry (the same keys), so both look alike in the UI and the audit log."""
    out = {"bundle": bundle, **asdict(params), "rounds": rounds, "forks": forks,
           "timeout": timeout}
    if baseline:
        out["baseline"] = baseline
        out["include_invalid"] = include_invalid
        if max_regression is not None:
            out["max_regression"] = max_regression
    return out


def eval_job_params(bundle: str, dataset: str, threads: list[int], warmup: int,
                    positive: str | None, threshold: float, forks: int,
                    timeout: float | None) -> dict[str, Any]:
    """The job params for an eval started from the CLI, shaped like a server eval job's."""
    return {"bundle": bundle, "dataset": dataset, "threads": list(threads), "warmup": warmup,
            "positive": positive, "threshold": threshold, "forks": forks, "timeout": timeout}
