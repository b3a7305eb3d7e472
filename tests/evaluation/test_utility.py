"""The utility experiment: one classifier per training set, all scored on the same real test set."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from generatect_kedro.evaluation.utility import run_utility_experiment, utility_summary
from generatect_kedro.evaluation.volume_sets import VolumeSet

LABELS = ("a", "b")


def _set(values, labels):
    return VolumeSet([str(i) for i in range(len(values))],
                     [lambda v=v: np.full((2, 4, 4), v, dtype=np.float32) for v in values], np.asarray(labels))


class Brightness(torch.nn.Module):
    """Scores label a by brightness and label b by darkness, times a per-arm sign."""

    def __init__(self, sign):
        super().__init__()
        self.sign = torch.nn.Parameter(torch.tensor(float(sign)))

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3, 4))
        return torch.stack([m, -m], dim=1) * self.sign


def test_each_arm_is_trained_on_its_own_set_and_scored_on_the_same_test_set():
    rng = np.random.default_rng(0)
    test_values = rng.uniform(-1, 1, 40)
    test_labels = np.stack([test_values > 0, rng.random(40) < 0.5], axis=1).astype(np.float32)
    test = _set(test_values, test_labels)
    real = _set([0.5, -0.5, 0.2], [[1, 0], [0, 1], [1, 1]])
    synthetic = _set([0.9, -0.9], [[1, 0], [1, 0]])  # no positive "b": b cannot be learnt from it
    seen = []

    def train(dataset, name):
        seen.append((name, len(dataset)))
        not_trained = {label: "no positive case in the training set"
                       for j, label in enumerate(LABELS) if dataset.labels[:, j].sum() == 0}
        return SimpleNamespace(model=Brightness(-1 if name == "synthetic" else 1), not_trained=not_trained)

    table = run_utility_experiment({"real": (real, 3), "real_plus_synthetic": (real + synthetic, 3),
                                    "synthetic": (synthetic, 0), "empty": (_set([], np.zeros((0, 2))), 0)},
                                   test, LABELS, train)
    assert seen == [("real", 3), ("real_plus_synthetic", 5), ("synthetic", 2)]  # the empty arm is skipped
    means = table[table["label"] == "mean"].set_index("arm")
    rows = table[table["label"] != "mean"].set_index(["arm", "label"])
    expected_a = roc_auc_score(test_labels[:, 0], test_values)
    assert rows.loc[("real", "a"), "auroc"] == pytest.approx(expected_a)
    assert rows.loc[("real", "b"), "auroc"] == pytest.approx(roc_auc_score(test_labels[:, 1], -test_values))
    assert rows.loc[("synthetic", "a"), "auroc"] == pytest.approx(1 - expected_a)  # anti-correlated model
    assert not rows.loc[("synthetic", "b"), "evaluable"] and "training" in rows.loc[("synthetic", "b"), "reason"]
    assert means.loc["synthetic", "auroc"] == pytest.approx(1 - expected_a)  # over its one evaluable label
    assert means.loc["real_plus_synthetic", "synthetic_volumes"] == 2 and means.loc["real", "synthetic_volumes"] == 0
    assert rows.loc[("real_plus_synthetic", "a"), "positives_train"] == 4

    summary = utility_summary(table)
    assert summary["utility/real/mean_auroc"] == pytest.approx(means.loc["real", "auroc"])
    assert summary["utility/synthetic/evaluable_labels"] == 1.0
    assert "utility/synthetic/auroc/b" not in summary
    assert isinstance(table, pd.DataFrame)
