"""Deployment verdicts: can a device keep up with an audio stream, at which thread count, and
at what energy per inference (docs/pipeline.md "Streaming profiles and verdicts").

A streaming detector takes a ``window_s`` window every ``hop_s`` seconds. It keeps up when the
work per window (preprocessing + inference) finishes before the next window arrives: we demand
it of the 99th percentile (p99 < hop), because a detector that falls behind once in a while
drifts further behind with every slow window and never catches up. The real-time factor (p50 /
window) is what edge-audio write-ups quote. The worst-case detection delay is window +
min_positive x hop + p99: the onset lands just after a window starts, so detection needs
min_positive windows that each fully contain the event, one hop apart, plus the processing of
the last one.

The recommended thread count is the fewest threads that keep up with >= 30% headroom on a
valid (unthrottled) result. Why the fewest and not the fastest: the other cores run the rest of
the product (the seed's Pi runs an MCP server and a UI next to the detector), and more threads
draw more current (the seed's Pi under-volted at 2+ threads on a weak supply). Why 30%: a
margin for what a benchmark does not see (the microphone, the network, a warm summer).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from sqlmodel import Session, select

from orchestrator.core.errors import EdgeFleetError
from orchestrator.core.models import Bundle, Result, Run
from orchestrator.measure.run_lifecycle import FINISHED, state_reason
from orchestrator.measure.runs import get_run, run_results, unpack_floats
from orchestrator.present.wording import ms, plural, verb

MIN_HEADROOM_PCT = 30.0
PROFILE_KEYS = ("window_s", "hop_s", "overlap", "threshold", "min_positive", "confirm_windows",
                "positive")
# The seed's configs/default.yaml section (``pi_inference:``): its names -> ours.
SEED_KEYS = {"window_size": "window_s", "overlap": "overlap", "threshold": "threshold",
             "min_pops": "min_positive", "hop": "hop_s", "hop_size": "hop_s"}
HOW_TO_GIVE = ("give one: `edgefleet runs verdict RUN --window 10 --overlap 0.3` (or --hop "
               "SECONDS), or build the bundle with `--streaming-profile FILE`")


class ProfileError(EdgeFleetError):
    """A streaming profile that cannot be used; the message names where it came from."""


class UnfinishedRunError(EdgeFleetError):
    """A run still running, or interrupted (cancelled, or its process died): a verdict on the
    results it happens to have would judge a deployment on part of the evidence."""


def check_finished(session: Session, run: Run) -> None:
    """UnfinishedRunError, saying why and what to do, unless every device of ``run`` answered
    (succeeded, partial or failed: a failed device is part of the verdict, a missing one is
    not)."""
    if run.state in FINISHED:
        return
    if run.state == "running":
        raise UnfinishedRunError(f"run {run.id} is still running: its verdict comes when every "
                                 "device has answered")
    why = state_reason(session, run) or run.state
    raise UnfinishedRunError(f"run {run.id} was interrupted ({why}), so it gets no verdict: "
                             f"its finished results are in `edgefleet runs show {run.id}`; "
                             f"benchmark or evaluate again for a verdict")


@dataclass(frozen=True)
class StreamingProfile:
    """How a detector consumes audio: a ``window_s`` window every ``hop_s`` seconds; a window is
    positive when P(positive) >= ``threshold``; an event is confirmed by ``min_positive``
    positive windows among ``confirm_windows`` consecutive ones."""

    window_s: float
    hop_s: float
    threshold: float = 0.5
    min_positive: int = 1
    confirm_windows: int = 1
    positive: int | str | None = None

    @property
    def overlap(self) -> float:
        return 1.0 - self.hop_s / self.window_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"overlap": round(self.overlap, 6)}


def _number(doc: Mapping[str, Any], key: str, where: str, integer: bool = False) -> Any:
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            integer and not float(value).is_integer()) or not math.isfinite(value):
        kind = "an integer" if integer else "a number"
        raise ProfileError(f"{where}: {key} must be {kind}, got {value!r}")
    return int(value) if integer else float(value)


def _from_seed(doc: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The seed write-up's ``pi_inference:`` keys (window_size, overlap, threshold, min_pops,
    confirmation_window in seconds); other keys of that file (onnx_threads, ...) are its own."""
    out = {ours: doc[theirs] for theirs, ours in SEED_KEYS.items() if theirs in doc}
    if "confirmation_window" in doc:
        window = _number(out, "window_s", where) if "window_s" in out else None
        hop = (_number(out, "hop_s", where) if "hop_s" in out else
               window * (1 - _number(out, "overlap", where))
               if window is not None and "overlap" in out else None)
        span = _number(doc, "confirmation_window", where)
        if hop and hop > 0:
            # decisions arrive one hop apart; those within a span of S seconds: floor(S/hop)+1
            out["confirm_windows"] = int(math.floor(span / hop + 1e-9)) + 1
    return out


def load_profile(doc: Mapping[str, Any], source: str = "profile") -> StreamingProfile:
    """A profile from a mapping: ours (``window_s``, ``hop_s`` or ``overlap``, ``threshold``,
    ``min_positive``, ``confirm_windows``, ``positive``), wrapped in ``streaming:`` or not, or
    the seed's (``pi_inference: {window_size, overlap, threshold, min_pops, ...}``)."""
    if not isinstance(doc, Mapping):
        raise ProfileError(f"{source}: a streaming profile is a mapping (window_s, hop_s or "
                           f"overlap, threshold, ...), got {type(doc).__name__}")
    if isinstance(doc.get("streaming"), Mapping):
        doc = doc["streaming"]
    nested = {k: v for k, v in doc.items() if isinstance(v, Mapping)}
    if len(doc) == 1 and len(nested) == 1:  # {"pi_inference": {...}}
        (name, inner), = nested.items()
        return load_profile(inner, f"{source} ({name})")
    if "window_size" in doc or "min_pops" in doc:
        doc = _from_seed(doc, source)
    unknown = sorted(set(doc) - set(PROFILE_KEYS))
    if unknown:
        raise ProfileError(f"{source}: unknown key(s) {', '.join(map(str, unknown))} (known: "
                           f"{', '.join(PROFILE_KEYS)})")
    if "window_s" not in doc:
        raise ProfileError(f"{source}: window_s (seconds of audio per window) is missing")
    window = _number(doc, "window_s", source)
    if window <= 0:
        raise ProfileError(f"{source}: window_s must be > 0 seconds, got {window}")
    if "hop_s" not in doc and "overlap" not in doc:
        raise ProfileError(f"{source}: give hop_s (seconds between window starts) or overlap "
                           f"(0 <= overlap < 1: hop = window x (1 - overlap))")
    hop = _number(doc, "hop_s", source) if "hop_s" in doc else None
    if "overlap" in doc:
        overlap = _number(doc, "overlap", source)
        if not 0 <= overlap < 1:
            raise ProfileError(f"{source}: overlap must be in [0, 1) (a fraction of the window; "
                               f"0.3 = 30%), got {overlap}")
        from_overlap = window * (1 - overlap)
        if hop is not None and not math.isclose(hop, from_overlap, rel_tol=1e-6):
            raise ProfileError(f"{source}: hop_s {hop} and overlap {overlap} disagree (that "
                               f"overlap gives a {from_overlap:g} s hop): give one of them")
        hop = from_overlap
    assert hop is not None
    if hop <= 0:
        raise ProfileError(f"{source}: hop_s must be > 0 seconds, got {hop}")
    if hop > window + 1e-9:
        raise ProfileError(f"{source}: hop_s {hop:g} s is longer than the {window:g} s window, "
                           f"so audio between windows would never be heard; use a hop <= "
                           f"window")
    threshold = _number(doc, "threshold", source) if "threshold" in doc else 0.5
    if not 0 <= threshold <= 1:
        raise ProfileError(f"{source}: threshold must be a probability in [0, 1], got "
                           f"{threshold}")
    min_positive = _number(doc, "min_positive", source, True) if "min_positive" in doc else 1
    if min_positive < 1:
        raise ProfileError(f"{source}: min_positive must be >= 1 window, got {min_positive}")
    confirm = (_number(doc, "confirm_windows", source, True) if "confirm_windows" in doc
               else min_positive)
    if confirm < min_positive:
        raise ProfileError(f"{source}: confirm_windows ({confirm}) must be >= min_positive "
                           f"({min_positive}): {min_positive} positives cannot fit in "
                           f"{confirm} windows")
    positive = doc.get("positive")
    if positive is not None and (isinstance(positive, bool)
                                 or not isinstance(positive, int | str)):
        raise ProfileError(f"{source}: positive must be a class name or index, got "
                           f"{positive!r}")
    return StreamingProfile(window, hop, threshold, min_positive, confirm, positive)


def load_profile_file(path: Path | str) -> StreamingProfile:
    """A profile from a YAML or JSON file (JSON is YAML), in any shape ``load_profile`` takes."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read the streaming profile: "
                           f"{exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{path}: the streaming profile is not UTF-8 text (byte "
                           f"{exc.start}); save it as UTF-8 YAML or JSON") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ProfileError(f"{where}: not valid YAML/JSON: "
                           f"{getattr(exc, 'problem', None) or exc}") from None
    return load_profile(doc, str(path))


def merge_profile(base: Mapping[str, Any] | None, overrides: Mapping[str, Any],
                  source: str) -> StreamingProfile:
    """``base`` (a stored profile document, or None) with the CLI's ``overrides`` on top; a hop
    or an overlap given replaces both of the stored ones."""
    doc = dict(base) if isinstance(base, Mapping) else {}
    if doc and not set(doc) <= set(PROFILE_KEYS):  # wrapped, or the seed's names
        doc = {k: v for k, v in load_profile(doc, source).to_dict().items() if k != "overlap"}
    if "hop_s" in overrides or "overlap" in overrides:
        doc.pop("hop_s", None)
        doc.pop("overlap", None)
    doc.update({k: v for k, v in overrides.items() if v is not None})
    return load_profile(doc, source)


# -- verdicts ------------------------------------------------------------------------------
def window_verdict(profile: StreamingProfile, window_latencies_ms: Sequence[float],
                   valid: bool | None, threads: int | None) -> dict[str, Any]:
    """Keeps up? headroom, real-time factor and worst-case delay of one device x threads
    result, from its per-window latencies in ms."""
    values = np.asarray(window_latencies_ms, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no window latencies to judge")
    p50, p99 = (float(v) for v in np.percentile(values, [50, 99]))
    p99_s = p99 / 1000.0
    headroom = profile.hop_s - p99_s
    return {
        "threads": threads, "n": int(values.size), "p50_ms": p50, "p99_ms": p99,
        "window_s": profile.window_s, "hop_s": profile.hop_s,
        "keeps_up": p99_s < profile.hop_s, "headroom_s": headroom,
        "headroom_pct": headroom / profile.hop_s * 100.0,
        "rtf": p50 / 1000.0 / profile.window_s,
        "worst_case_delay_s": profile.window_s + profile.min_positive * profile.hop_s + p99_s,
        "valid": valid,
    }


def _plural(threads: Any) -> str:
    return plural(threads, "thread") if isinstance(threads, int) else f"{threads} threads"


def _why_not(row: Mapping[str, Any]) -> str:
    """Why one thread count does not qualify, with the verb agreeing ("1 thread keeps up",
    "2 threads keep up") and the latency in ms, as every latency is."""
    threads = row.get("threads")
    label = _plural(threads)
    if not row.get("ok", True):
        return f"{label} failed ({row.get('error') or 'no result'})"
    if not row["keeps_up"]:
        return (f"{label} {verb(threads, 'falls', 'fall')} behind (p99 {ms(row['p99_ms'])} "
                f">= the {row['hop_s']:g} s hop)")
    keeps = verb(threads, "keeps", "keep")
    if row["headroom_pct"] < MIN_HEADROOM_PCT:
        return (f"{label} {keeps} up with only {row['headroom_pct']:.0f}% headroom "
                f"(< {MIN_HEADROOM_PCT:.0f}%)")
    flags = ", ".join(row.get("flags") or []) or "unknown reason"
    return (f"{label} {keeps} up with {row['headroom_pct']:.0f}% headroom but the result is "
            f"not valid ({flags}): re-measure without throttling")


def recommend_threads(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``{"threads": n | None, "reason"}`` for one device's rows (``window_verdict`` output,
    plus ``ok``/``error``/``flags``): the fewest threads that keep up with >= 30% headroom on
    a valid result; None, saying why each thread count does not qualify, otherwise."""
    ordered = sorted(rows, key=lambda r: (r.get("threads") is None, r.get("threads") or 0))
    for row in ordered:
        if (row.get("ok", True) and row["keeps_up"] and row["headroom_pct"] >= MIN_HEADROOM_PCT
                and row.get("valid") is True):
            return {"threads": row["threads"], "reason": (
                f"fewest threads that keep up with >= {MIN_HEADROOM_PCT:.0f}% headroom on a "
                f"valid run: p99 {ms(row['p99_ms'])} per window, "
                f"{row['headroom_pct']:.0f}% of the {row['hop_s']:g} s hop to spare")}
    if not ordered:
        return {"threads": None, "reason": "no results to judge"}
    return {"threads": None, "reason": "no thread count qualifies: "
            + "; ".join(_why_not(r) for r in ordered)}


# -- a stored run --------------------------------------------------------------------------
def stored_profile(session: Session, run: Run) -> tuple[dict[str, Any] | None, str]:
    """The run's own profile (``params["profile"]``), else its bundle's (manifest
    ``streaming``), with where it came from."""
    if isinstance((run.params or {}).get("profile"), dict):
        return run.params["profile"], f"run {run.id} (params.profile)"
    bundle = session.exec(select(Bundle).where(Bundle.digest == run.bundle_digest)).first()
    if bundle is not None:
        streaming = json.loads(bundle.manifest_json).get("streaming")
        if isinstance(streaming, dict):
            return streaming, f"bundle {bundle.name}@{bundle.version} (manifest streaming)"
    return None, ""


def _window_latencies(result: Result) -> tuple[list[float], str]:
    inference = unpack_floats(result.latencies) or []
    pre = (result.detail or {}).get("preprocessing_ms")
    if pre is None:
        return inference, "inference only: preprocessing not measured (a benchmark)"
    if any(not isinstance(v, int | float) for v in pre):
        return inference, "inference only: some preprocessing times are missing"
    if len(pre) != len(inference):
        return inference, (f"inference only: {len(pre)} preprocessing times for "
                           f"{len(inference)} inferences do not line up")
    return [a + b for a, b in zip(pre, inference, strict=True)], "preprocessing + inference"


def verdicts_for_run(session: Session, run_id: int, profile: StreamingProfile | None = None,
                     overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Verdict rows per device x threads, the recommendation per device, and the profile used
    (the argument, else the run's, else the bundle's; a clear error when there is none).
    ``overrides`` (the CLI's --window, --hop, ...) go on top of the stored profile."""
    run = get_run(session, run_id)
    check_finished(session, run)
    source = "given"
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if profile is None and overrides:
        doc, stored = stored_profile(session, run)
        source = (f"{stored} with {', '.join(sorted(overrides))} from the command line"
                  if doc is not None else "the command line")
        profile = merge_profile(doc, overrides, source)
    if profile is None:
        doc, source = stored_profile(session, run)
        if doc is None:
            raise ProfileError(f"run {run_id} has no streaming profile (neither the run nor "
                               f"bundle {run.bundle_name}@{run.bundle_version} carries one); "
                               + HOW_TO_GIVE.replace("RUN", str(run_id)))
        profile = load_profile(doc, source)
    rows: list[dict[str, Any]] = []
    for result in run_results(session, run_id, latencies=True):
        base = {"device": result.device_name, "simulated": result.simulated,
                "threads": result.threads, "ok": result.ok, "error": result.error,
                "flags": list(result.flags or []),
                "energy": (result.detail or {}).get("energy")}
        window, basis = _window_latencies(result) if result.ok else ([], "")
        if not window:
            rows.append(base | {"ok": False, "error": result.error or "no latencies recorded",
                                "valid": None, "basis": None})
            continue
        rows.append(base | window_verdict(profile, window, result.valid, result.threads)
                    | {"basis": basis})
    devices = list(dict.fromkeys(row["device"] for row in rows))
    recommended = {d: recommend_threads([r for r in rows if r["device"] == d]) for d in devices}
    return {"run_id": run.id, "kind": run.kind,
            "bundle": {"name": run.bundle_name, "version": run.bundle_version,
                       "digest": run.bundle_digest},
            "profile": profile.to_dict(), "profile_source": source,
            "min_headroom_pct": MIN_HEADROOM_PCT, "rows": rows, "recommended": recommended}
