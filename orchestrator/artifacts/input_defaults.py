"""Sizes for a model's dynamic input dimensions that nobody gave, decided at ``bundle build`` so
that a real export benchmarks without flags (issue 13: an AST from transformers, input
``input_values [batch_size, 1024, 128]``, needed ``--shape`` for its batch).

Where a size comes from, first match wins (``--shape`` always wins over all of them):

1. ``preprocessor_config.json`` next to the model, for the feature input of the audio models
   whose extractor fixes its shape: AST (``ASTFeatureExtractor``) takes
   ``[batch, max_length, num_mel_bins]`` frames x mel bins (1024 x 128 for AudioSet models),
   Whisper (``WhisperFeatureExtractor``) ``[batch, feature_size, nb_max_frames]`` mel bins x
   frames (80 x 3000 for 30 s). The keys are transformers' own (``feature_extraction_*.py``).
2. 1 for a dimension named like a batch (``batch``, ``batch_size``, ``N``; the names are
   ``agent.dims.BATCH_DIM_NAMES``), the size onnxruntime_perf_test and TFLite's
   benchmark_model use.

Every size decided here is *assumed*: recorded with the reason in the manifest
(``shape_defaults``, next to ``input_shapes``), printed by ``bundle build``, and carried into
every benchmark result's ``inputs`` (``assumed``) and the report's caption. A dimension none of
these decide (a sequence length) stays unresolved: the build says which, and bench refuses
naming the input and the dimension, as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agent.dims import BATCH_DEFAULT, BATCH_REASON, assumed_dim, is_batch_dim

PREPROCESSOR_CONFIG = "preprocessor_config.json"
# feature extractor -> the config keys giving the feature input's dims 1 and 2 (dim 0: batch),
# with the value to use when the key is missing (transformers' defaults).
FEATURE_LAYOUTS: dict[str, tuple[tuple[str, int], tuple[str, int]]] = {
    "ASTFeatureExtractor": (("max_length", 1024), ("num_mel_bins", 128)),
    "WhisperFeatureExtractor": (("feature_size", 80), ("nb_max_frames", 3000)),
}
FEATURE_INPUT_NAMES = ("input_values", "input_features")
Shape = list[int]


def _whisper_frames(pre: Mapping[str, Any]) -> int | None:
    """nb_max_frames, else what it is derived from (n_samples / hop_length)."""
    samples, hop = pre.get("n_samples"), pre.get("hop_length")
    if isinstance(samples, int) and isinstance(hop, int) and hop > 0:
        return samples // hop
    return None


def feature_sizes(pre: Mapping[str, Any] | None) -> tuple[str, list[tuple[int, str]]] | None:
    """(extractor, [(size, reason) of dims 1 and 2]) when ``pre`` (a parsed
    preprocessor_config.json) is an extractor whose feature shape is known, else None."""
    if not isinstance(pre, Mapping):
        return None
    kind = pre.get("feature_extractor_type")
    layout = FEATURE_LAYOUTS.get(kind) if isinstance(kind, str) else None
    if layout is None:
        return None
    sizes = []
    for key, fallback in layout:
        value = pre.get(key)
        if key == "nb_max_frames" and not isinstance(value, int):
            value = _whisper_frames(pre)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            value, reason = fallback, f"{kind}'s default {key}, {PREPROCESSOR_CONFIG} has none"
        else:
            reason = f"{key} in {PREPROCESSOR_CONFIG} ({kind})"
        sizes.append((value, reason))
    return str(kind), sizes


def _feature_input(inputs: Sequence[Mapping[str, Any]]) -> str | None:
    """The input the preprocessor's features feed: a float input of rank 3 named like
    transformers' (input_values, input_features), else the only float input of rank 3."""
    candidates = [i for i in inputs if len(i.get("shape") or []) == 3
                  and str(i.get("dtype")).startswith(("float", "double"))]
    named = [i for i in candidates if i["name"] in FEATURE_INPUT_NAMES]
    chosen = named or candidates
    return chosen[0]["name"] if len(chosen) == 1 else None


def resolve(inputs: Sequence[Mapping[str, Any]], given: Mapping[str, Shape],
            preprocessor: Mapping[str, Any] | None
            ) -> tuple[dict[str, Shape], dict[str, list[dict[str, Any]]], list[str]]:
    """``(shapes, assumed, unresolved)`` for the inputs ``given`` has no shape for:
    ``shapes`` of those whose every dynamic dim got a size here, ``assumed`` the reasons per
    input (``agent.dims.assumed_dim`` entries), ``unresolved`` a phrase per dynamic dim
    nothing decides ("input 'x' dimension 1 ('samples')")."""
    features = feature_sizes(preprocessor)
    feature_input = _feature_input(inputs) if features else None
    shapes: dict[str, Shape] = {}
    assumed: dict[str, list[dict[str, Any]]] = {}
    unresolved: list[str] = []
    # A named dim decided on one input holds for every input: (size, why if assumed here).
    named: dict[str, tuple[int, str | None]] = {}
    for spec in inputs:  # sizes the user gave fix the named dims they cover
        if spec["name"] in given:
            for dim, size in zip(spec.get("shape") or [], given[spec["name"]], strict=False):
                if isinstance(dim, str):
                    named.setdefault(dim, (size, None))
    for spec in inputs:
        name, dims = spec["name"], list(spec.get("shape") or [])
        if name in given or all(isinstance(d, int) and d >= 0 for d in dims):
            continue
        shape: Shape = []
        reasons: list[dict[str, Any]] = []
        missing = []
        fixed_ok = True
        if features is not None and name == feature_input:
            _, sizes = features
            fixed_ok = all(not isinstance(dims[i], int) or dims[i] < 0 or dims[i] == size
                           for i, (size, _) in zip((1, 2), sizes, strict=True))
        for index, dim in enumerate(dims):
            if isinstance(dim, int) and dim >= 0:
                shape.append(dim)
                continue
            if isinstance(dim, str) and dim in named:
                size, why = named[dim]
                shape.append(size)
                if why is not None:
                    reasons.append(assumed_dim(index, dim, size, why))
                continue
            if (features is not None and name == feature_input and fixed_ok
                    and index in (1, 2)):
                size, reason = features[1][index - 1]
            elif is_batch_dim(dim):
                size, reason = BATCH_DEFAULT, BATCH_REASON
            else:
                label = f"'{dim}'" if isinstance(dim, str) else "unnamed"
                missing.append(f"input '{name}' dimension {index} ({label})")
                shape.append(0)
                continue
            shape.append(size)
            reasons.append(assumed_dim(index, dim, size, reason))
            if isinstance(dim, str):
                named[dim] = (size, reason)
        if missing:
            unresolved.extend(missing)
            continue
        shapes[name] = shape
        if reasons:
            assumed[name] = reasons
    return shapes, assumed, unresolved


def describe(assumed: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """One line per input: ``input_values: batch_size = 1 (named like a batch ...)``."""
    lines = []
    for name, entries in assumed.items():
        parts = [f"{e.get('name') or 'dimension ' + str(e.get('dimension'))} = {e.get('size')} "
                 f"({e.get('from')})" for e in entries]
        lines.append(f"{name}: " + "; ".join(parts))
    return lines
