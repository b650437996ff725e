"""Golden outputs: what the model computed at build time, so every device can prove it computes
the same (docs/pipeline.md, "Manifest keys" / ``golden``).

Why at build time, on the control plane: it is the one place where the model is known to load
(``inspect_model`` just proved it) and whose onnxruntime the user trusts; the device then runs the
same inputs after activation and a mismatch rolls it back (agent/smoke.py).

Why the npz bytes are written here instead of with ``np.savez``: ``savez`` stamps every zip
member with the current local time, so two builds of the same model would give different golden
files, a different manifest and a "new" version for nothing. Here every member has a fixed
timestamp, fixed order and no compression, so the same arrays always give the same bytes.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from agent.fsutil import AgentError
from agent.inputs import build_inputs, find_sample_npz, plan_inputs
from agent.smoke import golden_session_options
from orchestrator.artifacts.blobstore import BlobStore
from orchestrator.core.errors import BundleError

GOLDEN_INPUTS = ".edgefleet/golden_inputs.npz"
GOLDEN_OUTPUTS = ".edgefleet/golden_outputs.npz"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip header can hold

# Default tolerances by model precision, as (rtol, atol) for |a - e| <= atol + rtol * |e|.
# The golden outputs come from the x86 build machine; the device is usually an ARM Pi. Measured
# (docs/arm.md, bench/arm_numerics.py: x86 AVX512-VNNI onnxruntime 1.32 vs aarch64 onnxruntime
# 1.32 and 1.19.2 under qemu, the demo detector and a transformer-style encoder):
# - FP32 differs in the last bits (FMA vs separate multiply-add, SIMD width changes the summation
#   order of every dot product): at most 8.0e-7 absolute, 2.6e-6 relative. 1e-3 / 1e-4 leaves
#   ~100x that for deeper models, whose differences grow with depth (a few dozen layers reach
#   ~1e-5 relative), and still catches what the smoke test is for (a wrong or corrupted model, a
#   broken runtime): those change outputs by whole units, not by parts per thousand.
# - INT8 (dynamic and static QDQ) came out identical to at most 3e-8: integer kernels are exact,
#   and the float scales around them are computed the same way. The "few percent" of ARM-vs-x86
#   kernel difference this used to allow (5e-2) was never seen. 1e-2 keeps room for one
#   requantization step (1/255 of an activation's range) where kernels do round differently: an
#   x86 build machine without VNNI, whose AVX2 u8s8 path can saturate intermediate sums (not
#   measurable on the VNNI machine measured), or a real Pi's kernel choice (Pi 4: no dot-product
#   instructions; qemu offers them); a model computing something else is off by far more.
# FP16 has ~1e-3 epsilon per op, hence 1e-2 relative.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-3, 1e-4),
    "fp16": (1e-2, 1e-3),
    "int8": (1e-2, 1e-2),
}


@dataclass
class Golden:
    """Golden files for one build: npz bytes and the tolerances the device compares with."""

    inputs: bytes
    outputs: bytes
    rtol: float
    atol: float


@dataclass
class GoldenResult:
    golden: Golden | None
    note: str | None = None  # why there is no golden, and how to get one


def default_tolerances(precision: str | None) -> tuple[float, float]:
    """(rtol, atol) for a model precision; unknown precisions get the FP32 defaults."""
    return DEFAULT_TOLERANCES.get(precision or "fp32", DEFAULT_TOLERANCES["fp32"])


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A ``np.load``-able .npz whose bytes depend only on the arrays (see module doc)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            member = io.BytesIO()
            # asarray(order="C"), not ascontiguousarray: that one turns a 0-d array (a
            # scalar input such as a sample rate) into shape (1,), which is not the model's.
            np.lib.format.write_array(member, np.asarray(arrays[name], order="C"),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def _check_tolerance(flag: str, value: float) -> float:
    if not (value >= 0 and np.isfinite(value)):
        raise BundleError(f"{flag} must be a finite number >= 0, got {value}")
    return float(value)


def with_batch_of_one(signature: list[dict[str, Any]],
                      input_shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """Recorded shapes plus, for an input whose only dynamic dim is the leading one, that dim
    set to 1. Why: nearly every exported model has a dynamic batch ([batch, 1024, 128] for AST),
    and a smoke test needs just one example; other dynamic dims (sequence lengths) have no safe
    default, so they still need ``--shape``."""
    shapes = dict(input_shapes)
    for spec in signature:
        dims = spec.get("shape") or []
        if (spec["name"] not in shapes and dims and not isinstance(dims[0], int)
                and all(isinstance(d, int) and d > 0 for d in dims[1:])):
            shapes[spec["name"]] = [1, *dims[1:]]
    return shapes


def compute_golden(
    model_path: Path,
    display_name: str,
    signature: list[dict[str, Any]],
    files: Sequence[tuple[str, Path]],
    input_shapes: dict[str, list[int]],
    precision: str | None,
    rtol: float | None = None,
    atol: float | None = None,
    constants: dict[str, Any] | None = None,
) -> GoldenResult:
    """Run the model once on the bundle's sample inputs (or generated ones, with
    ``constants``: ``bundle build --input sr=16000``) and keep the outputs; a model that does
    not run raises BundleError naming it and onnxruntime's error."""
    default_rtol, default_atol = default_tolerances(precision)
    rtol = default_rtol if rtol is None else _check_tolerance("--golden-rtol", rtol)
    atol = default_atol if atol is None else _check_tolerance("--golden-atol", atol)
    paths = dict(files)
    npz_rel = find_sample_npz([{"path": rel} for rel in paths])
    try:
        plan = plan_inputs(signature, recorded=input_shapes if npz_rel else
                           with_batch_of_one(signature, input_shapes),
                           constants=constants or {},
                           npz=(str(paths[npz_rel]), npz_rel) if npz_rel else None)
    except AgentError as exc:
        if "path" in exc.extra:  # the bundle's own sample inputs do not fit the model
            raise BundleError(f"{display_name}: {exc.message}") from None
        # For an unresolved dynamic dim the message already says which --shape to pass.
        return GoldenResult(None, "no golden outputs, so devices will only check that its "
                            f"model loads: {exc.message}")
    feeds = build_inputs(plan)
    options = golden_session_options(ort)
    try:
        session = ort.InferenceSession(str(model_path), options,
                                       providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        run_options = ort.RunOptions()
        run_options.log_severity_level = 3  # the error is in the exception; keep stderr clean
        values = session.run(None, feeds, run_options)
    except Exception as exc:
        hint = _constant_hint(signature, feeds, constants or {})
        raise BundleError(f"{display_name} does not run in onnxruntime {ort.__version__} on "
                          f"its golden inputs ({_describe(feeds)}): {exc}{hint}") from None
    outputs: dict[str, np.ndarray] = {}
    for name, value in zip(names, values, strict=True):
        if not isinstance(value, np.ndarray):
            return GoldenResult(None, f"no golden outputs: output {name!r} is a "
                                f"{type(value).__name__}, not a tensor, so it cannot be "
                                "compared on the device")
        outputs[name] = value
    return GoldenResult(Golden(npz_bytes(feeds), npz_bytes(outputs), rtol, atol))


def _constant_hint(signature: list[dict[str, Any]], feeds: dict[str, np.ndarray],
                   constants: dict[str, Any]) -> str:
    """For a model that fails on generated inputs: the scalars that were generated (a sample
    rate, a length) are likely what it checks, and ``--input NAME=VALUE`` sets them."""
    scalars = [s["name"] for s in signature
               if not s.get("shape") and s["name"] not in constants and s["name"] in feeds]
    if not scalars:
        return ""
    values = ", ".join(f"{n}={feeds[n].item()!r}" for n in scalars)
    return (f" (generated scalar input(s) {values}: give the value the model expects with "
            f"`bundle build --input NAME=VALUE`, e.g. --input {scalars[0]}=16000 for a sample "
            "rate)")


def _describe(feeds: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{name} {value.dtype}[{'x'.join(map(str, value.shape))}]"
                     for name, value in feeds.items())


def store_golden(store: BlobStore, golden: Golden) -> list[dict[str, Any]]:
    """Put both npz files in the blob store; their manifest ``files`` entries, in order."""
    entries = []
    for rel, data in ((GOLDEN_INPUTS, golden.inputs), (GOLDEN_OUTPUTS, golden.outputs)):
        fd, tmp = tempfile.mkstemp(prefix=".golden-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            sha, size = store.add_file(Path(tmp))
        finally:
            os.unlink(tmp)
        entries.append({"path": rel, "sha256": sha, "size": size})
    return entries


def manifest_key(golden: Golden) -> dict[str, Any]:
    """The manifest's ``golden`` value (docs/pipeline.md)."""
    return {"inputs": GOLDEN_INPUTS, "outputs": GOLDEN_OUTPUTS,
            "rtol": golden.rtol, "atol": golden.atol}
