"""What a bundle needs to know about its ONNX model: I/O signature, opset, precision, and the
oldest onnxruntime that can load it (so a push to an old Pi is refused before any byte moves).

``onnx`` and ``onnxruntime`` are imported in the functions that parse a model, not at the top:
they cost ~1.3 s of CPU to import, and this module is reached by commands that never parse
one (``push`` and ``bundle list`` need only :func:`version_tuple`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.core.errors import BundleError

if TYPE_CHECKING:
    import onnx

# ONNX Runtime release that first implemented each default-domain opset (ORT's Versioning.md).
_ORT_FOR_OPSET: dict[int, str] = {
    11: "1.0", 12: "1.3", 13: "1.6", 14: "1.8", 15: "1.9", 16: "1.11", 17: "1.12",
    18: "1.14", 19: "1.15", 20: "1.17", 21: "1.18", 22: "1.20",
}
# ... and each IR version.
_ORT_FOR_IR: dict[int, str] = {6: "1.0", 7: "1.3", 8: "1.10", 9: "1.15", 10: "1.17"}

_INT8_OPS = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
    "ConvInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
}


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading number of each dot-separated piece: "1.18.0rc1" -> (1, 18, 0), not
    (1, 18, 1); "1.17.0+cu118" -> (1, 17, 0), not (1, 17, 118). Stops at a piece without one."""
    parts = []
    for piece in version.removeprefix("v").split("."):
        digits = re.match(r"[0-9]*", piece).group()  # type: ignore[union-attr]
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _min_version(table: dict[int, str], key: int) -> str:
    if key <= min(table):
        return table[min(table)]
    if key in table:
        return table[key]
    if key > max(table):
        # Newer than our table knows: the runtime on this machine loaded it, so that's a floor.
        import onnxruntime as ort  # start-up time: see the module docstring

        return ".".join(str(p) for p in version_tuple(ort.__version__)[:2])
    return table[max(k for k in table if k <= key)]


def min_onnxruntime(opset: int, ir_version: int) -> str:
    a, b = _min_version(_ORT_FOR_OPSET, opset), _min_version(_ORT_FOR_IR, ir_version)
    return max(a, b, key=version_tuple)


@dataclass
class ModelInfo:
    opset: int
    ir_version: int
    producer: str
    precision: str
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    min_onnxruntime: str = "1.0"

    def as_dict(self) -> dict[str, Any]:
        return {
            "opset": self.opset,
            "ir_version": self.ir_version,
            "producer": self.producer,
            "inputs": self.inputs,
            "outputs": self.outputs,
        }


def _dtype(ort_type: str) -> str:
    # "tensor(float)" -> "float"
    return ort_type[len("tensor("):-1] if ort_type.startswith("tensor(") else ort_type


def _shape(shape: Any) -> list[int | str | None]:
    return [dim if isinstance(dim, int | str) or dim is None else str(dim) for dim in shape]


def _precision(model: onnx.ModelProto) -> str:
    import onnx  # start-up time: see the module docstring

    if any(node.op_type in _INT8_OPS for node in model.graph.node):
        return "int8"
    floats = [t.data_type for t in model.graph.initializer
              if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    if floats and all(dt == onnx.TensorProto.FLOAT16 for dt in floats):
        return "fp16"
    return "fp32"


def inspect_model(path: Path, display_name: str) -> ModelInfo:
    """Load with onnx (opset, precision) and with onnxruntime (signature, and proof it loads)."""
    import onnx  # start-up time: see the module docstring
    import onnxruntime as ort

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise BundleError(f"{display_name} is not an ONNX model (cannot parse it: {exc})") from None
    if not model.graph.node and not model.graph.output:
        raise BundleError(f"{display_name} is not an ONNX model (no graph found)")
    opsets = {imp.domain or "ai.onnx": imp.version for imp in model.opset_import}
    opset = opsets.get("ai.onnx", 0)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BundleError(
            f"{display_name} does not load in onnxruntime {ort.__version__}: {exc}"
        ) from None
    inputs = [{"name": i.name, "dtype": _dtype(i.type), "shape": _shape(i.shape)}
              for i in session.get_inputs()]
    outputs = [{"name": o.name, "dtype": _dtype(o.type), "shape": _shape(o.shape)}
               for o in session.get_outputs()]
    return ModelInfo(
        opset=opset,
        ir_version=model.ir_version,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        precision=_precision(model),
        inputs=inputs,
        outputs=outputs,
        min_onnxruntime=min_onnxruntime(opset, model.ir_version),
    )
