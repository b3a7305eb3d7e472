"""Per-label AUROC / AP against hand-computed values, and the handling of labels that cannot be scored."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from generatect_kedro.evaluation.classification_metrics import TABLE_COLUMNS, classification_report


def _columns(*pairs):
    """(truth, scores) per label → (n, L) arrays."""
    return np.array([p[0] for p in pairs]).T, np.array([p[1] for p in pairs], dtype=float).T


def test_hand_computed_auroc_and_ap():
    # sorted by score: 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-)
    # AUROC: of the 4 (pos, neg) pairs the positive wins 3 → 0.75
    # AP: precision at each positive's rank: 1/1 and 2/3 → (1 + 2/3) / 2
    y, s = _columns(([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]))
    report = classification_report(y, s, ["A"])
    row = report.table.iloc[0]
    assert row.auroc == pytest.approx(0.75)
    assert row.average_precision == pytest.approx((1 + 2 / 3) / 2)
    assert (row.positives, row.negatives, row.prevalence) == (2, 2, 0.5)


def test_perfect_inverted_and_tied_scores():
    y, s = _columns(([1, 0, 1, 0, 0], [0.9, 0.1, 0.8, 0.3, 0.2]),  # perfect
                    ([1, 0, 1, 0, 0], [0.1, 0.9, 0.2, 0.8, 0.7]),  # inverted: AUROC 0, AP: positives ranked 4, 5
                    ([1, 0, 1, 0, 0], [0.5] * 5))  # all tied: AUROC 1/2, AP = prevalence
    table = classification_report(y, s, ["perfect", "inverted", "tied"]).table.set_index("label")
    assert table.loc["perfect", ["auroc", "average_precision"]].tolist() == pytest.approx([1.0, 1.0])
    assert table.loc["inverted", "auroc"] == pytest.approx(0.0)
    assert table.loc["inverted", "average_precision"] == pytest.approx((1 / 4 + 2 / 5) / 2)
    assert table.loc["tied", ["auroc", "average_precision"]].tolist() == pytest.approx([0.5, 0.4])


def test_one_class_labels_are_reported_and_left_out_of_the_means():
    y, s = _columns(([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]),
                    ([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4]),
                    ([1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4]),
                    ([1, 0, 1, 0], [0.9, 0.1, 0.8, 0.3]))
    report = classification_report(y, s, ["A", "no-pos", "no-neg", "B"])
    assert list(report.table.columns) == list(TABLE_COLUMNS)
    assert report.evaluable_labels == 2 and report.total_labels == 4
    assert report.mean_auroc == pytest.approx((0.75 + 1.0) / 2)
    assert report.mean_average_precision == pytest.approx(((1 + 2 / 3) / 2 + 1.0) / 2)
    bad = report.table.set_index("label").loc[["no-pos", "no-neg"]]
    assert not bad.evaluable.any() and bad.auroc.isna().all() and bad.average_precision.isna().all()
    assert report.not_evaluable == {"no-pos": "no positive case in the evaluated set",
                                    "no-neg": "no negative case in the evaluated set"}
    summary = report.summary("test/")
    assert "test/auroc/A" in summary and "test/auroc/no-pos" not in summary
    assert all(math.isfinite(v) for v in summary.values())


def test_not_trained_labels_are_not_evaluable_even_with_both_classes():
    y, s = _columns(([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), ([1, 0, 1, 0], [0.9, 0.1, 0.8, 0.3]))
    report = classification_report(y, s, ["A", "B"], not_trained={"B": "no positive case in the training set"})
    assert report.evaluable_labels == 1 and report.mean_auroc == pytest.approx(0.75)
    assert report.not_evaluable == {"B": "no positive case in the training set"}


def test_no_evaluable_label_gives_nan_means():
    report = classification_report(np.zeros((3, 2), int), np.zeros((3, 2)), ["A", "B"])
    assert report.evaluable_labels == 0 and math.isnan(report.mean_auroc) and math.isnan(report.mean_average_precision)


def test_matches_sklearn_on_random_multilabel_data():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 18)) < 0.3).astype(int)
    s = y * 0.3 + rng.random((60, 18))
    report = classification_report(y, s)
    assert report.evaluable_labels == 18
    np.testing.assert_allclose(report.table.auroc, [roc_auc_score(y[:, j], s[:, j]) for j in range(18)])
    np.testing.assert_allclose(report.table.average_precision,
                               [average_precision_score(y[:, j], s[:, j]) for j in range(18)])
    assert 0.6 < report.mean_auroc < 0.95  # the planted signal is seen, the noise keeps it imperfect


@pytest.mark.parametrize("y, s, names, match", [
    (np.zeros((3, 2)), np.zeros((3, 1)), ["A", "B"], "both be"),
    (np.zeros((3, 2)), np.zeros((3, 2)), ["A"], "label names"),
    (np.full((3, 1), 2), np.zeros((3, 1)), ["A"], "only 0 and 1"),
    (np.zeros((3, 1)), np.full((3, 1), np.nan), ["A"], "NaN"),
])
def test_rejects_malformed_inputs(y, s, names, match):
    with pytest.raises(ValueError, match=match):
        classification_report(y, s, names)
