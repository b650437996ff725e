"""Accuracy metrics of an on-device evaluation, from the per-sample probabilities a device sent.

Pure numpy, no scikit-learn at run time: the control plane should not pull in a 40 MB ML stack
to count a confusion matrix. The tests check every number against scikit-learn instead
(``accuracy_score``, ``precision_recall_fscore_support(zero_division=0)``, ``roc_auc_score``,
``confusion_matrix``), so the definitions are the ones users already know:

- Binary (two classes): a sample is predicted positive when ``P(positive) >= threshold``;
  precision, recall and F1 are those of the positive class (default: class index 1).
- Multi-class: the prediction is the argmax; precision, recall and F1 are macro averages over
  the classes that occur in the labels or the predictions (scikit-learn's default: a class that
  is never seen nor predicted has no precision to average). ROC AUC is the macro one-vs-rest
  average, and None unless every class occurs in the labels (scikit-learn refuses then too).
- A ratio whose denominator is zero is 0.0 (``zero_division=0``): "no positive predictions"
  gives precision 0, not a crash and not NaN in a JSON document.
- ROC AUC is the Mann-Whitney statistic with mid-ranks for ties, which equals the area under
  the trapezoidal ROC curve scikit-learn computes; None, with the reason, when the labels hold
  one class only (the curve does not exist).

The threshold sweep and its recommendation follow docs/pipeline.md; ``agreement`` compares the
predictions of several devices (or device x thread-count results) on the same dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.present.wording import plural

if TYPE_CHECKING:
    from orchestrator.core.models import Result, Run

SWEEP_THRESHOLDS: tuple[float, ...] = tuple(round(0.50 + 0.05 * i, 2) for i in range(10))


# -- validation ----------------------------------------------------------------------------
def _check(labels: Sequence[int], probs: np.ndarray, class_names: Sequence[str],
           positive: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int array and probs as float [n, C], or ValueError naming what is wrong."""
    scores = np.asarray(probs, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"probabilities must be a [samples, classes] array, got shape "
                         f"{scores.shape}")
    n, classes = scores.shape
    if classes < 2:
        raise ValueError(f"need at least 2 classes, got probabilities for {classes}")
    if len(class_names) != classes:
        raise ValueError(f"{len(class_names)} class names ({', '.join(class_names)}) for "
                         f"{classes} probability columns: the model's labels and outputs differ")
    truth = np.asarray(labels)
    if truth.shape != (n,):
        raise ValueError(f"{truth.size} labels for {n} samples")
    if n == 0:
        raise ValueError("no samples to evaluate")
    if not np.issubdtype(truth.dtype, np.integer):
        raise ValueError("labels must be class indices (integers)")
    bad = truth[(truth < 0) | (truth >= classes)]
    if bad.size:
        raise ValueError(f"label {int(bad[0])} is not a class index (0..{classes - 1})")
    if not np.all(np.isfinite(scores)):
        raise ValueError("probabilities contain NaN or infinity")
    if positive is not None and not 0 <= positive < classes:
        raise ValueError(f"positive class {positive} is not a class index (0..{classes - 1}: "
                         f"{', '.join(class_names)})")
    return truth.astype(np.int64), scores


# -- building blocks -----------------------------------------------------------------------
def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def confusion(labels: np.ndarray, preds: np.ndarray, classes: int) -> np.ndarray:
    """Rows = true class, columns = predicted class (scikit-learn's layout)."""
    return np.bincount(labels * classes + preds, minlength=classes * classes).reshape(
        classes, classes)


def _class_scores(cm: np.ndarray, k: int) -> dict[str, float]:
    tp = cm[k, k]
    fp = cm[:, k].sum() - tp
    fn = cm[k, :].sum() - tp
    return {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn), "support": int(cm[k, :].sum())}


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def binary_auc(is_positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve via Mann-Whitney U; None if only one class is present."""
    n_pos = int(is_positive.sum())
    n_neg = is_positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = _midranks(scores)[is_positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _sweep_row(is_positive: np.ndarray, p_positive: np.ndarray, threshold: float,
               ) -> dict[str, Any]:
    predicted = p_positive >= threshold
    tp = int(np.sum(predicted & is_positive))
    fp = int(np.sum(predicted & ~is_positive))
    fn = int(np.sum(~predicted & is_positive))
    tn = int(is_positive.size - tp - fp - fn)
    return {"threshold": threshold, "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}


# -- the public functions ------------------------------------------------------------------
def threshold_sweep(labels: Sequence[int], p_positive: Sequence[float], positive: int,
                    thresholds: Sequence[float] = SWEEP_THRESHOLDS) -> list[dict[str, Any]]:
    """Precision, recall, F1 and tp/fp/tn/fn of the positive class at each threshold
    (a sample is positive when ``P(positive) >= threshold``)."""
    truth = np.asarray(labels)
    scores = np.asarray(p_positive, dtype=np.float64)
    if truth.shape != scores.shape or truth.ndim != 1:
        raise ValueError(f"{truth.size} labels for {scores.size} probabilities")
    is_positive = truth == positive
    return [_sweep_row(is_positive, scores, float(t)) for t in thresholds]


def _best(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Highest F1; ties go to the lower threshold."""
    return min(rows, key=lambda r: (-r["f1"], r["threshold"]))


def recommend_threshold(sweep: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{"threshold", "rule", ...}``: the highest F1 among thresholds with zero false positives
    (and at least one true positive: a threshold that never fires has no false positives but
    detects nothing), else the highest F1 overall; ties go to the lower threshold.

    Why zero false positives first: for an event detector a false alarm triggers an action at
    the wrong moment, while a miss only delays detection by a window (the seed write-up's
    argument); F1 then picks the most useful of the silent thresholds.
    """
    if not sweep:
        raise ValueError("an empty threshold sweep has nothing to recommend")
    silent = [r for r in sweep if r["fp"] == 0 and r["tp"] > 0]
    pool = silent or list(sweep)
    best = _best(pool)
    if silent:
        rule = (f"highest F1 ({best['f1']:.3f}) among the "
                f"{plural(len(silent), 'threshold')} with zero false positives")
    else:
        fps = min(r["fp"] for r in sweep)
        if fps == 0:
            why = "no threshold with zero false positives detects any positive"
        else:
            why = f"no threshold reaches zero false positives (fewest: {fps})"
        rule = f"{why}: highest F1 ({best['f1']:.3f})"
    if sum(1 for r in pool if r["f1"] == best["f1"]) > 1:
        rule += ", the lowest of the tied thresholds"
    return {"threshold": best["threshold"], "rule": rule,
            **{k: best[k] for k in ("precision", "recall", "f1", "fp", "fn")}}


def evaluate(labels: Sequence[int], probs: np.ndarray, class_names: list[str],
             positive: int | None, threshold: float = 0.5) -> dict[str, Any]:
    """Every metric of docs/pipeline.md "Metrics" for one device x thread-count result.

    ``positive`` is the positive class index for a binary model (None = 1); for a multi-class
    model it is optional and only adds a one-vs-rest threshold sweep for that class.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be within [0, 1], got {threshold}")
    truth, scores = _check(labels, probs, class_names, positive)
    classes = scores.shape[1]
    binary = classes == 2
    if binary:
        positive = 1 if positive is None else positive
        negative = 1 - positive
        preds = np.where(scores[:, positive] >= threshold, positive, negative)
    else:
        preds = np.argmax(scores, axis=1)
    cm = confusion(truth, preds, classes)
    per_class = {name: _class_scores(cm, k) for k, name in enumerate(class_names)}
    if binary:
        assert positive is not None
        summary = per_class[class_names[positive]]
        auc = binary_auc(truth == positive, scores[:, positive])
        auc_reason = None if auc is not None else (
            f"only one class ({class_names[int(truth[0])]}) in the labels: ROC AUC needs both")
    else:
        present = [k for k in range(classes) if cm[k, :].sum() or cm[:, k].sum()]
        summary = {key: float(np.mean([per_class[class_names[k]][key] for k in present]))
                   for key in ("precision", "recall", "f1")}
        missing = [class_names[k] for k in range(classes) if not cm[k, :].sum()]
        if missing:
            auc = None
            auc_reason = (f"class(es) {', '.join(missing)} not in the labels: one-vs-rest ROC "
                          f"AUC needs every class")
        else:
            auc = float(np.mean([binary_auc(truth == k, scores[:, k]) for k in range(classes)]))
            auc_reason = None
    out: dict[str, Any] = {
        "n": int(truth.size), "classes": list(class_names),
        "mode": "binary" if binary else "multiclass",
        "positive": None if positive is None else {"index": positive,
                                                   "name": class_names[positive]},
        "threshold": threshold if binary else None,
        "accuracy": _ratio(np.trace(cm), truth.size),
        "precision": summary["precision"], "recall": summary["recall"], "f1": summary["f1"],
        "roc_auc": auc, "confusion_matrix": cm.tolist(), "per_class": per_class,
        "predictions": preds.tolist(), "sweep": None, "recommended": None,
    }
    if auc_reason:
        out["roc_auc_reason"] = auc_reason
    if positive is not None:
        out["sweep"] = threshold_sweep(truth, scores[:, positive], positive)
        out["recommended"] = recommend_threshold(out["sweep"])
    return out


# -- cross-device agreement ----------------------------------------------------------------
def prediction_key(device: str, threads: int | None, several_thread_counts: bool) -> str:
    """The key a result has in an agreement report: the device name, or ``device@T2`` when the
    run measured several thread counts (every device x threads result is compared: a thread
    count must not change a prediction, and when it does, that is worth seeing)."""
    return f"{device}@T{threads}" if several_thread_counts else device


def agreement(per_device_predictions: Mapping[str, Sequence[int]], sample_ids: Sequence[str],
              class_names: Sequence[str], labels: Sequence[int] | None = None,
              ) -> dict[str, Any]:
    """Do all results agree? ``{"same_confusion", "same_predictions", "differing": [{"id",
    "label"?, "predictions": {key: class name}}], "keys"}``.

    ``same_confusion`` needs the true ``labels`` (class indices, ``sample_ids`` order); without
    them it is True when every prediction agrees and None (unknown) otherwise. Keys are what
    ``prediction_key`` makes. Fewer than two results agree trivially.
    """
    keys = list(per_device_predictions)
    preds = {key: list(per_device_predictions[key]) for key in keys}
    for key, values in preds.items():
        if len(values) != len(sample_ids):
            raise ValueError(f"{key}: {len(values)} predictions for {len(sample_ids)} samples")
    differing = []
    for i, sample in enumerate(sample_ids):
        seen = {preds[key][i] for key in keys}
        if len(seen) > 1:
            entry: dict[str, Any] = {"id": sample}
            if labels is not None:
                entry["label"] = class_names[labels[i]]
            entry["predictions"] = {key: class_names[preds[key][i]] for key in keys}
            differing.append(entry)
    same_confusion: bool | None
    if not differing:
        same_confusion = True
    elif labels is None:
        same_confusion = None
    else:
        truth = np.asarray(labels, dtype=np.int64)
        matrices = {key: confusion(truth, np.asarray(preds[key], dtype=np.int64),
                                   len(class_names)).tolist() for key in keys}
        same_confusion = all(m == matrices[keys[0]] for m in matrices.values())
    return {"keys": keys, "same_confusion": same_confusion, "same_predictions": not differing,
            "differing": differing}


def agreement_from_results(results: Sequence[Mapping[str, Any]],
                           class_names: Sequence[str]) -> dict[str, Any]:
    """``agreement`` over stored eval results: each ``{"device", "threads", "samples": [{"id",
    "label", "pred"}]}`` (``detail["samples"]``; label/pred as class names or indices). Samples
    are matched by id, so results listing them in different orders still compare; only the ids
    every result has are compared (``compared`` says how many)."""
    usable = [r for r in results if r.get("samples")]
    several = len({r.get("threads") for r in usable}) > 1
    index = {name: i for i, name in enumerate(class_names)}

    def as_index(value: Any) -> int:
        return index[value] if isinstance(value, str) else int(value)

    by_key = {prediction_key(str(r["device"]), r.get("threads"), several):
              {s["id"]: s for s in r["samples"]} for r in usable}
    common = [sid for sid in (usable[0]["samples"] if usable else [])]
    ids = [s["id"] for s in common if all(s["id"] in m for m in by_key.values())]
    per_key = {key: [as_index(m[sid]["pred"]) for sid in ids] for key, m in by_key.items()}
    labels = [as_index(next(iter(by_key.values()))[sid]["label"]) for sid in ids]
    out = agreement(per_key, ids, class_names, labels)
    out["compared"] = len(ids)
    return out


# -- reading back --------------------------------------------------------------------------
# Here, not in orchestrator.measure.evals, because runs.result_public/run_public show them: runs is
# below evals (evals stores its results with runs' helpers), so these must be below runs.


def eval_public(result: Result) -> dict[str, Any] | None:
    """The ``eval`` block of ``runs.result_public`` for one eval result (None if unscored)."""
    detail = result.detail or {}
    if "eval" not in detail:
        return None
    return {"metrics": detail["eval"], "preprocessing_ms": detail.get("preprocessing_ms"),
            "preprocessing_stats": detail.get("preprocessing_stats"),
            "samples": detail.get("samples") or [], "output": detail.get("output"),
            "energy": detail.get("energy")}


def run_agreement(run: Run, results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Cross-device agreement over a run's scored results (``result_public`` dicts)."""
    names = (run.params or {}).get("labels")
    scored = [{"device": r["device"], "threads": r["threads"],
               "samples": r["eval"]["samples"]} for r in results if r.get("eval")]
    if not names or not scored:
        return None
    return agreement_from_results(scored, names)
