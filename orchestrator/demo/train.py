"""The demo first-crack network and its training, in numpy only.

Why by hand: the demo model must be genuinely trained, reproducibly, at generation time, with
no torch (or any autograd library) as a dependency. The network is small enough that its
backward pass fits on a screen. orchestrator/demo/model.py writes the same network as ONNX.

Shape: input [n, frames, mels] (normalised AST log-mels). Per frame, a dense layer sees the
frame's spectrum and the window's average spectrum (a pop is a bright frame
against the window's own background, whatever the fan's level); a second dense layer; then three
poolings over time: max ("was there a pop"), the mean of the top-k frames ("were there several":
a stray pop lights ~3 frames, a cluster many more) and the mean (the background); then a dense
layer to 2 logits. Dense layers only, which onnxruntime's dynamic INT8 quantises well.
"""

from __future__ import annotations

import numpy as np

__all__ = ["HIDDEN", "TOP_K", "forward", "train"]

HIDDEN = 64
TOP_K = 8
EPOCHS = 12
BATCH = 32
LEARNING_RATE = 3e-3


def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """He-normal weights, float32."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def forward(p: dict[str, np.ndarray], x: np.ndarray) -> dict[str, np.ndarray]:
    """The network's activations (``logits`` is the output) and what the backward pass needs."""
    n, frames, mels = x.shape
    # Frames flattened to rows: one 2-D BLAS call per layer (numpy's stacked 3-D matmul can be
    # an order of magnitude slower).
    rows = x.reshape(n * frames, mels)
    mean = x.mean(axis=1)  # [n, mels]: the window's average spectrum
    # Dense over [frame, frame - mean], factored: frame @ w1 - mean @ w1c costs one per-frame
    # product instead of two.
    a1 = ((rows @ p["w1"]).reshape(n, frames, -1) - (mean @ p["w1c"])[:, None, :]
          ).reshape(n * frames, -1) + p["b1"]
    h1 = np.maximum(a1, 0)
    a2 = h1 @ p["w2"] + p["b2"]
    h2 = np.maximum(a2, 0).reshape(n, frames, -1)
    top = np.argpartition(h2, frames - TOP_K, axis=1)[:, -TOP_K:]  # the k largest, any order
    pooled = np.concatenate([h2.max(axis=1), np.take_along_axis(h2, top, 1).mean(axis=1),
                             h2.mean(axis=1)], axis=1)
    return {"rows": rows, "mean": mean, "a1": a1, "h1": h1, "a2": a2, "h2": h2, "top": top,
            "pooled": pooled, "logits": pooled @ p["w3"] + p["b3"]}


def _gradients(p: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Backprop of the mean cross-entropy by hand (no autograd: numpy is all we depend on)."""
    f = forward(p, x)
    n, frames, hidden = f["h2"].shape
    e = np.exp(f["logits"] - f["logits"].max(axis=1, keepdims=True))
    d = e / e.sum(axis=1, keepdims=True)
    d[np.arange(n), y] -= 1.0
    d /= n
    dmax, dtop, dmean = np.split(d @ p["w3"].T, 3, axis=1)
    dh2 = np.repeat(dmean[:, None, :] / frames, frames, axis=1)
    # Max and top-k pooling pass gradient only to the frames they picked (ties: any of them).
    top_grad = np.repeat(dtop[:, None, :] / TOP_K, TOP_K, axis=1)
    for picked, grad in ((f["h2"].argmax(axis=1)[:, None, :], dmax[:, None, :]),
                         (f["top"], top_grad)):
        np.put_along_axis(dh2, picked, np.take_along_axis(dh2, picked, 1) + grad, 1)
    da2 = dh2.reshape(n * frames, hidden) * (f["a2"] > 0)
    da1 = (da2 @ p["w2"].T) * (f["a1"] > 0)
    return {
        "w1": f["rows"].T @ da1, "b1": da1.sum(axis=0),
        "w1c": -(f["mean"].T @ da1.reshape(n, frames, hidden).sum(axis=1)),
        "w2": f["h1"].T @ da2, "b2": da2.sum(axis=0),
        "w3": f["pooled"].T @ d, "b3": d.sum(axis=0),
    }


def train(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Adam with a cosine learning-rate decay, fixed seed, float32 throughout."""
    rng = np.random.default_rng([seed, 1])
    mels = x.shape[2]
    p = {
        "w1": _he(rng, (mels, HIDDEN), 2 * mels), "w1c": _he(rng, (mels, HIDDEN), 2 * mels),
        "b1": np.zeros(HIDDEN, np.float32),
        "w2": _he(rng, (HIDDEN, HIDDEN), HIDDEN), "b2": np.zeros(HIDDEN, np.float32),
        "w3": _he(rng, (3 * HIDDEN, 2), 3 * HIDDEN) * np.float32(0.1),
        "b3": np.zeros(2, np.float32),
    }
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    step = 0
    for epoch in range(EPOCHS):
        lr = LEARNING_RATE * 0.5 * (1.0 + np.cos(np.pi * epoch / EPOCHS))
        order = rng.permutation(len(x))
        for start in range(0, len(x), BATCH):
            batch = order[start:start + BATCH]
            grads = _gradients(p, x[batch], y[batch])
            step += 1
            for k, g in grads.items():
                m[k] = 0.9 * m[k] + 0.1 * g
                v[k] = 0.999 * v[k] + 0.001 * g * g
                update = (m[k] / (1 - 0.9**step)) / (np.sqrt(v[k] / (1 - 0.999**step)) + 1e-8)
                p[k] = (p[k] - lr * update).astype(np.float32)
    return p
