"""Run the split pipeline with SequentialRunner on the project's catalog entries (tmp paths, no MLflow)."""

from __future__ import annotations


import numpy as np
import pandas as pd
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from project_config import catalog_config, parameters

from generatect_kedro.pipelines.split import create_pipeline
from generatect_kedro.reports.labeler import LABEL_COLUMNS



def cohort(patients: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    rows = []
    for p in range(patients):
        labels = (rng.random(len(LABEL_COLUMNS)) < 0.2).astype(int)
        for v in range(1 + p % 3):
            rows.append({"volume_id": f"vol-{p:03d}-{v}", "patient_key": f"pat-{p:03d}", "age": 50, "sex": "male",
                         "prompt": "x", **dict(zip(LABEL_COLUMNS, labels))})
    return pd.DataFrame(rows)


def test_split_pipeline_writes_splits_and_summary(tmp_path):
    params = parameters("split")
    catalog = DataCatalog.from_config(catalog_config("split", tmp_path))
    catalog["cohort"] = MemoryDataset(cohort())
    catalog["params:split"] = MemoryDataset(params)
    SequentialRunner().run(create_pipeline(), catalog)

    splits = pd.read_csv(tmp_path / "data/03_primary/splits.csv", dtype=str)
    assert list(splits.columns) == ["volume_id", "patient_key", "split"]
    assert len(splits) == len(cohort())
    assert (splits.groupby("patient_key")["split"].nunique() == 1).all()
    assert set(splits["split"]) == set(params["fractions"])
    summary = pd.read_csv(tmp_path / "data/08_reporting/split_summary.csv")
    assert summary["patients"].sum() == 120 and summary["volumes"].sum() == len(splits)
    metrics = catalog.load("split_metrics")
    assert metrics["train.patients"]["value"] == float(summary.set_index("split").loc["train", "patients"])
