"""The user-facing path: `generatect demo-data`, `generatect ingest`, and `kedro run --env demo` on a copy of
the project, checked against what the phantom generator says it drew."""

from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from click.testing import CliRunner

from generatect_kedro.cli import main, run_kedro
from generatect_kedro.hooks import table_sha256
from generatect_kedro.labels import CT_RATE_LABELS
from generatect_kedro.reports.labeler import LABEL_COLUMNS
from generatect_kedro.utils.identifiers import pseudonym

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Reason codes that ingestion itself must give the broken phantom studies (the others are report-level).
INGESTION_CASES = {
    "truncated", "not_dicom", "no_pixel_data", "localizer", "missing_rescale", "not_ct", "duplicate_slice",
    "missing_slice", "inconsistent_orientation", "undecodable_transfer_syntax", "unsafe_patient_id",
}


def copy_project(destination: Path) -> Path:
    """A throwaway project root (pyproject + conf); the package itself is the installed one."""
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "pyproject.toml", destination / "pyproject.toml")
    shutil.copytree(PROJECT_ROOT / "conf", destination / "conf", ignore=shutil.ignore_patterns("local"))
    (destination / "conf" / "local").mkdir()
    (destination / "src").mkdir()  # Kedro checks a source dir exists; the package is the installed one
    return destination


def identifiers_in(dicom_dir: Path) -> set[str]:
    """Every PatientID and PatientName in an export (what must never leave ingestion)."""
    found = set()
    for path in dicom_dir.rglob("*"):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID", "PatientName"])
        except Exception:  # noqa: BLE001 - junk and truncated files are part of the broken cohort
            continue
        for value in (ds.get("PatientID"), ds.get("PatientName")):
            if value and len(str(value)) >= 4:
                found.add(str(value))
    return found


def assert_no_identifiers(out_dir: Path, secrets: set[str]) -> None:
    for path in out_dir.rglob("*"):
        assert not any(secret in str(path.relative_to(out_dir)) for secret in secrets), path
        if path.is_file():
            payload = path.read_bytes()
            if path.name.endswith(".gz"):
                payload = gzip.decompress(payload)
            for secret in secrets:
                assert secret.encode() not in payload, f"{secret!r} leaked into {path}"


@pytest.fixture(scope="module")
def broken_cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    result = CliRunner().invoke(main, ["demo-data", "--out", str(out), "--patients", "3", "--seed", "7", "--broken"])
    assert result.exit_code == 0, result.output
    return out


def test_cli_ingest_quarantines_each_broken_case_and_accounts_for_every_file(broken_cohort, tmp_path):
    project = copy_project(tmp_path / "project")
    out = tmp_path / "ingested"
    result = CliRunner().invoke(main, [
        "ingest", str(broken_cohort / "dicom"), "--out", str(out), "--project-dir", str(project),
        "--reports", str(broken_cohort / "reports.csv"),
    ])
    assert result.exit_code == 0, result.output

    manifest = pd.read_csv(out / "manifest.csv")
    quarantine = pd.read_csv(out / "quarantine.csv")
    input_files = sum(1 for p in (broken_cohort / "dicom").rglob("*") if p.is_file())
    assert manifest["file_count"].sum() + quarantine["file_count"].sum() == input_files
    assert sorted(p.name for p in (out / "volumes").glob("*.nii.gz")) == sorted(manifest["nifti_file"])

    broken = pd.read_csv(broken_cohort / "broken_manifest.csv", dtype=str)
    expected = set(broken["expected_reason_code"].dropna()) & INGESTION_CASES
    assert expected == INGESTION_CASES  # the generator still makes every case
    assert expected <= set(quarantine["reason_code"])
    file_cases = broken[broken["expected_reason_code"].isin(INGESTION_CASES) & broken["path"].str.contains(r"\.")]
    quarantined_files = dict(zip(quarantine["item"], quarantine["reason_code"]))
    for path, code in zip(file_cases["path"], file_cases["expected_reason_code"]):
        if (broken_cohort / "dicom" / path).is_file():
            assert quarantined_files.get(path) == code, (path, code)
    # The mixed folder holds two valid series: both accepted, nothing quarantined for it.
    good_studies = pd.read_csv(broken_cohort / "phantom_truth.csv", dtype=str)
    assert len(manifest) >= good_studies["broken_case"].isna().sum() + 1

    assert_no_identifiers(out, identifiers_in(broken_cohort / "dicom"))
    assert "1.2.840" not in (out / "manifest.csv").read_text()  # no DICOM UIDs either


# The whole demo path on 10 patients, with the later stages shortened: this checks the wiring (every stage
# runs, registers, hands over to the next, records lineage), not model quality, which the stage tests and
# `make demo` measure. The gates are permissive here for the same reason (gate logic: tests/test_promotion.py).
E2E_OVERRIDES = {
    "transformer": {"trainer": {"max_steps": 30, "checkpoint_every": 30, "validate_every": 30, "log_every": 10},
                    "conditioning": {"num_seeds": 2}},
    "superres": {"trainer": {"max_steps": 10, "checkpoint_every": 10, "validate_every": 10, "log_every": 5},
                 "validation": {"max_volumes": 1}, "evaluation": {"max_volumes": 1},
                 "stages": [{"scale": 2, "sampler": "dpm++2m", "steps": 4, "lowres_noise_level": 0.1,
                             "cond_scale": 1.0, "resize_mode": "nearest", "crop": None}]},
    "evaluation": {"test_splits": ["valid", "test"], "max_train_volumes": 4,
                   "classifier": {"trainer": {"max_steps": 4, "batch_size": 2, "log_every": 2}},
                   "utility": {"unseen": {"max_prompts": 1}}},
    "promotion": {"gates": {
        "generatect-ctvit": [{"metric": "ctvit/val/psnr_gain_db", "op": ">=", "threshold": 3.0}],
        "generatect-transformer": [{"metric": "transformer/val/text_gain", "op": ">", "threshold": -100.0},
                                   {"metric": "evaluation/hu_sanity/generated_volumes", "op": ">=", "threshold": 1}],
        "generatect-superres": [{"metric": "superres/eval/diffusion/psnr_hu", "op": ">", "threshold": 0.0}],
    }},
    "generation": {"default_prompts": [{"age": 65, "sex": "male", "impression": "Cardiomegaly."},
                                       {"age": 58, "sex": "female", "impression": "No pleural effusion."}],
                   "dicom": True},
}


@pytest.mark.slow
def test_demo_run_end_to_end(tmp_path):
    project = copy_project(tmp_path / "project")
    raw = project / "data" / "01_raw"
    result = CliRunner().invoke(main, ["demo-data", "--out", str(raw), "--patients", "10", "--seed", "3", "--broken"])
    assert result.exit_code == 0, result.output

    run_kedro(project, "__default__", "demo", runtime_params=E2E_OVERRIDES)

    data = project / "data"
    cohort = pd.read_csv(data / "03_primary" / "cohort.csv")
    truth = pd.read_csv(raw / "phantom_truth.csv", dtype={"study_id": str})
    truth = truth[truth["broken_case"].isna()]
    truth["study_key"] = [pseudonym(s, "study") for s in truth["study_id"]]
    joined = cohort.merge(truth, on="study_key", how="inner")
    assert len(joined) >= 0.9 * len(truth)
    # The negation-aware labeler reads back exactly what the phantom drew.
    for column, label in zip(LABEL_COLUMNS, CT_RATE_LABELS):
        assert (joined[column].astype(int) == joined[label].astype(int)).all(), label
    assert joined["prompt"].str.match(r"^\d+ years old (male|female): .+").all()

    splits = pd.read_csv(data / "03_primary" / "splits.csv")
    assert splits.groupby("patient_key")["split"].nunique().max() == 1
    assert set(splits["split"]) == {"train", "valid", "test"}
    assert set(splits["volume_id"]) == set(cohort["volume_id"])

    from generatect_kedro.io.grid_volume import GridVolumeDataset

    grids = sorted((data / "04_feature" / "grids_lowres").glob("*.safetensors"))
    assert len(grids) == len(cohort)
    grid = GridVolumeDataset(str(grids[0])).load()
    volume = np.asarray(grid.volume)
    assert volume.shape == (17, 32, 32) and volume.min() >= -1.0 and volume.max() <= 1.0
    assert (data / "08_reporting" / "data_quality" / "data_quality.html").is_file()

    # CT-ViT: trained, validated against the mean-volume baseline, registered, every volume tokenised.
    summary = json.loads((data / "08_reporting" / "ctvit" / "training_summary.json").read_text())
    validation = summary["validation"]
    assert validation["psnr_hu"] > validation["baseline_psnr_hu"] + 3.0, validation
    tokens = pd.read_csv(data / "04_feature" / "ctvit_token_index.csv")
    assert set(tokens["volume_id"]) == set(cohort["volume_id"])
    assert (tokens[["t", "h", "w"]].drop_duplicates().to_numpy() == [[9, 4, 4]]).all()

    with sqlite3.connect(project / "mlflow.db") as db:
        runs = db.execute("select e.name from runs r join experiments e on r.experiment_id = e.experiment_id"
                          ).fetchall()
        params = {k for (k,) in db.execute("select key from params")}
        metrics = {k for (k,) in db.execute("select key from metrics")}
        tags = dict(db.execute("select key, value from tags where key in ('git_commit', 'kedro_env')").fetchall())
        aliases = db.execute("select name, alias from registered_model_aliases").fetchall()
    # One run for the whole `kedro run`, plus a history run per promotion (experiment generatect-promotion).
    assert sorted(name for (name,) in runs if name != "generatect-promotion") == ["generatect-demo"], runs
    assert sum(name == "generatect-promotion" for (name,) in runs) == 4  # 3 components + the generator
    assert any(k.startswith("ingestion.") for k in params) and any(k.startswith("split.") for k in params)
    assert any(k.startswith("data_quality.") for k in metrics)
    assert tags["kedro_env"] == "demo" and tags["git_commit"]
    for model in ("generatect-ctvit", "generatect-transformer", "generatect-superres", "generatect-generator"):
        assert (model, "challenger") in aliases and (model, "champion") in aliases, (model, aliases)
    with sqlite3.connect(project / "mlflow.db") as db:
        data_tags = dict(db.execute("select key, value from tags where key like 'data.%'").fetchall())
    assert data_tags["data.cohort_sha256"] == table_sha256(pd.read_csv(data / "03_primary" / "cohort.csv"))
    assert set(data_tags) == {"data.manifest_sha256", "data.cohort_sha256", "data.splits_sha256"}
    assert any(k.startswith("val/psnr") or "psnr" in k for k in metrics)
    assert_no_identifiers(data / "02_intermediate", identifiers_in(raw / "dicom"))

    # Transformer, super-resolution: trained, reported, registered on the CT-ViT version above.
    transformer = json.loads((data / "08_reporting" / "transformer" / "training_summary.json").read_text())
    assert transformer["steps"] == 30
    conditioning = json.loads((data / "08_reporting" / "transformer" / "conditioning.json").read_text())
    assert set(conditioning["probes"]) == {"cardiomegaly", "pleural_effusion"}
    ctvit_version = json.loads((data / "06_models" / "ctvit" / "model_version.json").read_text())
    assert conditioning["ctvit"]["version"] == ctvit_version["version"]
    evaluation = json.loads((data / "08_reporting" / "superres" / "evaluation.json").read_text())
    assert {"diffusion", "trilinear"} <= set(evaluation["methods"]) and evaluation["scale"] == 2

    # Evaluation before promotion: report, DVC metrics, and the numbers on the evaluated versions (a gate reads one).
    metrics = json.loads((data / "08_reporting" / "evaluation" / "metrics.json").read_text())
    assert metrics["evaluation/hu_sanity/generated_volumes"] >= 1 and "evaluation/fvd_3d/classifier" in metrics
    assert "## Text alignment" in (data / "08_reporting" / "evaluation" / "report.md").read_text()
    assert (data / "08_reporting" / "evaluation" / "montage.png").is_file()
    assert "evaluation/utility/synthetic/mean_auroc" in metrics or \
        "synthetic" in pd.read_csv(data / "08_reporting" / "evaluation" / "utility.csv")["arm"].tolist()

    # Promotion, then generation with the champions: NIfTI + sidecar + preview + DICOM, lineage verified.
    promotion = json.loads((data / "08_reporting" / "promotion" / "promotion.json").read_text())
    assert promotion["evaluation_metrics"] == metrics
    gate = promotion["models"]["generatect-transformer"]["gates"][1]
    assert gate["metric"] == "evaluation/hu_sanity/generated_volumes" and gate["source"].startswith("version tag")
    assert sorted(promotion["summary"]["promoted"]) == ["generatect-ctvit", "generatect-superres",
                                                        "generatect-transformer"]
    generator = json.loads((data / "06_models" / "generator" / "model_version.json").read_text())
    assert generator["components"]["transformer"]["version"] == promotion["models"]["generatect-transformer"]["version"]
    generator_promotion = json.loads((data / "08_reporting" / "generation" / "generator_promotion.json").read_text())
    assert generator_promotion["models"]["generatect-generator"]["status"] == "promoted"
    generated = data / "07_model_output" / "generated"
    sidecars = sorted(generated.glob("*.json"))
    assert len(sidecars) == 2
    record = json.loads(sidecars[0].read_text())
    assert record["models"]["transformer"]["version"] == promotion["models"]["generatect-transformer"]["version"]
    assert record["models"]["ctvit"]["weights_sha256"] == ctvit_version["weights_sha256"]
    volume = nib.load(generated / record["volume"]["nifti"])
    assert volume.get_data_dtype() == np.int16 and volume.shape[2] == 17
    assert (generated / record["volume"]["dicom"]["folder"]).is_dir()
    result = CliRunner().invoke(main, ["lineage", str(generated / record["volume"]["nifti"]),
                                       "--project-dir", str(project), "--env", "demo"])
    assert result.exit_code == 0, result.output
    assert "VERIFIED" in result.output and "MISMATCH" not in result.output
    secrets = identifiers_in(raw / "dicom")
    assert not any(secret in result.output for secret in secrets)
    assert_no_identifiers(generated, secrets)
    assert_no_identifiers(data / "07_model_output" / "evaluation", secrets)
