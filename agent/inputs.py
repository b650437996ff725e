"""Inputs for a benchmark: a sample .npz shipped in the bundle, user constants, or generated.

Why planned and built in two steps: ``plan_inputs`` runs once in the agent process and turns
the model signature plus the user's ``shapes``/``constants`` into a JSON plan (every dimension
resolved, every mistake reported as ``bad_input`` naming the input and dimension before any
measurement starts). ``build_inputs`` then runs in each measurement child, outside the timed
loop, and gives every thread count byte-identical arrays: generated data comes from a numpy
Generator seeded by the input's name, so results are reproducible across runs and devices.

Where a dynamic dimension (named string or null) gets its size, first match wins: the input's
``shapes`` entry, the input's array in the .npz, the manifest's ``input_shapes`` recorded at
build time, then the same named dimension resolved on another input (``batch`` is usually
shared), then 1 for a dimension named like a batch (``batch``, ``batch_size``, ``N``...), as
onnxruntime_perf_test and TFLite's benchmark_model do. A size given that way is *assumed*, and
the plan says so (``assumed``, also passed on from the manifest's ``shape_defaults`` when the
recorded shape was itself assumed at build time), so every result and report can state it.
Explicit ``constants`` win over the .npz: the user asked for them on this run.
"""

from __future__ import annotations

import os
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from agent.dims import BATCH_DEFAULT, BATCH_REASON, assumed_dim, is_batch_dim
from agent.fsutil import AgentError
from agent.protocol import E_BAD_INPUT

# ONNX tensor element type (as onnxruntime names it) -> numpy dtype
NUMPY_DTYPES = {
    "float": "float32", "float16": "float16", "double": "float64",
    "int64": "int64", "int32": "int32", "int16": "int16", "int8": "int8",
    "uint64": "uint64", "uint32": "uint32", "uint16": "uint16", "uint8": "uint8",
    "bool": "bool",
}
SAMPLE_NPZ = "sample_inputs.npz"
SEED = 0
GENERATED_INT_HIGH = 10  # ints are drawn from 0..9: valid indices/lengths for most models

Plan = List[Dict[str, Any]]

def _bad(message: str, **extra: Any) -> AgentError:
    return AgentError(E_BAD_INPUT, message, **extra)


def _dims(shape: Sequence[Any]) -> str:
    return "[%s]" % ", ".join("?" if d is None else str(d) for d in shape)


def _spec(name: str, shape: Sequence[Any]) -> str:
    return "--shape %s=%s" % (name, "x".join(str(d) for d in shape) if shape else "")


def _dim_label(index: int, dim: Any) -> str:
    return "dimension %d (%s)" % (index, "'%s'" % dim if isinstance(dim, str) else "unnamed")


def find_sample_npz(files: Sequence[Dict[str, Any]]) -> Optional[str]:
    """The bundle path of the sample-inputs .npz: the one named sample_inputs.npz, else the
    only .npz in the bundle, else None. Files under ``.edgefleet/`` (golden inputs/outputs)
    are EdgeFleet's own, never the user's samples."""
    npz = [f["path"] for f in files if f["path"].endswith(".npz")
           and not f["path"].startswith(".edgefleet/")]
    named = [p for p in npz if os.path.basename(p) == SAMPLE_NPZ]
    if len(named) == 1:
        return named[0]
    return npz[0] if len(npz) == 1 and not named else None


def _check_signature(signature: Any) -> List[Dict[str, Any]]:
    if not isinstance(signature, list) or not signature:
        raise _bad("the bundle manifest records no model inputs (model.inputs); rebuild the "
                   "bundle with `edgefleet bundle build`")
    for item in signature:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) \
                or not isinstance(item.get("shape"), list):
            raise _bad("the bundle manifest has a malformed model input %r; rebuild the bundle"
                       % (item,))
        if item.get("dtype") not in NUMPY_DTYPES:
            raise _bad("input '%s' has type %r, which the benchmark cannot generate (supported: "
                       "%s)" % (item["name"], item.get("dtype"), ", ".join(NUMPY_DTYPES)),
                       input=item["name"])
    return signature


def _check_shape(name: str, model: Sequence[Any], given: Any, what: str) -> List[int]:
    """``given`` as a list of positive ints matching ``model``'s rank and fixed dims."""
    if not isinstance(given, (list, tuple)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in given):
        raise _bad("%s for input '%s' must be a list of positive integers, got %r"
                   % (what, name, given), input=name)
    if len(given) != len(model):
        # "--shape x=4", or "the bundle's recorded input_shapes (x=1x2x3)"
        shown = _spec(name, given) if what == "--shape" else "%s (%s)" % (
            what, _spec(name, given)[len("--shape "):])
        raise _bad("%s has %d dimension%s but input '%s' has %d %s"
                   % (shown, len(given), "" if len(given) == 1 else "s", name, len(model),
                      _dims(model)), input=name)
    for index, dim in enumerate(model):
        size = given[index]
        if isinstance(dim, int) and dim >= 0 and dim != size:
            raise _bad("%s %s: dimension %d of input '%s' is fixed at %d by the model, got %d"
                       % (what, _spec(name, given), index, name, dim, size),
                       input=name, dimension=index)
    return list(given)


def _check_constant(name: str, dtype: str, value: Any) -> Any:
    np_dtype = np.dtype(NUMPY_DTYPES[dtype])
    if isinstance(value, bool) or np_dtype.kind == "b":
        if np_dtype.kind == "b" and (isinstance(value, bool) or value in (0, 1)):
            return bool(value)
        raise _bad("constant for input '%s' (%s) must be %s, got %r"
                   % (name, dtype, "true/false" if np_dtype.kind == "b" else "a number", value),
                   input=name)
    if not isinstance(value, (int, float)):
        raise _bad("constant for input '%s' (%s) must be a number, got %r" % (name, dtype, value),
                   input=name)
    if np_dtype.kind in "iu":
        if isinstance(value, float) and not value.is_integer():
            raise _bad("constant for input '%s' (%s) must be a whole number, got %r"
                       % (name, dtype, value), input=name)
        info = np.iinfo(np_dtype)
        if not info.min <= int(value) <= info.max:
            raise _bad("constant %r for input '%s' does not fit %s (%d..%d)"
                       % (value, name, dtype, info.min, info.max), input=name)
        return int(value)
    return float(value)


def check_constants(signature: Any, constants: Dict[str, Any]) -> Dict[str, Any]:
    """``constants`` (input name -> value) checked against the model's inputs and their
    dtypes, values converted (an int64 input's 16000.0 -> 16000); ``bad_input`` naming the
    input otherwise. What ``bundle build --input`` records in the manifest."""
    inputs = _check_signature(signature)
    names = [item["name"] for item in inputs]
    _unknown_keys("--input", constants, names)
    dtypes = {item["name"]: item["dtype"] for item in inputs}
    return {name: _check_constant(name, dtypes[name], value) for name, value in constants.items()}


def _unknown_keys(what: str, keys: Any, names: Sequence[str]) -> None:
    if not isinstance(keys, dict):
        raise _bad("%s must be an object {input name: ...}, got %r" % (what, keys))
    for key in keys:
        if key not in names:
            raise _bad("%s names '%s', which is not an input of the model (inputs: %s)"
                       % (what, key, ", ".join(names)), input=key)


def _load_npz(path: str, rel: str, names: Sequence[str]) -> Dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as exc:
        raise _bad("%s in the bundle is not a readable .npz: %s" % (rel, exc), path=rel) from None
    if os.path.basename(rel) == SAMPLE_NPZ:  # explicitly sample inputs: a stray key is a typo
        for key in arrays:
            if key not in names:
                raise _bad("%s has array '%s', which is not an input of the model (inputs: %s)"
                           % (rel, key, ", ".join(names)), path=rel, input=key)
    return {key: value for key, value in arrays.items() if key in names}


def _check_array(name: str, dtype: str, model: Sequence[Any], array: Any, rel: str) -> List[int]:
    want = np.dtype(NUMPY_DTYPES[dtype])
    kinds = {"b": "b", "i": "iu", "u": "iu", "f": "f"}
    if array.dtype.kind not in kinds.get(want.kind, want.kind):
        raise _bad("%s: array '%s' is %s but input '%s' takes %s" % (rel, name, array.dtype, name,
                                                                     dtype), path=rel, input=name)
    shape = list(array.shape)
    if len(shape) != len(model) or any(
            isinstance(d, int) and d >= 0 and d != shape[i] for i, d in enumerate(model)):
        raise _bad("%s: array '%s' has shape %s but input '%s' takes %s"
                   % (rel, name, _dims(shape), name, _dims(model)), path=rel, input=name)
    return shape


def plan_inputs(signature: Any, *, shapes: Optional[Dict[str, Any]] = None,
                constants: Optional[Dict[str, Any]] = None,
                recorded: Optional[Dict[str, Any]] = None,
                npz: Optional[Tuple[str, str]] = None,
                recorded_assumed: Optional[Dict[str, Any]] = None) -> Plan:
    """One ``{name, dtype, shape, source[, value | npz][, assumed]}`` per model input, all dims
    resolved.

    ``recorded`` is the manifest's ``input_shapes``, ``recorded_assumed`` its
    ``shape_defaults`` (which of those recorded sizes were assumed at build, and why); ``npz``
    is (absolute path, bundle path). Raises ``bad_input`` naming the input (and dimension) for
    anything it cannot resolve.
    """
    inputs = _check_signature(signature)
    names = [item["name"] for item in inputs]
    shapes = {} if shapes is None else shapes
    constants = {} if constants is None else constants
    _unknown_keys("--shape", shapes, names)
    _unknown_keys("--input", constants, names)
    recorded = recorded if isinstance(recorded, dict) else {}
    arrays = _load_npz(npz[0], npz[1], names) if npz else {}
    plan: Plan = []
    resolved: Dict[str, int] = {}
    for item in inputs:
        name, dtype, model = item["name"], item["dtype"], item["shape"]
        entry: Dict[str, Any] = {"name": name, "dtype": dtype, "shape": None,
                                 "source": "generated"}
        if name in constants:
            entry.update(source="constant", value=_check_constant(name, dtype, constants[name]))
        if name in arrays and name not in constants and npz is not None:
            entry.update(source="npz", npz=npz[0])
            entry["shape"] = _check_array(name, dtype, model, arrays[name], npz[1])
            if name in shapes and _check_shape(name, model, shapes[name], "--shape") \
                    != entry["shape"]:
                raise _bad("%s conflicts with the %s array '%s' in %s"
                           % (_spec(name, shapes[name]), _dims(entry["shape"]), name, npz[1]),
                           input=name)
        elif name in shapes:
            entry["shape"] = _check_shape(name, model, shapes[name], "--shape")
        elif name in recorded:
            entry["shape"] = _check_shape(name, model, recorded[name],
                                          "the bundle's recorded input_shapes")
            said = (recorded_assumed or {}).get(name) if isinstance(recorded_assumed,
                                                                    dict) else None
            if isinstance(said, list) and said:
                entry["assumed"] = [dict(a) for a in said if isinstance(a, dict)]
        elif all(_size(d, {}) is not None for d in model):
            entry["shape"] = list(model)
        if entry["shape"] is not None:
            for index, dim in enumerate(model):
                if isinstance(dim, str):
                    resolved.setdefault(dim, entry["shape"][index])
        plan.append(entry)
    defaulted = set()  # type: set  # named dims set to 1 as batches, so another input sharing one says so
    for position, entry in enumerate(plan):
        item = inputs[position]
        if entry["shape"] is not None:
            continue
        model = item["shape"]
        shape = []
        assumed = []
        for index, dim in enumerate(model):
            size = _size(dim, resolved)
            if size is None and is_batch_dim(dim):
                size = resolved[dim] = BATCH_DEFAULT
                defaulted.add(dim)
            if isinstance(dim, str) and dim in defaulted:  # here, or on an earlier input
                assumed.append(assumed_dim(index, dim, BATCH_DEFAULT, BATCH_REASON))
            if size is None:
                example = [_size(d, resolved) or 1 for d in model]
                raise _bad("input '%s' %s has %s with no size: pass it, e.g. %s (any size for "
                           "the dynamic dimensions)" % (item["name"], _dims(model),
                                                        _dim_label(index, dim),
                                                        _spec(item["name"], example)),
                           input=item["name"], dimension=index)
            shape.append(size)
        entry["shape"] = shape
        if assumed:
            entry["assumed"] = assumed
    return plan


def _size(dim: Any, resolved: Dict[str, int]) -> Optional[int]:
    """A model dimension's size: fixed, or a named one resolved on another input, else None."""
    if isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0:
        return dim
    return resolved.get(dim) if isinstance(dim, str) else None


def _generate(name: str, dtype: np.dtype, shape: Tuple[int, ...], seed: int) -> Any:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    if dtype.kind == "f":
        return np.asarray(rng.standard_normal(shape), dtype=dtype)
    if dtype.kind == "b":
        return np.asarray(rng.random(shape) < 0.5)
    return np.asarray(rng.integers(0, GENERATED_INT_HIGH, size=shape), dtype=dtype)


def build_inputs(plan: Plan, seed: int = SEED) -> Dict[str, Any]:
    """The feed dict for ``InferenceSession.run``; every array C-contiguous, of the model's
    dtype (an .npz array of the same kind, e.g. float64 for float, is converted)."""
    feeds: Dict[str, Any] = {}
    archives: Dict[str, Any] = {}
    try:
        for entry in plan:
            dtype = np.dtype(NUMPY_DTYPES[entry["dtype"]])
            shape = tuple(entry["shape"])
            if entry["source"] == "npz":
                if entry["npz"] not in archives:
                    archives[entry["npz"]] = np.load(entry["npz"], allow_pickle=False)
                array = archives[entry["npz"]][entry["name"]]
            elif entry["source"] == "constant":
                array = np.full(shape, entry["value"], dtype=dtype)
            else:
                array = _generate(entry["name"], dtype, shape, seed)
            feeds[entry["name"]] = np.asarray(array, dtype=dtype, order="C")  # keeps rank 0
    finally:
        for archive in archives.values():
            archive.close()
    return feeds


def describe(plan: Plan) -> List[Dict[str, Any]]:
    """The public ``inputs`` list of a bench result (no file paths, no values)."""
    out = []
    for e in plan:
        public = {"name": e["name"], "dtype": e["dtype"], "shape": list(e["shape"]),
                  "source": e["source"]}
        if e.get("assumed"):  # sizes nobody gave: a batch of 1, a preprocessor's dims
            public["assumed"] = [dict(a) for a in e["assumed"]]
        out.append(public)
    return out
