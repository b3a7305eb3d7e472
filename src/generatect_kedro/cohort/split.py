"""Patient-level train/valid/test split with label-balanced (iterative) stratification.

Every volume of a patient lands in the same split (no patient leaks across splits). Patients are
assigned by the iterative stratification of Sechidis et al. (2011) on patient-level label vectors (a
patient has a label if any of their volumes has it): the rarest remaining label is placed first, each
patient goes to the split that most lacks that label, then the split that most lacks patients. Every
ordering and tie-break comes from a seeded hash of the patient key, so the split depends only on the set
of (patient, labels) and the seed, never on row order. Fractions are in patients, not volumes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from generatect_kedro.reports.labeler import LABEL_COLUMNS

logger = logging.getLogger(__name__)

DEFAULT_FRACTIONS = {"train": 0.8, "valid": 0.1, "test": 0.1}


def _hash(seed: int, *parts: object) -> int:
    text = "\x1f".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _fractions(params: Mapping[str, Any]) -> dict[str, float]:
    fractions = {str(k): float(v) for k, v in dict(params.get("fractions", DEFAULT_FRACTIONS)).items()}
    if not fractions or any(v < 0 for v in fractions.values()):
        raise ValueError(f"split fractions must be non-negative, got {fractions}")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {total:.6f} ({fractions})")
    return fractions


def stratified_assignment(
    patients: Sequence[str], labels: np.ndarray, fractions: Mapping[str, float], seed: int
) -> dict[str, str]:
    """patient → split name; `labels` is (patients, labels) 0/1 (zero columns: a plain seeded split).

    Patients are visited rarest label first (ties: seeded hash), and each goes to the split whose
    chi-square deviation from its targets, Σ (count - target)² / target over the patient count and the
    labels this patient has, grows least (ties: seeded hash). Targets are fraction × totals.
    """
    names = list(fractions)
    frac = np.array([fractions[n] for n in names], dtype=np.float64)
    labels = np.asarray(labels, dtype=bool).reshape(len(patients), -1)
    totals = labels.sum(axis=0)
    target, target_label = frac * len(patients), np.outer(frac, totals)
    count, count_label = np.zeros(len(names)), np.zeros((len(names), labels.shape[1]))
    rarest = np.where(labels, totals[None, :], np.iinfo(np.int64).max).min(axis=1) if labels.shape[1] else np.zeros(len(patients))
    order = sorted(range(len(patients)), key=lambda i: (rarest[i], _hash(seed, patients[i]), patients[i]))
    usable = [j for j in range(len(names)) if frac[j] > 0]
    assignment: dict[str, str] = {}
    for i in order:
        has = labels[i]

        def growth(j: int) -> float:
            size = ((count[j] + 1 - target[j]) ** 2 - (count[j] - target[j]) ** 2) / target[j]
            t, c = target_label[j, has], count_label[j, has]
            return float(size + (((c + 1 - t) ** 2 - (c - t) ** 2) / np.maximum(t, 1.0)).sum())

        j = min(usable, key=lambda j: (growth(j), _hash(seed, patients[i], names[j])))
        assignment[patients[i]] = names[j]
        count[j] += 1
        count_label[j, has] += 1
    return assignment


def split_patients(cohort: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """(volume_id, patient_key, split) for every cohort volume; see the module docstring for the method."""
    fractions = _fractions(params)
    seed = int(params.get("seed", 0))
    label_columns = [c for c in (params.get("label_columns") or LABEL_COLUMNS) if c in cohort.columns]
    if not params.get("stratify", True):
        label_columns = []
    frame = cohort[["volume_id", "patient_key", *label_columns]].copy()
    frame["patient_key"] = frame["patient_key"].astype(str)
    if frame["patient_key"].isna().any() or frame["volume_id"].duplicated().any():
        raise ValueError("split needs unique volume ids and a patient key for every volume")
    per_patient = (
        frame.groupby("patient_key", sort=True)[label_columns].max()
        if label_columns
        else pd.DataFrame(index=sorted(frame["patient_key"].unique()))
    )
    assignment = stratified_assignment(
        list(per_patient.index), per_patient.to_numpy(dtype=np.int64), fractions, seed
    )
    splits = frame[["volume_id", "patient_key"]].assign(split=frame["patient_key"].map(assignment))
    splits = splits.sort_values("volume_id").reset_index(drop=True)
    counts = splits.drop_duplicates("patient_key")["split"].value_counts()
    logger.info("split %d patients: %s", len(per_patient), {n: int(counts.get(n, 0)) for n in fractions})
    return splits


def summarise_splits(
    cohort: pd.DataFrame, splits: pd.DataFrame, params: Mapping[str, Any]
) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Per split: patients, volumes, patient fraction and label prevalence (table + MLflow metrics)."""
    names = list(_fractions(params))
    label_columns = [c for c in (params.get("label_columns") or LABEL_COLUMNS) if c in cohort.columns]
    joined = cohort[["volume_id", *label_columns]].merge(splits, on="volume_id", how="inner")
    total_patients = max(joined["patient_key"].nunique(), 1)
    rows = []
    for name in names:
        part = joined[joined["split"] == name]
        row = {
            "split": name,
            "patients": int(part["patient_key"].nunique()),
            "volumes": int(len(part)),
            "patient_fraction": part["patient_key"].nunique() / total_patients,
        }
        row.update({f"prevalence_{c}": float(part[c].mean()) if len(part) else 0.0 for c in label_columns})
        rows.append(row)
    table = pd.DataFrame(rows)
    metrics = {
        f"{r['split']}.{k}": {"value": float(v), "step": 0}
        for r in rows
        for k, v in r.items()
        if k in ("patients", "volumes", "patient_fraction")
    }
    return table, metrics
