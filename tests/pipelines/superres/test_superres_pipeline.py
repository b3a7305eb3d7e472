"""The superres pipeline end to end with SequentialRunner: a two-stage 8 → 16 → 32 cascade on tiny grids,
conditioned on a tiny CT-ViT's reconstructions, registered in a temporary SQLite MLflow, rebuilt by the registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from mlflow_helpers import sqlite_mlflow
from project_config import CONF, catalog_config

import superres_fixtures as fx
from generatect_kedro import registry
from generatect_kedro.diffusion import Cascade
from generatect_kedro.pipelines.superres import create_pipeline


def superres_catalog(root: Path) -> dict[str, dict[str, Any]]:
    """conf/base/catalog_superres.yml with every (nested) `data/…` path moved under `root`."""
    def moved(entry: Any) -> Any:
        if isinstance(entry, dict):
            return {k: (str(root / v) if k in ("filepath", "path") else moved(v)) for k, v in entry.items()}
        return entry

    return moved(yaml.safe_load((CONF / "base" / "catalog_superres.yml").read_text()))


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory):
    with sqlite_mlflow(tmp_path_factory.mktemp("mlflow"), "superres-pipeline-test") as root:
        yield root


@pytest.fixture(scope="module")
def run(tmp_path_factory, mlflow_db):
    root = tmp_path_factory.mktemp("project")
    low, full = fx.grids()
    setup = DataCatalog.from_config(catalog_config(["preprocessing"], root))
    setup.save("grids_lowres", low)
    setup.save("grids_fullres", full)
    weights, version = fx.ctvit()
    embeddings, index = fx.prompts()
    catalog = DataCatalog.from_config({**catalog_config(["preprocessing"], root), **superres_catalog(root)})
    for name, value in (("ctvit_weights", weights), ("ctvit_model_version", version), ("splits", fx.splits()),
                        ("prompt_embeddings", embeddings), ("prompt_index", index),
                        ("params:superres", fx.params(root))):
        catalog[name] = MemoryDataset(value, copy_mode="assign")
    SequentialRunner().run(create_pipeline(), catalog)
    return root, catalog, version


def test_outputs_exist_and_record_the_lineage(run):
    root, catalog, ctvit_version = run
    recon_dir = root / "data/04_feature/superres_lowres_recon"
    assert sorted(p.stem for p in recon_dir.glob("*.safetensors")) == fx.IDS[:5]  # train + valid splits
    recon = catalog.load("superres_lowres_recon")["vol-03"]()
    assert recon.volume.shape == (fx.DEPTH, fx.LOW, fx.LOW) and recon.meta["ctvit_version"] == "7"
    assert recon.meta["superres_condition"] == "ctvit_recon"
    index = catalog.load("superres_recon_index")
    assert list(index["volume_id"]) == fx.IDS[:5] and set(index["ctvit_weights_sha256"]) == {
        ctvit_version["weights_sha256"]}
    for path in ("data/06_models/superres/superres.safetensors", "data/08_reporting/superres/preview.png",
                 "data/08_reporting/superres/training_summary.json", "data/06_models/superres/model_version.json"):
        assert (root / path).is_file(), path

    summary = catalog.load("superres_training_summary")
    assert [s["scale"] for s in summary["cascade"]["stages"]] == [2, 2]
    assert [s["output_hw"] for s in summary["cascade"]["stages"]] == [[16, 16], [32, 32]]
    assert [s["steps"] for s in summary["stages"]] == [2, 2] and summary["stages"][1]["crop"] == 16
    assert summary["text_encoder"]["dim"] == fx.TEXT_DIM and summary["weights"] == "ema"
    validation = summary["stages"][0]["validation"]
    assert {"loss", "ema_loss", "preview_psnr_hu_diffusion", "preview_hf_share_trilinear"} <= set(validation)

    evaluation = json.loads((root / "data/08_reporting/superres/evaluation.json").read_text())
    assert evaluation["volumes"] == 2 and evaluation["scale"] == 4
    assert evaluation["hf_cutoff_cycles_per_pixel"] == pytest.approx(0.125)
    for method in ("diffusion", "trilinear"):
        assert set(evaluation["methods"][method]) == {"psnr_hu", "ssim_hu", "hf_power_share", "hf_correlation",
                                                      "hf_relative_error"}
    assert "hf_power_share" in evaluation["definitions"]


def test_registered_as_challenger_with_stage_layout_and_tags(run):
    _, catalog, ctvit_version = run
    version = catalog.load("superres_model_version")
    ref = registry.resolve("generatect-superres", "challenger")
    assert ref.version == version["version"] and version["alias"] == "challenger"
    tags = ref.tags
    assert tags["stage_layout"] == "8 -> 16 -> 32" and tags["stages"] == "2"
    assert tags["samplers"] == "dpm++2m:2,ancestral:2"
    assert tags["ctvit_version"] == "7" and tags["ctvit_weights_sha256"] == ctvit_version["weights_sha256"]
    assert tags["text_encoder_fingerprint"] == "f" * 64
    for tag in ("training_run_id", "git_commit", "dvc_lock_sha256", "eval_psnr_hu_diffusion",
                "eval_hf_power_share_trilinear"):
        assert tag in tags, tag
    state, config = registry.load_weights(ref)
    assert config["kind"] == "superres_cascade" and [s["scale"] for s in config["stages"]] == [2, 2]
    assert {k.split(".")[1] for k in state} == {"0", "1"}  # unets.<stage>.*


def test_registry_rebuilds_a_cascade_that_upsamples_reproducibly(run):
    ref = registry.resolve("generatect-superres", "challenger")
    cascade, config = registry.load_module(ref)
    assert isinstance(cascade, Cascade) and cascade.scale == 4 and not cascade.training
    volume = torch.rand(5, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    text = torch.randn(1, 6, fx.TEXT_DIM, generator=torch.Generator().manual_seed(1))

    def upsample(seed: int) -> torch.Tensor:
        return cascade(volume, text, slice_batch_size=2, generator=torch.Generator().manual_seed(seed))

    first = upsample(3)
    assert first.shape == (5, 32, 32) and first.abs().max() <= 1
    torch.testing.assert_close(upsample(3), first, atol=0, rtol=0)
    assert (upsample(4) - first).abs().max() > 1e-3


def test_a_second_run_resumes_the_finished_stages_and_reuses_the_version(run):
    root, catalog, _ = run
    first = catalog.load("superres_model_version")
    SequentialRunner().run(create_pipeline(), catalog)
    summary = catalog.load("superres_training_summary")
    assert [Path(s["resumed_from"]).name for s in summary["stages"]] == ["step-00000002"] * 2
    again = catalog.load("superres_model_version")  # the EMA came back from the checkpoint: identical weights
    assert again["reused"] is True and again["version"] == first["version"]
