"""`generatect lineage`: the chain from a generated file back to models, training runs and data, re-verified."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from test_end_to_end import assert_no_identifiers, identifiers_in
from test_registry import mlflow_db  # noqa: F401 - the temporary SQLite MLflow fixture

from generatect_kedro import registry
from generatect_kedro.cli import main
from generatect_kedro.generation.outputs import write_generated_volume
from generatect_kedro.utils.atomic import file_sha256
from generatect_kedro.volume import HUVolume, affine_from_spacing

ROLES = {"ctvit": "generatect-ctvit", "transformer": "generatect-transformer", "superres": "generatect-superres"}
RUN_TAGS = {"git_commit": "0123456789abcdef", "git_dirty": "False", "dvc_lock_sha256": "d" * 64,
            "kedro_env": "demo", "data.cohort_sha256": "c" * 64, "data.splits_sha256": "5" * 64}


@pytest.fixture(scope="module")
def registered(mlflow_db, tmp_path_factory):  # noqa: F811
    """Three tiny registered models, each from its own 'training' run with params, metrics and lineage tags."""
    import mlflow

    weights = tmp_path_factory.mktemp("weights")
    models = {}
    for index, (role, name) in enumerate(ROLES.items()):
        path = weights / f"{role}.safetensors"
        save_file({"w": torch.full((2, 2), float(index))}, str(path))
        with mlflow.start_run(run_name=f"train-{role}") as run:
            mlflow.log_params({"optimizer.lr": 1e-4, "train.batch_size": 2, "train.steps": 3, "unrelated": "x"})
            mlflow.log_metrics({"train.loss": 0.5 - index / 10, "val.psnr": 20.0 + index})
            mlflow.set_tags(RUN_TAGS)
            info = registry.register_model(name, path, {"kind": role}, {**RUN_TAGS, "training_run_id": run.info.run_id})
        models[role] = {"name": name, "version": info["version"], "requested": "challenger",
                        "run_id": info["run_id"], "training_run_id": run.info.run_id,
                        "weights_sha256": info["weights_sha256"], "model_uri": info["model_uri"]}
    return f"sqlite:///{mlflow_db / 'mlflow.db'}", models


def _record(models: dict) -> dict:
    return {
        "schema": "generatect-lineage/1",
        "item": {"item_id": "row0-1", "row": 0, "index_in_row": 1, "prompt": "bilateral pleural effusion",
                 "seed": 42, "slice_count": 8},
        "sampler": {"transformer": {"steps": 4, "cond_scale": 3.0},
                    "superres": [{"sampler": "ddpm", "steps": 2, "cond_scale": 5.0}], "precision": "fp32"},
        "models": models,
        "text_encoder": {"path": "microsoft/BiomedVLP-CXR-BERT-specialized", "kind": "cxr-bert",
                         "fingerprint": "f" * 16},
        "geometry": {"spacing_mm": [0.75, 0.75, 1.5], "orientation": "RAS", "source": "config"},
        "code": {"package_version": "0.1.0", "git_commit": "0123456789abcdef", "git_dirty": False},
        "data": {"dvc_lock_sha256": "d" * 64},
        "generation_run_id": None,
        "created_utc": "2026-01-02T03:04:05+00:00",
    }


@pytest.fixture(scope="module")
def generated(registered, tmp_path_factory):
    uri, models = registered
    out = tmp_path_factory.mktemp("generated")
    rng = np.random.default_rng(1)
    volume = HUVolume(rng.integers(-1000, 1000, size=(16, 16, 8)).astype(np.int16),
                      affine_from_spacing((0.75, 0.75, 1.5), (-6.0, -6.0, -6.0)))
    written = write_generated_volume(volume, _record(models), out, "row0-1", dicom=True, preview=False)
    return uri, out, written


def _invoke(args: list[str], uri: str | None):
    env = {"MLFLOW_TRACKING_URI": uri} if uri else {"MLFLOW_TRACKING_URI": ""}
    return CliRunner().invoke(main, ["lineage", *args], env=env, catch_exceptions=False)


@pytest.mark.parametrize("target", ["nifti", "sidecar", "dicom"])
def test_lineage_prints_verified_chain(generated, target):
    uri, out, written = generated
    path = {"nifti": out / written["nifti"], "sidecar": out / written["sidecar"],
            "dicom": sorted((out / written["dicom"]).iterdir())[3]}[target]
    result = _invoke([str(path)], uri)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "status: VERIFIED" in text and "MISMATCH" not in text and "could not verify" not in text
    for role, name in ROLES.items():
        assert f"{role}: {name} version 1" in text
    assert "aliases now: challenger" in text and "train-superres" in text
    assert "git_commit=0123456789abcdef" in text and f"data.cohort_sha256={'c' * 64}" in text
    assert "optimizer.lr=0.0001" in text and "unrelated" not in text  # key params only
    assert "val.psnr=" in text and "seed           42" in text and "bilateral pleural effusion" in text
    assert "precision      fp32" in text  # the sampler's resolved precision, as the sidecar records it


def test_lineage_json_reverifies_weights_against_registry(generated):
    uri, out, written = generated
    result = _invoke([str(out / written["nifti"]), "--json"], uri)
    assert result.exit_code == 0, result.output
    chain = json.loads(result.output)
    assert chain["status"] == "VERIFIED"
    assert chain["volume"]["check"]["file_sha256"] == file_sha256(out / written["nifti"])
    for role in ROLES:
        model = chain["models"][role]
        assert model["weights_check"] == "VERIFIED"
        assert model["registry_weights_sha256"] == model["recorded"]["weights_sha256"]
        assert model["training_run"]["tags"]["dvc_lock_sha256"] == "d" * 64


def test_tampered_nifti_is_a_mismatch(generated, tmp_path):
    uri, out, written = generated
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    nifti = copy / written["nifti"]
    import nibabel as nib

    image = nib.load(nifti)
    data = np.asarray(image.dataobj).copy()
    data[0, 0, 0] += 1
    nib.save(nib.Nifti1Image(data, image.affine, image.header), nifti)
    result = _invoke([str(nifti)], uri)
    assert result.exit_code == 1
    assert "status: MISMATCH" in result.output and "MISMATCH" in result.output.split("voxel sha256")[1].splitlines()[0]


def test_forged_weights_hash_in_record_is_a_mismatch(generated, tmp_path):
    uri, out, written = generated
    sidecar = json.loads((out / written["sidecar"]).read_text())
    sidecar["models"]["transformer"]["weights_sha256"] = "0" * 64
    shutil.copy(out / written["nifti"], tmp_path / written["nifti"])
    (tmp_path / written["sidecar"]).write_text(json.dumps(sidecar))
    result = _invoke([str(tmp_path / written["sidecar"])], uri)
    assert result.exit_code == 1 and "status: MISMATCH" in result.output


def test_unreachable_or_deleted_registry_still_prints_the_record(generated, registered, tmp_path):
    _, out, written = generated
    missing = f"sqlite:///{tmp_path / 'gone' / 'mlflow.db'}"
    result = _invoke([str(out / written["sidecar"])], missing)
    assert result.exit_code == 0, result.output
    assert "status: UNVERIFIED" in result.output and "registry unreachable" in result.output
    assert "generatect-transformer version 1" in result.output and "seed           42" in result.output
    assert not (tmp_path / "gone").exists()  # looking must not create an empty registry

    # a copy of the registry in which one version was deleted
    uri, _ = registered
    db = Path(uri.removeprefix("sqlite:///"))
    shutil.copy(db, tmp_path / "mlflow.db")
    copy_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=copy_uri, registry_uri=copy_uri).delete_model_version("generatect-superres", "1")
    result = _invoke([str(out / written["nifti"])], copy_uri)
    assert result.exit_code == 0, result.output
    assert "status: UNVERIFIED" in result.output
    assert "generatect-superres version 1 is not in the registry" in result.output
    assert result.output.count(" VERIFIED against the registered version's tag") == 2
    assert "UNVERIFIED against the registered version's tag" in result.output


def test_tracking_uri_comes_from_project_conf(monkeypatch, tmp_path):
    from generatect_kedro.lineage import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = Path(__file__).resolve().parents[1]
    assert tracking_uri(project) == f"sqlite:///{project.as_posix()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/mlflow.db")
    assert tracking_uri(project) == "sqlite:////elsewhere/mlflow.db"


def test_not_a_lineage_file_is_a_clear_error(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    result = _invoke([str(junk)], None)
    assert result.exit_code != 0 and "notes.txt" in result.output and "DICOM" in result.output
    lonely = tmp_path / "x.nii.gz"
    lonely.write_bytes(b"")
    result = _invoke([str(lonely)], None)
    assert result.exit_code != 0 and "no lineage sidecar x.json" in result.output


def test_chain_holds_no_patient_identifiers(generated, tmp_path):
    """The chain of a volume generated next to the demo cohort names none of its patients."""
    demo = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo-data", "--out", str(demo), "--patients", "2", "--seed", "7",
                                       "--matrix", "16"])
    assert result.exit_code == 0, result.output
    secrets = identifiers_in(demo / "dicom")
    assert secrets, "the demo cohort should have patient identifiers to look for"
    uri, out, written = generated
    printed = tmp_path / "printed"
    printed.mkdir()
    for index, target in enumerate([out / written["nifti"], sorted((out / written["dicom"]).iterdir())[0]]):
        for flags in ([], ["--json"]):
            result = _invoke([str(target), *flags], uri)
            assert result.exit_code == 0, result.output
            (printed / f"{index}{''.join(flags)}.txt").write_text(result.output)
    assert_no_identifiers(printed, secrets)
    assert_no_identifiers(out, secrets)
    assert os.listdir(printed)


def test_one_kedro_run_for_every_stage_shows_each_model_its_own_params_and_metrics():
    """`make demo` is one MLflow run: the transformer's link lists transformer.* params, not ctvit.* ones."""
    from types import SimpleNamespace

    from generatect_kedro import lineage

    params = {"ctvit.trainer.max_steps": "800", "ctvit.optimizer.lr": "0.001",
              "transformer.trainer.max_steps": "250", "transformer.optimizer.lr": "0.001"}
    metrics = {"ctvit/val/psnr_hu": 27.4, "transformer/val/text_gain": -0.06}
    run = SimpleNamespace(data=SimpleNamespace(params=params, metrics=metrics, tags={}),
                          info=SimpleNamespace(run_name="__default__", start_time=0, status="FINISHED"))
    client = SimpleNamespace(get_run=lambda run_id: run)
    summary = lineage._run_summary(client, "r1", stage="transformer")
    assert set(summary["key_params"]) == {"transformer.trainer.max_steps", "transformer.optimizer.lr"}
    assert summary["metrics"] == metrics  # everything stays in --json; the text view narrows it
    assert lineage._own(summary["metrics"], "transformer/") == {"transformer/val/text_gain": -0.06}
    assert lineage._own({"val/loss": 1.0}, "transformer/") == {"val/loss": 1.0}  # unprefixed: all shown
