"""Per-label AUROC and average precision of a multi-label classifier, as the paper's supplementary tables report.

A label is *evaluable* only when the evaluated set holds both a positive and a negative case (AUROC and AP
are undefined otherwise) and, optionally, when the classifier saw positives in training (a label it never
learnt would score chance and drag the mean down for a reason that is not the model's). Non-evaluable labels
keep a row with NaN scores, `evaluable=False` and the reason, and are left out of the means, whose label
count is reported alongside, so "mean AUROC 0.71 over 12 of 18 labels" is never read as over 18.

AP is scikit-learn's `average_precision_score` (the step-wise sum Σ (R_n − R_{n−1}) P_n, no interpolation);
AUROC is `roc_auc_score` (ties count one half).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from generatect_kedro.labels import CT_RATE_LABELS

__all__ = ["ClassificationReport", "classification_report"]

TABLE_COLUMNS = ("label", "positives", "negatives", "prevalence", "evaluable", "reason", "auroc",
                 "average_precision")


@dataclass
class ClassificationReport:
    """One row per label (`table`, columns `TABLE_COLUMNS`) plus the means over the evaluable labels."""

    table: pd.DataFrame
    mean_auroc: float  # NaN when no label is evaluable
    mean_average_precision: float
    evaluable_labels: int
    total_labels: int
    not_evaluable: dict[str, str] = field(default_factory=dict)  # label → reason

    def summary(self, prefix: str = "") -> dict[str, float]:
        """Flat floats for MLflow (`<prefix>mean_auroc`, …, `<prefix>auroc/<label>`); NaN rows are skipped."""
        out = {f"{prefix}mean_auroc": self.mean_auroc, f"{prefix}mean_average_precision": self.mean_average_precision,
               f"{prefix}evaluable_labels": float(self.evaluable_labels)}
        for row in self.table.itertuples(index=False):
            if row.evaluable:
                out[f"{prefix}auroc/{row.label}"] = float(row.auroc)
                out[f"{prefix}average_precision/{row.label}"] = float(row.average_precision)
        return out


def classification_report(y_true: np.ndarray, scores: np.ndarray, label_names: Sequence[str] = CT_RATE_LABELS,
                          *, not_trained: Mapping[str, str] | None = None) -> ClassificationReport:
    """Per-label AUROC/AP of `scores` (n, L) (probabilities or logits: only the order matters) against the
    binary `y_true` (n, L).

    `not_trained` maps labels the classifier could not learn (e.g. no positives in its training set) to the
    reason; they are reported as not evaluable whatever the evaluated set holds.
    """
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != scores.shape:
        raise ValueError(f"y_true and scores must both be (n, labels), got {y_true.shape} and {scores.shape}")
    if y_true.shape[1] != len(label_names):
        raise ValueError(f"{y_true.shape[1]} label columns but {len(label_names)} label names")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1")
    if not np.isfinite(scores).all():
        raise ValueError("scores hold NaN or infinite values")
    not_trained = dict(not_trained or {})
    unknown = sorted(set(not_trained) - set(label_names))
    if unknown:
        raise ValueError(f"not_trained names unknown label(s): {unknown}")
    y_true = y_true.astype(np.int64)
    rows = []
    for j, label in enumerate(label_names):
        truth, score = y_true[:, j], scores[:, j]
        positives = int(truth.sum())
        negatives = int(len(truth) - positives)
        if label in not_trained:
            reason = not_trained[label]
        elif positives == 0:
            reason = "no positive case in the evaluated set"
        elif negatives == 0:
            reason = "no negative case in the evaluated set"
        else:
            reason = ""
        evaluable = not reason
        auroc = float(roc_auc_score(truth, score)) if evaluable else float("nan")
        ap = float(average_precision_score(truth, score)) if evaluable else float("nan")
        rows.append({"label": label, "positives": positives, "negatives": negatives,
                     "prevalence": positives / len(truth) if len(truth) else float("nan"),
                     "evaluable": evaluable, "reason": reason, "auroc": auroc, "average_precision": ap})
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    good = table[table["evaluable"]]
    return ClassificationReport(
        table=table,
        mean_auroc=float(good["auroc"].mean()) if len(good) else float("nan"),
        mean_average_precision=float(good["average_precision"].mean()) if len(good) else float("nan"),
        evaluable_labels=int(len(good)), total_labels=len(label_names),
        not_evaluable={row.label: row.reason for row in table.itertuples(index=False) if not row.evaluable})
