"""The promotion pipeline with SequentialRunner on the demo env's parameters, a temporary SQLite MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from safetensors.torch import save_file

from generatect_kedro import registry
from generatect_kedro.pipelines.promotion import create_pipeline
from generatect_kedro.pipelines.promotion.nodes import PromotionRefused
from generatect_kedro.promotion import core
from generatect_kedro.settings import CONFIG_LOADER_ARGS
from mlflow_helpers import temporary_mlflow
from project_config import CONF, catalog_config


def loader(env: str) -> OmegaConfigLoader:
    return OmegaConfigLoader(str(CONF), env=env, **CONFIG_LOADER_ARGS)


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """CT-ViT passing the demo gates, a transformer without its conditioning metrics, superres not run."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    with temporary_mlflow(f"sqlite:///{root / 'mlflow.db'}"):
        mlflow.set_experiment(experiment_id=mlflow.create_experiment(
            "pipeline-test", artifact_location=(root / "artifacts").as_uri()))
        weights = root / "w.safetensors"
        save_file({"w": torch.zeros(4)}, str(weights))
        infos = {}
        for name, metrics in (("generatect-ctvit", {"ctvit/val/psnr_gain_db": 7.2}),
                              ("generatect-transformer", {"transformer/val/text_gain": 0.3})):
            with mlflow.start_run():
                mlflow.log_metrics(metrics)
                infos[name] = registry.register_model(name, weights, {"kind": "test"}, {}, reuse_identical=False)
        yield root, infos


def run_pipeline(root: Path, infos: dict, params: dict) -> DataCatalog:
    catalog = DataCatalog.from_config(catalog_config(["promotion", "evaluation"], root))  # no metrics.json yet: {}
    catalog["ctvit_model_version"] = MemoryDataset(infos["generatect-ctvit"])
    catalog["transformer_model_version"] = MemoryDataset(infos["generatect-transformer"])
    catalog["superres_model_version"] = MemoryDataset({"skipped": "rank 1: registration runs on rank 0"})
    catalog["params:promotion"] = MemoryDataset(params)
    SequentialRunner().run(create_pipeline(), catalog)
    return catalog


def test_pipeline_promotes_what_passes_and_reports_the_rest(versions, tmp_path):
    root, infos = versions
    params = dict(loader("demo")["parameters"]["promotion"])
    run_pipeline(tmp_path, infos, params)
    report = json.loads((tmp_path / "data/08_reporting/promotion/promotion.json").read_text())
    ctvit, transformer, superres = (report["models"][n] for n in
                                    ("generatect-ctvit", "generatect-transformer", "generatect-superres"))
    assert ctvit["status"] == "promoted" and ctvit["gates"][0]["value"] == pytest.approx(7.2)
    client = core._mlflow().MlflowClient()
    assert str(client.get_model_version_by_alias("generatect-ctvit", "champion").version) == \
        infos["generatect-ctvit"]["version"]
    # every gate fails: the conditioning probes and the evaluation's text alignment were never measured
    assert transformer["status"] == "refused" and len(transformer["failures"]) == len(
        params["gates"]["generatect-transformer"])
    assert "transformer/conditioning/cardiomegaly/p_value" in transformer["message"]
    assert "evaluation/text_alignment/mean_auroc_generated" in transformer["message"]
    assert report["evaluation_metrics"] == {}  # promotion on its own, before any evaluation: the optional default
    assert superres["status"] == "skipped" and "rank 1" in superres["message"]
    assert report["summary"]["promoted"] == ["generatect-ctvit"]
    run_pipeline(tmp_path, infos, params)  # a re-run changes nothing
    again = json.loads((tmp_path / "data/08_reporting/promotion/promotion.json").read_text())
    assert again["models"]["generatect-ctvit"]["status"] == "noop"
    with pytest.raises(PromotionRefused, match="generatect-transformer"):  # passing models are still promoted
        run_pipeline(tmp_path, infos, {**params, "fail_on_refusal": True})
