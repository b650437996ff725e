"""Which model dimensions are batches, and how an assumed size is reported. Light (no numpy):
the control plane's ``bundle build`` (orchestrator.artifacts.input_defaults) decides the same sizes
as the
agent's ``bench`` (agent.inputs) without importing numpy at start-up."""

from __future__ import annotations

import re
from typing import Any, Dict

# Dimension names exporters give the batch axis (torch.onnx dynamic_axes, optimum's
# "batch_size", the ONNX model zoo's "N"), compared lower-case without "_", "-" or spaces.
BATCH_DIM_NAMES = frozenset({"batch", "batchsize", "batchdim", "batches", "nbatch",
                             "numbatch", "numbatches", "bs", "b", "n"})
BATCH_DEFAULT = 1
BATCH_REASON = "named like a batch dimension: 1 unless --shape says otherwise"


def is_batch_dim(dim: Any) -> bool:
    """Whether a model dimension is a dynamic one named like a batch (``batch_size``, ``N``)."""
    return isinstance(dim, str) and re.sub(r"[^a-z0-9]", "", dim.lower()) in BATCH_DIM_NAMES


def assumed_dim(index: int, dim: Any, size: int, reason: str) -> Dict[str, Any]:
    """One ``assumed`` entry: which dimension got which size, and why (for results/reports)."""
    return {"dimension": index, "name": dim if isinstance(dim, str) else None, "size": size,
            "from": reason}
