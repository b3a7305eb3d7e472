"""Text alignment on constructed cases: AUROC against prompt labels, the real ceiling, shared labels only."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from generatect_kedro.evaluation.alignment import text_alignment

LABELS = ("a", "b", "c")


def _labels(rng, n):
    y = (rng.random((n, 3)) < 0.5).astype(np.float32)
    y[0], y[1] = 1, 0  # both classes in every column
    return y


def test_volumes_that_show_their_prompt_score_one_and_noise_scores_chance():
    rng = np.random.default_rng(0)
    y_gen, y_real = _labels(rng, 400), _labels(rng, 60)
    real_scores = y_real * 0.6 + rng.random(y_real.shape) * 0.5  # imperfect ceiling
    perfect = text_alignment(y_gen.copy(), y_gen, real_scores, y_real, LABELS)
    assert perfect.mean_auroc_generated == 1.0
    assert perfect.common_labels == list(LABELS)
    expected_real = np.mean([roc_auc_score(y_real[:, j], real_scores[:, j]) for j in range(3)])
    assert perfect.mean_auroc_real == pytest.approx(expected_real)
    assert perfect.auroc_ratio == pytest.approx((1.0 - 0.5) / (expected_real - 0.5))

    noise = text_alignment(rng.random(y_gen.shape), y_gen, real_scores, y_real, LABELS)
    assert abs(noise.mean_auroc_generated - 0.5) < 0.08
    assert abs(noise.auroc_ratio) < 0.3
    inverted = text_alignment(1 - y_gen, y_gen, real_scores, y_real, LABELS)
    assert inverted.mean_auroc_generated == 0.0 and inverted.auroc_ratio < 0


def test_means_use_only_labels_evaluable_in_both_sets():
    rng = np.random.default_rng(1)
    y_gen, y_real = _labels(rng, 50), _labels(rng, 50)
    y_gen[:, 2] = 0  # no generated prompt asked for "c"
    scores_gen = np.where(y_gen > 0, 0.9, 0.1)
    scores_gen[:, 1] = 1 - scores_gen[:, 1]  # "b" anti-aligned
    report = text_alignment(scores_gen, y_gen, y_real, y_real, LABELS, not_trained={"a": "never seen"})
    assert report.common_labels == ["b"]  # a: not trained; c: no generated positive
    assert report.mean_auroc_generated == 0.0 and report.mean_auroc_real == 1.0
    summary = report.summary()
    assert summary["text_alignment/common_labels"] == 1.0 and summary["text_alignment/auroc/b"] == 0.0
    assert "text_alignment/auroc/c" not in summary


def test_no_shared_label_gives_nan_not_a_number_from_nowhere():
    y = np.zeros((4, 3), dtype=np.float32)
    report = text_alignment(np.zeros((4, 3)), y, np.zeros((4, 3)), y, LABELS)
    assert report.common_labels == [] and np.isnan(report.mean_auroc_generated) and np.isnan(report.auroc_ratio)
