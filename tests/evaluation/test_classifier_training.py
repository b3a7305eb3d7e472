"""Training the abnormality classifier with the shared trainer: weighting, determinism, and that it learns
cardiomegaly and pleural effusion on phantom chests well enough to score them on held-out phantoms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generatect_kedro.cohort.grids import scale_hu
from generatect_kedro.evaluation.classifier_training import (
    VolumeLabelDataset,
    evaluate_classifier,
    label_weights,
    train_classifier,
)
from generatect_kedro.labels import CT_RATE_LABELS
from generatect_kedro.models.classifier import ClassifierConfig
from generatect_kedro.phantom.abnormalities import render_chest, sample_finding

SHAPE, SPACING = (9, 32, 32), (34.0, 11.0, 11.0)  # ~306 mm cranio-caudal, ~352 mm field of view
LEARNT = ("Cardiomegaly", "Pleural effusion")
MODEL = ClassifierConfig(widths=(8, 16, 32), head_width=16, embed_dim=64, dropout=0.1)


def phantom_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n grids in [-1, 1] and their 18 labels; each of `LEARNT` present with probability 1/2, independently."""
    rng = np.random.default_rng(seed)
    volumes, labels = [], np.zeros((n, len(CT_RATE_LABELS)), dtype=np.float32)
    for i in range(n):
        present = [label for label in LEARNT if rng.random() < 0.5]
        labels[i, [CT_RATE_LABELS.index(label) for label in present]] = 1.0
        case_rng = np.random.default_rng([seed, i])
        findings = [sample_finding(label, case_rng) for label in present]
        volumes.append(scale_hu(render_chest(SHAPE, SPACING, findings, case_rng)))
    return np.stack(volumes), labels


def trainer(steps: int, seed: int = 0) -> dict:
    return {"max_steps": steps, "batch_size": 8, "device": "cpu", "seed": seed, "show_progress": False,
            "log_every": 40}


def test_label_weights_by_hand():
    labels = np.zeros((12, 3))
    labels[:3, 0] = 1  # 3 positives, 9 negatives → 3
    labels[:1, 1] = 1  # 1 positive, 11 negatives → 11, capped at 5
    weights, not_trained = label_weights(labels, ["a", "b", "c"], max_pos_weight=5.0)
    assert weights.tolist() == pytest.approx([3.0, 5.0, 1.0])
    assert not_trained == {"c": "no positive case in the training set"}
    weights, not_trained = label_weights(np.ones((4, 1)), ["all"], max_pos_weight=5.0)
    assert weights.tolist() == [1.0] and not_trained == {"all": "no negative case in the training set"}


def test_same_seed_same_model_other_seed_other_model():
    volumes, labels = phantom_set(8, seed=7)
    data = VolumeLabelDataset(volumes, labels)
    small = ClassifierConfig(widths=(4, 8), head_width=8, embed_dim=8)

    def weights(seed: int) -> torch.Tensor:
        out = train_classifier(data, small, None, trainer(3, seed))
        return torch.cat([p.detach().flatten() for p in out.model.parameters()])

    first = weights(0)
    torch.manual_seed(123)  # the global RNG state before the call must not matter
    torch.testing.assert_close(weights(0), first, rtol=0, atol=0)
    assert not torch.allclose(weights(1), first)


def test_classifier_learns_cardiomegaly_and_effusion_on_phantoms():
    train_x, train_y = phantom_set(96, seed=1)
    test_x, test_y = phantom_set(40, seed=2)
    out = train_classifier(VolumeLabelDataset(train_x, train_y), MODEL, {"lr": 2e-3}, trainer(200))
    assert not out.model.training
    assert set(out.not_trained) == set(CT_RATE_LABELS) - set(LEARNT)  # never positive in training
    history = [metrics["train/classifier/loss"] for _, metrics in out.result.history]
    assert history[-1] < 0.5 * history[0]

    report = evaluate_classifier(out.model, test_x, test_y, not_trained=out.not_trained)
    table = report.table.set_index("label")
    assert report.evaluable_labels == 2 and set(report.not_evaluable) == set(out.not_trained)
    assert table.loc["Cardiomegaly", "auroc"] > 0.8, table.loc[list(LEARNT)]
    assert table.loc["Pleural effusion", "auroc"] > 0.8, table.loc[list(LEARNT)]
    assert table.loc[list(LEARNT), "average_precision"].min() > table.loc[list(LEARNT), "prevalence"].max()
