"""The ctvit pipeline end to end with SequentialRunner: tiny grids, tiny CT-ViT, a temporary SQLite MLflow."""

from __future__ import annotations

import hashlib
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
from generatect_kedro.cohort.grids import GridVolume
from generatect_kedro.models.ctvit import CTViT, CTViTConfig
from generatect_kedro.pipelines.ctvit import create_pipeline

SHAPE = (9, 16, 16)


def grid(seed: int) -> GridVolume:
    """A bright ellipsoid 'body' with a dark 'lung' blob in air: structured, different per volume."""
    rng = np.random.default_rng(seed)
    d, h, w = np.meshgrid(*(np.linspace(-1, 1, s) for s in SHAPE), indexing="ij")
    body = (h / rng.uniform(0.6, 0.9)) ** 2 + (w / rng.uniform(0.7, 0.95)) ** 2 < 1
    lung = ((h - rng.uniform(-0.2, 0.2)) / 0.3) ** 2 + ((w - 0.3) / 0.25) ** 2 + (d / 0.8) ** 2 < 1
    volume = np.where(body, 0.05, -1.0) + np.where(lung, -0.8, 0.0) + rng.normal(0, 0.02, SHAPE)
    return GridVolume(np.clip(volume, -1, 1).astype(np.float32), np.diag([11.0, 11.0, 18.0, 1.0]))


def params(tmp_path: Path) -> dict:
    model = dict(dim=32, codebook_size=32, image_size=16, patch_size=8, temporal_patch_size=2, spatial_depth=1,
                 temporal_depth=1, dim_head=8, heads=2)
    return {
        "model": model,
        "loss": {"perceptual": {"weights_path": None},
                 "gan": {"enabled": True, "schedule": {"start": 1, "every": 2},
                         "discriminator": {"dim": 2, "attn_res_layers": [], "max_dim": 16}}},
        "optimizer": {"lr": 1e-3, "discriminator_lr": 1e-4},
        "trainer": {"max_steps": 4, "batch_size": 2, "log_every": 1, "validate_every": 2, "show_progress": False,
                    "checkpoint_dir": str(tmp_path / "checkpoints"), "checkpoint_every": 2, "seed": 1},
        "validation": {"max_volumes": 4, "batch_size": 2, "preview": True},
        "tokens": {"batch_size": 4, "device": "cpu"},
        "registry": {"name": "generatect-ctvit", "alias": "challenger"},
    }


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory):
    with sqlite_mlflow(tmp_path_factory.mktemp("mlflow"), "ctvit-pipeline-test") as root:
        yield root


def run_pipeline(root: Path, splits: pd.DataFrame, ctvit_params: dict) -> DataCatalog:
    catalog = DataCatalog.from_config(catalog_config(["preprocessing", "ctvit"], root))
    catalog["splits"] = MemoryDataset(splits)
    catalog["params:ctvit"] = MemoryDataset(ctvit_params)
    SequentialRunner().run(create_pipeline(), catalog)
    return catalog


def test_ctvit_pipeline_trains_registers_and_caches_tokens(tmp_path, mlflow_db):
    ids = [f"vol-{i:02d}" for i in range(6)]
    setup = DataCatalog.from_config(catalog_config(["preprocessing"], tmp_path))
    setup.save("grids_lowres", {v: grid(i) for i, v in enumerate(ids)})
    splits = pd.DataFrame({"volume_id": ids, "patient_key": [f"p{i}" for i in range(6)],
                           "split": ["train"] * 4 + ["valid", "test"]})
    ctvit_params = params(tmp_path)
    catalog = run_pipeline(tmp_path, splits, ctvit_params)

    weights_file = tmp_path / "data/06_models/ctvit/ctvit.safetensors"
    summary = catalog.load("ctvit_training_summary")
    version = catalog.load("ctvit_model_version")
    assert weights_file.is_file() and (tmp_path / "data/06_models/ctvit/model_version.json").is_file()
    assert summary["steps"] == 4 and summary["train_volumes"] == 4 and summary["valid_volumes"] == 1
    assert summary["loss"]["perceptual"] == "disabled (no weights path)"
    val = summary["validation"]
    assert {"psnr_hu", "ssim_hu", "baseline_psnr_hu", "codebook_usage", "codebook_perplexity"} <= set(val)
    assert {"train/discriminator/grad_penalty", "train/generator/gen_loss"} <= set(summary["final_train_metrics"])

    sha = hashlib.sha256(weights_file.read_bytes()).hexdigest()
    ref = registry.resolve("generatect-ctvit", "challenger")
    assert ref.version == version["version"] and version["alias"] == "challenger"
    assert ref.weights_sha256 == sha == version["weights_sha256"]
    for tag in ("training_run_id", "git_commit", "dvc_lock_sha256", "grid_shape", "perceptual_loss", "gan_loss"):
        assert tag in ref.tags, tag
    assert ref.tags["grid_shape"] == "9x16x16" and ref.tags["perceptual_loss"] == "disabled (no weights path)"

    index = catalog.load("ctvit_token_index")
    assert sorted(index["volume_id"]) == ids and set(index["ctvit_weights_sha256"]) == {sha}
    assert (index[["t", "h", "w"]].to_numpy() == [5, 2, 2]).all()
    assert set(index["ctvit_version"].astype(str)) == {version["version"]}
    tokens = catalog.load("ctvit_tokens")
    state, config = registry.load_weights(ref)
    model = CTViT(CTViTConfig(**config["model"])).eval()
    model.load_state_dict(state)
    volumes = torch.stack([torch.from_numpy(grid(i).volume) for i in range(6)]).unsqueeze(1)
    expected = model.tokenize(volumes)
    for i, volume_id in enumerate(ids):
        cached = tokens[volume_id]()
        assert cached.ids.dtype == np.int32 and cached.grid_shape == (5, 2, 2)
        assert cached.meta["ctvit_version"] == version["version"] and cached.meta["ctvit_weights_sha256"] == sha
        np.testing.assert_array_equal(cached.ids, expected[i].numpy())

    # A second run resumes the finished checkpoint instead of training again; its identical weights are
    # not registered twice.
    again = run_pipeline(tmp_path, splits, ctvit_params)
    assert again.load("ctvit_training_summary")["resumed_from_step"] == 4
    assert again.load("ctvit_model_version")["reused"] is True
    assert registry.resolve("generatect-ctvit", "challenger").version == version["version"]
