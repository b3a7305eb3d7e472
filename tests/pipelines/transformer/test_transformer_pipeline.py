"""The transformer pipeline end to end with SequentialRunner: a registered tiny CT-ViT, cached token grids,
the offline MiniLM, a tiny MaskGIT and a temporary SQLite MLflow."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from mlflow_helpers import sqlite_mlflow
from project_config import catalog_config

from generatect_kedro import registry
from generatect_kedro.io.safetensors_model import state_dict_bytes
from generatect_kedro.io.token_dataset import TokenGrid
from generatect_kedro.models.ctvit import CTViT, CTViTConfig
from generatect_kedro.models.maskgit_sampling import MaskGITSamplerConfig, sample_tokens
from generatect_kedro.models.text_encoder import DEMO_ENCODER, TextEncoder, TextEncoderConfig
from generatect_kedro.pipelines.transformer import build_maskgit, create_pipeline, task
from generatect_kedro.reports.prompts import build_prompt

GRID = (5, 2, 2)  # CT-ViT tokens of 9x16x16 volumes, patch 8
CODEBOOK = 32
IMPRESSIONS = ["Cardiomegaly.", "Bilateral pleural effusion.", "No acute cardiopulmonary abnormality.",
               "Cardiomegaly. Bilateral pleural effusion."]


def transformer_params(tmp_path: Path) -> dict:
    return {
        "cache_data": True,
        "text_encoder": {"path": DEMO_ENCODER, "device": "cpu"},
        "model": {"dim": 32, "dim_context": 384, "depth": 1, "heads": 2, "dim_head": 16, "max_seq_len": 32},
        "objective": {"cond_drop_prob": 0.5, "levels": 4},
        "critic": {"enabled": False},
        "optimizer": {"lr": 1e-3, "warmup_steps": 2, "decay": "cosine"},
        "trainer": {"max_steps": 6, "batch_size": 4, "log_every": 6, "validate_every": 3, "show_progress": False,
                    "checkpoint_dir": str(tmp_path / "checkpoints"), "checkpoint_every": 3, "seed": 1},
        "validation": {"max_volumes": 4, "repeats": 2},
        "sampler": {"steps": 4, "cond_scale": 3.0},
        "preview": {"every": 3, "num_prompts": 2, "spacing_dhw": [18.0, 11.0, 11.0]},
        "conditioning": {
            "num_seeds": 3, "first_seed": 100, "montage_columns": 2,
            "regions": {"heart": {"d": [0.18, 0.53], "h": [0.31, 0.59], "w": [0.375, 0.81]},
                        "bases": {"d": [0.12, 0.47], "h": [0.53, 0.72], "w": [[0.19, 0.44], [0.56, 0.81]]}},
            "probes": {"cardiomegaly": {"label": "cardiomegaly", "region": "heart",
                                        "positive": build_prompt(65, "male", "Cardiomegaly."),
                                        "negative": build_prompt(65, "male", IMPRESSIONS[2])},
                       "pleural_effusion": {"label": "pleural_effusion", "region": "bases",
                                            "positive": build_prompt(65, "male", IMPRESSIONS[1]),
                                            "negative": build_prompt(65, "male", IMPRESSIONS[2])}},
        },
        "registry": {"name": "generatect-transformer", "alias": "challenger"},
    }


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory):
    with sqlite_mlflow(tmp_path_factory.mktemp("mlflow"), "transformer-pipeline-test") as root:
        yield root


def upstream(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What the ctvit pipeline leaves behind: a registered CT-ViT, its token grids and index; plus the cohort."""
    torch.manual_seed(0)
    config = CTViTConfig(dim=32, codebook_size=CODEBOOK, image_size=16, patch_size=8, temporal_patch_size=2,
                         spatial_depth=1, temporal_depth=1, dim_head=8, heads=2)
    weights_file = root / "ctvit.safetensors"
    weights_file.write_bytes(state_dict_bytes(CTViT(config).state_dict()))
    info = registry.register_model("generatect-ctvit", weights_file, {"kind": "ctvit", "model": config.to_dict(),
                                                                      "hu_window": [-1000, 1000]}, {})
    ids = [f"vol-{i:02d}" for i in range(8)]
    rng = np.random.default_rng(0)
    meta = {"ctvit_model": info["name"], "ctvit_version": info["version"], "ctvit_weights_sha256":
            info["weights_sha256"], "codebook_size": str(CODEBOOK)}
    setup = DataCatalog.from_config(catalog_config(["ctvit"], root))
    setup.save("ctvit_tokens", {v: TokenGrid(rng.integers(0, CODEBOOK, GRID), meta) for v in ids})
    splits = pd.DataFrame({"volume_id": ids, "split": ["train"] * 6 + ["valid"] * 2})
    setup.save("ctvit_token_index", pd.DataFrame(
        [[v, s, *GRID, CODEBOOK, info["name"], info["version"], info["weights_sha256"]]
         for v, s in zip(ids, splits["split"])],
        columns=["volume_id", "split", "t", "h", "w", "codebook_size", "ctvit_model", "ctvit_version",
                 "ctvit_weights_sha256"]))
    setup.save("ctvit_model_version", {k: info[k] for k in ("name", "version", "alias", "weights_sha256")})
    impressions = [IMPRESSIONS[i % 4] for i in range(8)]
    cohort = pd.DataFrame({"volume_id": ids, "prompt": [build_prompt(60, "female", t)
                                                        for t in impressions],
                           "cardiomegaly": [int("Cardio" in t) for t in impressions],
                           "pleural_effusion": [int("effusion" in t) for t in impressions]})
    return cohort, splits


def run_pipeline(root: Path, cohort: pd.DataFrame, splits: pd.DataFrame, params: dict) -> tuple[DataCatalog, str]:
    """One MLflow run per pipeline run, as kedro-mlflow opens one per `kedro run`."""
    import mlflow

    catalog = DataCatalog.from_config(catalog_config(["ctvit", "transformer"], root))
    catalog["cohort"] = MemoryDataset(cohort)
    catalog["splits"] = MemoryDataset(splits)
    catalog["params:transformer"] = MemoryDataset(params)
    with mlflow.start_run() as run:
        SequentialRunner().run(create_pipeline(), catalog)
    return catalog, run.info.run_id


def test_transformer_pipeline_trains_registers_and_reports(tmp_path, mlflow_db, monkeypatch):
    cohort, splits = upstream(tmp_path)
    params = transformer_params(tmp_path)
    drop_probs: list[float] = []
    original_loss = task.masked_token_loss
    monkeypatch.setattr(task, "masked_token_loss", lambda *a, **k: drop_probs.append(k["cond_drop_prob"])
                        or original_loss(*a, **k))
    catalog, run_id = run_pipeline(tmp_path, cohort, splits, params)

    data = tmp_path / "data"
    for path in ("06_models/transformer/transformer.safetensors", "06_models/transformer/model_version.json",
                 "08_reporting/transformer/training_summary.json", "08_reporting/transformer/conditioning.json",
                 "08_reporting/transformer/conditioning_montage.png", "04_feature/prompt_index.csv"):
        assert (data / path).is_file(), path
    assert len(list((data / "04_feature/prompt_embeddings").glob("*.safetensors"))) == 4  # unique prompts

    # Real classifier-free-guidance training: the parameter reaches the loss, and text was dropped.
    summary = catalog.load("transformer_training_summary")
    assert summary["steps"] == 6 and summary["train_volumes"] == 6 and summary["valid_volumes"] == 2
    assert 0.5 in drop_probs and summary["objective"]["cond_drop_prob"] == 0.5
    assert summary["final_train_metrics"]["train/maskgit/text_kept"] < 1.0
    assert {"loss", "null_loss", "text_gain", "masked_accuracy", "null_masked_accuracy"} <= set(summary["validation"])
    assert summary["mlflow_run_id"] == run_id
    assert sorted(summary["previews"]) == [f"transformer/previews/step_{s:07d}_prompt{p}.png" for s in (3, 6)
                                           for p in (1, 2)]

    # Registered as @challenger, with the CT-ViT and text-encoder lineage.
    version = catalog.load("transformer_model_version")
    ctvit = catalog.load("ctvit_model_version")
    ref = registry.resolve("generatect-transformer", "challenger")
    sha = hashlib.sha256((data / "06_models/transformer/transformer.safetensors").read_bytes()).hexdigest()
    assert ref.version == version["version"] and version["alias"] == "challenger" and ref.weights_sha256 == sha
    assert ref.tags["ctvit_model"] == "generatect-ctvit" and ref.tags["ctvit_version"] == ctvit["version"]
    assert ref.tags["ctvit_weights_sha256"] == ctvit["weights_sha256"]
    assert ref.tags["text_encoder_fingerprint"] == catalog.load("prompt_index")["encoder_fingerprint"].iloc[0]
    assert ref.tags["text_encoder_path"] == DEMO_ENCODER and ref.tags["text_encoder_kind"] == "bert"
    assert ref.tags["training_run_id"] == run_id
    for tag in ( "git_commit", "dvc_lock_sha256", "cond_drop_prob", "sampler_steps",
                "sampler_cond_scale"):
        assert tag in ref.tags, tag
    assert ref.tags["cond_drop_prob"] == "0.5"

    # The conditioning report: every seed of both prompts of every probe, honest statistics, version tags.
    report = catalog.load("transformer_conditioning")
    assert report["seeds"] == [100, 101, 102] and report["model"]["version"] == version["version"]
    for name, probe in report["probes"].items():
        assert len(probe["positive_values"]) == len(probe["negative_values"]) == 3
        assert {"difference", "cohens_d", "p_value", "positive_sd", "negative_sd"} <= set(probe["stats"])
        assert probe["data_reference"]["n_positive"] >= 1 and probe["data_reference"]["n_negative"] >= 1
        assert set(probe["plausibility_ratio"]) == {"positive", "negative"} and isinstance(probe["plausible"], bool)
        assert probe["controls_output"] == (probe["plausible"] and probe["stats"]["p_value"] < 0.05
                                            and probe["stats"]["difference"] > 0)
        assert f"conditioning_{name}_cohens_d" in registry.resolve("generatect-transformer", "challenger").tags
    assert report["plausibility_reference"]["valid_volumes"] == 2

    import mlflow

    logged = mlflow.get_run(run_id).data.metrics
    assert "transformer/conditioning/cardiomegaly/cohens_d" in logged and "transformer/val/text_gain" in logged
    previews = mlflow.MlflowClient().list_artifacts(run_id, "transformer/previews")
    assert len(previews) == 4

    # Sampling with the registered weights is reproducible for a seed, and equals the catalog's weights.
    module, config = registry.load_module(ref)
    local = build_maskgit(config)
    local.load_state_dict(catalog.load("transformer_weights"))
    text, mask = TextEncoder(TextEncoderConfig(path=DEMO_ENCODER, device="cpu")).encode([cohort["prompt"][0]])
    sampler = MaskGITSamplerConfig(**config["sampler"])
    draws = [sample_tokens(m, text, mask, GRID, config=sampler, generator=torch.Generator().manual_seed(7))
             for m in (module, module, local.eval())]
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])

    # A second run encodes no cohort prompt, rewrites no embedding, resumes the finished training, registers
    # nothing new and reproduces the report exactly.
    folder = data / "04_feature/prompt_embeddings"
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    encoded: list[str] = []
    original_encode = TextEncoder.encode
    monkeypatch.setattr(TextEncoder, "encode", lambda self, prompts: encoded.extend(prompts)
                        or original_encode(self, prompts))
    again, _ = run_pipeline(tmp_path, cohort, splits, params)
    assert not set(encoded) & set(cohort["prompt"])  # only the report's probe prompts were encoded
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes
    assert again.load("transformer_training_summary")["resumed_from_step"] == 6
    assert again.load("transformer_model_version")["reused"] is True
    second = again.load("transformer_conditioning")
    assert json.dumps(second["probes"], sort_keys=True) == json.dumps(report["probes"], sort_keys=True)

