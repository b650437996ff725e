"""Eval metrics against scikit-learn (computed independently here), the threshold sweep and its
recommendation rule on constructed cases, cross-device agreement, and the seed's numbers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from orchestrator.measure.evalmetrics import (
    SWEEP_THRESHOLDS,
    agreement,
    agreement_from_results,
    evaluate,
    prediction_key,
    recommend_threshold,
    threshold_sweep,
)

BINARY = ["no_first_crack", "first_crack"]


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def check_binary(labels: np.ndarray, probs: np.ndarray, positive: int, threshold: float) -> dict:
    out = evaluate(labels.tolist(), probs, BINARY, positive, threshold)
    preds = np.where(probs[:, positive] >= threshold, positive, 1 - positive)
    assert out["predictions"] == preds.tolist()
    assert out["accuracy"] == pytest.approx(accuracy_score(labels, preds), abs=1e-12)
    p, r, f, _ = precision_recall_fscore_support(labels, preds, average="binary",
                                                 pos_label=positive, zero_division=0)
    assert (out["precision"], out["recall"], out["f1"]) == pytest.approx((p, r, f), abs=1e-12)
    assert out["confusion_matrix"] == confusion_matrix(labels, preds, labels=[0, 1]).tolist()
    per = precision_recall_fscore_support(labels, preds, labels=[0, 1], zero_division=0)
    for k, name in enumerate(BINARY):
        got = out["per_class"][name]
        assert [got["precision"], got["recall"], got["f1"]] == pytest.approx(
            [per[0][k], per[1][k], per[2][k]], abs=1e-12)
        assert got["support"] == per[3][k]
    if len(set(labels.tolist())) == 2:
        expected = roc_auc_score(labels == positive, probs[:, positive])
        assert out["roc_auc"] == pytest.approx(expected, abs=1e-12)
    else:
        assert out["roc_auc"] is None and "only one class" in out["roc_auc_reason"]
    return out


@pytest.mark.parametrize("seed", range(8))
def test_binary_random_equals_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    labels = rng.integers(0, 2, n)
    # informative scores, rounded so that ties occur
    p1 = np.clip(np.round(0.5 + 0.3 * (labels - 0.5) + rng.normal(0, 0.25, n), 2), 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)
    positive = int(seed % 2)
    threshold = float(rng.choice(SWEEP_THRESHOLDS))
    check_binary(labels, probs, positive, threshold)


def test_binary_edge_cases() -> None:
    # every probability tied
    labels = np.array([0, 1, 0, 1, 1])
    tied = np.full((5, 2), 0.5)
    out = check_binary(labels, tied, 1, 0.5)
    assert out["roc_auc"] == 0.5
    # nothing predicted positive: precision 0 (zero_division=0), not NaN
    low = np.tile([0.9, 0.1], (5, 1))
    out = check_binary(labels, low, 1, 0.5)
    assert out["precision"] == 0.0 and out["recall"] == 0.0 and out["f1"] == 0.0
    # only one class in the labels
    zeros = np.zeros(4, dtype=int)
    check_binary(zeros, np.tile([0.3, 0.7], (4, 1)), 1, 0.5)
    ones = np.ones(3, dtype=int)
    out = check_binary(ones, np.tile([0.3, 0.7], (3, 1)), 1, 0.5)
    assert out["accuracy"] == 1.0 and out["roc_auc"] is None
    # a probability exactly at the threshold counts as positive
    out = evaluate([1], np.array([[0.1, 0.9]]), BINARY, 1, 0.9)
    assert out["predictions"] == [1]


@pytest.mark.parametrize("seed", range(6))
def test_multiclass_random_equals_sklearn(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    classes = int(rng.integers(3, 6))
    names = [f"c{k}" for k in range(classes)]
    n = int(rng.integers(classes * 4, 200))
    labels = rng.permutation(np.arange(n) % classes)  # every class present
    logits = rng.normal(0, 1, (n, classes))
    logits[np.arange(n), labels] += 1.0
    probs = np.round(softmax(logits), 3)
    probs = probs / probs.sum(axis=1, keepdims=True)
    out = evaluate(labels.tolist(), probs, names, None)
    preds = probs.argmax(axis=1)
    assert out["mode"] == "multiclass" and out["predictions"] == preds.tolist()
    assert out["accuracy"] == pytest.approx(accuracy_score(labels, preds), abs=1e-12)
    p, r, f, _ = precision_recall_fscore_support(labels, preds, average="macro",
                                                 zero_division=0)
    assert (out["precision"], out["recall"], out["f1"]) == pytest.approx((p, r, f), abs=1e-12)
    assert out["confusion_matrix"] == confusion_matrix(
        labels, preds, labels=list(range(classes))).tolist()
    auc = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert out["roc_auc"] == pytest.approx(auc, abs=1e-12)
    assert out["sweep"] is None and out["recommended"] is None


def test_multiclass_class_never_seen_nor_predicted_and_missing_from_labels() -> None:
    names = ["a", "b", "c", "d"]
    labels = np.array([0, 1, 2, 0, 1, 2])
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.6, 0.1, 0.2, 0.1],
                      [0.1, 0.6, 0.2, 0.1], [0.1, 0.8, 0.05, 0.05], [0.1, 0.1, 0.7, 0.1]])
    out = evaluate(labels.tolist(), probs, names, None)
    preds = probs.argmax(axis=1)
    p, r, f, _ = precision_recall_fscore_support(labels, preds, average="macro",
                                                 zero_division=0)
    assert (out["precision"], out["recall"], out["f1"]) == pytest.approx((p, r, f), abs=1e-12)
    assert out["roc_auc"] is None and "d" in out["roc_auc_reason"]
    assert out["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # a positive class for a multi-class model adds a one-vs-rest sweep
    with_positive = evaluate(labels.tolist(), probs, names, 2)
    assert with_positive["sweep"][0]["tp"] == 1 and with_positive["precision"] == out["precision"]


def test_seed_confusion_matrix_reproduces_the_write_up() -> None:
    """191 windows, [[154, 1], [5, 31]]: 96.86 % accuracy, 96.9 % precision (seed, part 4)."""
    labels = [0] * 155 + [1] * 36
    p1 = [0.02] * 154 + [0.941] + [0.3] * 5 + [0.97] * 31
    probs = np.array([[1 - p, p] for p in p1])
    out = evaluate(labels, probs, BINARY, 1)
    assert out["confusion_matrix"] == [[154, 1], [5, 31]]
    assert round(out["accuracy"] * 100, 2) == 96.86
    assert round(out["precision"] * 100, 1) == 96.9
    assert out["recall"] == pytest.approx(31 / 36)
    # the sweep drops that FP only at 0.95 (the 0.941 window of the write-up)
    by_t = {row["threshold"]: row for row in out["sweep"]}
    assert by_t[0.9]["fp"] == 1 and by_t[0.95]["fp"] == 0 and by_t[0.95]["tp"] == 31
    assert out["recommended"]["threshold"] == 0.95
    assert "zero false positives" in out["recommended"]["rule"]


def test_sweep_rows_and_thresholds() -> None:
    assert SWEEP_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    labels = [1, 1, 0, 0]
    sweep = threshold_sweep(labels, [0.9, 0.6, 0.7, 0.1], positive=1)
    assert [r["threshold"] for r in sweep] == list(SWEEP_THRESHOLDS)
    row = sweep[0]
    assert (row["tp"], row["fp"], row["tn"], row["fn"]) == (2, 1, 1, 0)
    assert row["precision"] == pytest.approx(2 / 3) and row["recall"] == 1.0
    assert sweep[-1] == {"threshold": 0.95, "precision": 0.0, "recall": 0.0, "f1": 0.0,
                         "tp": 0, "fp": 0, "tn": 2, "fn": 2}


def row(t: float, f1: float, fp: int, tp: int = 5) -> dict:
    return {"threshold": t, "precision": 0.0, "recall": 0.0, "f1": f1, "tp": tp, "fp": fp,
            "tn": 0, "fn": 0}


def test_recommendation_prefers_zero_false_positives_over_the_best_f1() -> None:
    sweep = [row(0.5, 0.93, 2), row(0.8, 0.95, 1), row(0.9, 0.88, 0), row(0.95, 0.80, 0)]
    rec = recommend_threshold(sweep)
    assert rec["threshold"] == 0.9 and rec["fp"] == 0
    assert rec["rule"].startswith("highest F1 (0.880) among the 2 thresholds with zero false")


def test_recommendation_without_a_zero_fp_threshold_takes_the_highest_f1() -> None:
    sweep = [row(0.5, 0.70, 3), row(0.7, 0.91, 2), row(0.9, 0.85, 1)]
    rec = recommend_threshold(sweep)
    assert rec["threshold"] == 0.7
    assert rec["rule"] == ("no threshold reaches zero false positives (fewest: 1): "
                           "highest F1 (0.910)")


def test_recommendation_ties_go_to_the_lower_threshold() -> None:
    rec = recommend_threshold([row(0.5, 0.9, 1), row(0.6, 0.93, 0), row(0.65, 0.93, 0),
                               row(0.7, 0.93, 0)])
    assert rec["threshold"] == 0.6 and "lowest of the tied" in rec["rule"]
    rec = recommend_threshold([row(0.5, 0.8, 2), row(0.55, 0.8, 2), row(0.6, 0.7, 1)])
    assert rec["threshold"] == 0.5


def test_a_threshold_that_never_fires_is_not_recommended() -> None:
    sweep = [row(0.5, 0.6, 2), row(0.9, 0.4, 1), row(0.95, 0.0, 0, tp=0)]
    rec = recommend_threshold(sweep)
    assert rec["threshold"] == 0.5 and "detects any positive" in rec["rule"]


def test_bad_inputs_name_the_problem() -> None:
    probs = np.tile([0.5, 0.5], (3, 1))
    with pytest.raises(ValueError, match="3 class names"):
        evaluate([0, 1, 0], probs, ["a", "b", "c"], 1)
    with pytest.raises(ValueError, match="label 2 is not a class index"):
        evaluate([0, 2, 0], probs, BINARY, 1)
    with pytest.raises(ValueError, match="2 labels for 3 samples"):
        evaluate([0, 1], probs, BINARY, 1)
    with pytest.raises(ValueError, match="positive class 5"):
        evaluate([0, 1, 0], probs, BINARY, 5)
    with pytest.raises(ValueError, match="threshold"):
        evaluate([0, 1, 0], probs, BINARY, 1, 1.5)


def test_agreement_across_devices_and_thread_counts() -> None:
    ids = ["fc/a.wav", "fc/b.wav", "no/c.wav", "no/d.wav"]
    labels = [1, 1, 0, 0]
    same = agreement({"pi1": [1, 0, 0, 0], "pi2": [1, 0, 0, 0], "pi3": [1, 0, 0, 0]}, ids,
                     BINARY, labels)
    assert same == {"keys": ["pi1", "pi2", "pi3"], "same_confusion": True,
                    "same_predictions": True, "differing": []}
    # pi3 swaps one error for another: same confusion matrix, different predictions
    swapped = agreement({"pi1": [1, 0, 0, 0], "pi3": [0, 1, 0, 0]}, ids, BINARY, labels)
    assert swapped["same_confusion"] is True and swapped["same_predictions"] is False
    assert [d["id"] for d in swapped["differing"]] == ["fc/a.wav", "fc/b.wav"]
    assert swapped["differing"][0] == {"id": "fc/a.wav", "label": "first_crack",
                                       "predictions": {"pi1": "first_crack",
                                                       "pi3": "no_first_crack"}}
    other = agreement({"pi1": [1, 0, 0, 0], "pi2": [1, 0, 1, 0]}, ids, BINARY, labels)
    assert other["same_confusion"] is False and other["differing"][0]["id"] == "no/c.wav"
    assert agreement({"pi1": [1, 0, 0, 0], "pi2": [1, 0, 1, 0]}, ids, BINARY)[
        "same_confusion"] is None
    assert prediction_key("pi1", 2, True) == "pi1@T2" and prediction_key("pi1", 2, False) == "pi1"
    results = [{"device": d, "threads": t, "samples": [
        {"id": sid, "label": BINARY[lab], "pred": BINARY[p]}
        for sid, lab, p in zip(ids, labels, preds, strict=True)]}
        for d, t, preds in (("pi1", 1, [1, 0, 0, 0]), ("pi1", 2, [1, 0, 0, 0]),
                            ("pi2", 1, [1, 0, 0, 1]))]
    results[2]["samples"].reverse()  # matched by id, not by position
    out = agreement_from_results(results, BINARY)
    assert out["keys"] == ["pi1@T1", "pi1@T2", "pi2@T1"] and out["compared"] == 4
    assert out["same_confusion"] is False
    assert out["differing"] == [{"id": "no/d.wav", "label": "no_first_crack", "predictions": {
        "pi1@T1": "no_first_crack", "pi1@T2": "no_first_crack", "pi2@T1": "first_crack"}}]
