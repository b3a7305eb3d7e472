"""The downstream-utility experiment (GenerateCT supplementary Tables 1 and 2).

Does synthetic data help a classifier that will meet real patients? The same classifier (same configs and
seed) is trained on several training sets ("arms") and every model is scored on the same real test set:

    real                 the real training volumes
    real_plus_synthetic       plus as many synthetic volumes from the training reports' prompts (Table 1)
    synthetic            synthetic only, `multiple` × the real count (Table 1's last rows)
    real_plus_unseen          real plus volumes from label combinations absent from training (Table 2)

An arm's synthetic volumes carry the labels of their prompts. A label without positives in an arm's training
set is not evaluable for that arm (`classification_report`'s `not_trained`), so a mean never averages in a
label the model never saw; the table shows the evaluable count beside each mean.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from generatect_kedro.evaluation.classification_metrics import classification_report
from generatect_kedro.evaluation.volume_sets import VolumeSet, predict_scores

LOG = logging.getLogger(__name__)

__all__ = ["ARM_COLUMNS", "run_utility_experiment", "utility_summary"]

ARM_COLUMNS = ("arm", "train_volumes", "real_volumes", "synthetic_volumes", "label", "positives_train",
               "evaluable", "reason", "auroc", "average_precision")


def run_utility_experiment(arms: Mapping[str, tuple[VolumeSet, int]], test: VolumeSet, label_names: Sequence[str],
                           train: Callable[[VolumeSet, str], Any], *, batch_size: int = 4) -> pd.DataFrame:
    """Train one classifier per arm (`train(dataset, name)` → `ClassifierTrainingOutput`) and score each on `test`.

    `arms` maps the arm name to (training set, how many of its volumes are real). Returns one row per (arm,
    label) with `ARM_COLUMNS`, plus a row per arm with label "mean" (means over the evaluable labels).
    """
    rows = []
    for name, (dataset, real_count) in arms.items():
        if len(dataset) == 0:
            LOG.warning("utility experiment: arm %r has no training volumes; skipped", name)
            continue
        LOG.info("utility experiment: training the %r classifier on %d volumes (%d real)", name, len(dataset),
                 real_count)
        out = train(dataset, name)
        report = classification_report(test.labels, predict_scores(out.model, test, batch_size), label_names,
                                       not_trained=out.not_trained)
        positives = dataset.labels.sum(axis=0)
        common = {"arm": name, "train_volumes": len(dataset), "real_volumes": int(real_count),
                  "synthetic_volumes": len(dataset) - int(real_count)}
        for j, row in enumerate(report.table.itertuples(index=False)):
            rows.append({**common, "label": row.label, "positives_train": int(positives[j]),
                         "evaluable": bool(row.evaluable), "reason": row.reason, "auroc": row.auroc,
                         "average_precision": row.average_precision})
        rows.append({**common, "label": "mean", "positives_train": int(positives.sum()),
                     "evaluable": report.evaluable_labels > 0,
                     "reason": f"{report.evaluable_labels} of {report.total_labels} labels evaluable",
                     "auroc": report.mean_auroc, "average_precision": report.mean_average_precision})
    return pd.DataFrame(rows, columns=list(ARM_COLUMNS))


def utility_summary(table: pd.DataFrame, prefix: str = "utility/") -> dict[str, float]:
    """Flat metrics per arm: mean AUROC/AP, evaluable labels, and the per-label AUROCs."""
    out: dict[str, float] = {}
    for arm, part in table.groupby("arm", sort=False):
        mean = part[part["label"] == "mean"].iloc[0]
        labels = part[(part["label"] != "mean") & part["evaluable"]]
        out[f"{prefix}{arm}/mean_auroc"] = float(mean["auroc"])
        out[f"{prefix}{arm}/mean_average_precision"] = float(mean["average_precision"])
        out[f"{prefix}{arm}/evaluable_labels"] = float(len(labels))
        for row in labels.itertuples(index=False):
            out[f"{prefix}{arm}/auroc/{row.label}"] = float(row.auroc)
    return {k: v for k, v in out.items() if np.isfinite(v)}
