import numpy as np
import pandas as pd
import pytest

from generatect_kedro.cohort.split import split_patients, summarise_splits
from generatect_kedro.reports.labeler import LABEL_COLUMNS

PARAMS = {"seed": 7, "fractions": {"train": 0.8, "valid": 0.1, "test": 0.1}}


def synthetic_cohort(patients=500, seed=0):
    """Patients with 1-3 volumes; label prevalences from 2 % to 50 %; labels vary a little per volume."""
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.02, 0.5, len(LABEL_COLUMNS))
    rows = []
    for p in range(patients):
        base = rng.random(len(LABEL_COLUMNS)) < prevalence
        for v in range(int(rng.integers(1, 4))):
            labels = base & (rng.random(len(LABEL_COLUMNS)) > 0.1)
            rows.append({"volume_id": f"vol-{p:04d}-{v}", "patient_key": f"pat-{p:04d}", **dict(zip(LABEL_COLUMNS, labels.astype(int)))})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def cohort():
    return synthetic_cohort()


@pytest.fixture(scope="module")
def splits(cohort):
    return split_patients(cohort, PARAMS)


def test_every_volume_gets_one_split_and_no_patient_is_shared(cohort, splits):
    assert list(splits.columns) == ["volume_id", "patient_key", "split"]
    assert sorted(splits["volume_id"]) == sorted(cohort["volume_id"])
    assert set(splits["split"]) == {"train", "valid", "test"}
    assert (splits.groupby("patient_key")["split"].nunique() == 1).all()


def test_deterministic_under_row_shuffling(cohort, splits):
    shuffled = cohort.sample(frac=1.0, random_state=3).reset_index(drop=True)
    again = split_patients(shuffled, PARAMS)
    pd.testing.assert_frame_equal(again, splits)


def test_fractions_within_tolerance(splits):
    per_patient = splits.drop_duplicates("patient_key")["split"].value_counts(normalize=True)
    for name, fraction in PARAMS["fractions"].items():
        assert abs(per_patient[name] - fraction) < 0.01, per_patient.to_dict()


def test_label_prevalence_balanced_across_splits(cohort, splits):
    patient_labels = cohort.groupby("patient_key")[list(LABEL_COLUMNS)].max()
    split_of = splits.drop_duplicates("patient_key").set_index("patient_key")["split"]
    overall = patient_labels.mean()
    worst = {n: float((patient_labels[split_of.reindex(patient_labels.index) == n].mean() - overall).abs().max())
             for n in PARAMS["fractions"]}
    # 50 patients per small split: one patient is 0.02; a random split is typically off by 0.08-0.15
    assert max(worst.values()) < 0.05, worst
    # and a plain seeded split of the same data is clearly worse
    plain = split_patients(cohort, {**PARAMS, "stratify": False})
    plain_of = plain.drop_duplicates("patient_key").set_index("patient_key")["split"]
    plain_worst = max(float((patient_labels[plain_of.reindex(patient_labels.index) == n].mean() - overall).abs().max())
                      for n in PARAMS["fractions"])
    assert max(worst.values()) < plain_worst


def test_different_seed_different_split(cohort, splits):
    other = split_patients(cohort, {**PARAMS, "seed": 8})
    changed = (other.set_index("volume_id")["split"] != splits.set_index("volume_id")["split"]).mean()
    assert changed > 0.1


def test_split_names_are_configurable_and_zero_fraction_is_empty():
    cohort = synthetic_cohort(60, seed=1)
    out = split_patients(cohort, {"seed": 1, "fractions": {"fit": 0.5, "tune": 0.5, "holdout": 0.0}})
    assert set(out["split"]) == {"fit", "tune"}


@pytest.mark.parametrize("fractions", [{"train": 0.8, "valid": 0.1}, {"train": 1.2, "valid": -0.2}])
def test_bad_fractions_are_rejected(fractions):
    with pytest.raises(ValueError):
        split_patients(synthetic_cohort(10), {"seed": 1, "fractions": fractions})


def test_summary(cohort, splits):
    table, metrics = summarise_splits(cohort, splits, PARAMS)
    assert list(table["split"]) == ["train", "valid", "test"]
    assert table["volumes"].sum() == len(cohort)
    assert table["patients"].sum() == cohort["patient_key"].nunique()
    assert "prevalence_pleural_effusion" in table.columns
    assert metrics["valid.patients"]["value"] == float(table.loc[1, "patients"])
