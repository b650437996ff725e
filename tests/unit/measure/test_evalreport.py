"""The eval report's words and counts on constructed data: the agreement statement in each case
(agree, same matrix but different samples, different matrices, one result), FP/FN for binary and
multi-class results."""

from __future__ import annotations

from orchestrator.measure.evalmetrics import agreement_from_results
from orchestrator.measure.evalreport import agreement_lines, fp_fn

LABELS = ["no", "yes"]


def result(device: str, preds: list[str], threads: int = 1) -> dict:
    truth = ["no", "yes", "yes", "no"]
    return {"device": device, "threads": threads,
            "samples": [{"id": f"s{i}", "label": t, "pred": p}
                        for i, (t, p) in enumerate(zip(truth, preds, strict=True))]}


def test_agreement_statements() -> None:
    same = agreement_from_results([result("a", ["no", "yes", "no", "no"]),
                                   result("b", ["no", "yes", "no", "no"])], LABELS)
    assert agreement_lines(same) == [
        "all 2 devices produced the same confusion matrix (and the same prediction on all 4 "
        "samples)"]
    swapped = agreement_from_results([result("a", ["no", "yes", "no", "no"]),
                                      result("b", ["no", "no", "yes", "no"])], LABELS)
    assert agreement_lines(swapped) == [
        "all 2 devices produced the same confusion matrix, but predictions differ on 2 samples:",
        "  s1 (label yes): a -> yes, b -> no", "  s2 (label yes): a -> no, b -> yes"]
    apart = agreement_from_results([result("a", ["no", "yes", "no", "no"], 1),
                                    result("a", ["yes", "yes", "no", "no"], 2)], LABELS)
    assert agreement_lines(apart) == [
        "the 2 results did not all produce the same confusion matrix: predictions differ on 1 "
        "sample:", "  s0 (label no): a@T1 -> no, a@T2 -> yes"]
    one = agreement_from_results([result("a", ["no"] * 4)], LABELS)
    assert agreement_lines(one) == ["agreement: only one result (a), nothing to compare"]
    assert "nothing to compare" in agreement_lines(None)[0]


def test_false_positives_and_negatives() -> None:
    binary = {"mode": "binary", "positive": {"index": 1, "name": "yes"},
              "confusion_matrix": [[5, 2], [3, 7]]}
    assert fp_fn(binary) == (2, 3)
    flipped = dict(binary, positive={"index": 0, "name": "no"})
    assert fp_fn(flipped) == (3, 2)
    multi = {"mode": "multiclass", "positive": None,
             "confusion_matrix": [[4, 1, 0], [0, 3, 2], [1, 0, 5]]}
    assert fp_fn(multi) == (4, 4)
