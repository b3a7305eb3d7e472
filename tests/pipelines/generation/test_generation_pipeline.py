"""The generation pipeline with SequentialRunner: default prompts (no CSV), the real writer, catalog outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation_fixtures import grid_index, register_tiny_models, use_registry  # noqa: E402

from generatect_kedro import registry  # noqa: E402
from generatect_kedro.io.optional import OptionalCSVDataset, OptionalDataset  # noqa: E402
from generatect_kedro.pipelines.generation import create_pipeline  # noqa: E402

CONF = Path(__file__).resolve().parents[3] / "conf"


def test_generation_pipeline_builds_demo_prompts_and_writes_volumes(tmp_path):
    import mlflow

    torch.set_num_threads(1)
    previous = mlflow.get_tracking_uri()
    use_registry(tmp_path)
    try:
        register_tiny_models(tmp_path)
        base = yaml.safe_load((CONF / "base" / "parameters_generation.yml").read_text())["generation"]
        demo = yaml.safe_load((CONF / "demo" / "parameters_generation.yml").read_text())["generation"]
        params = {**base, **demo, "sampler": {**base["sampler"], **demo["sampler"]}}
        params.update(output_dir=str(tmp_path / "generated"), progress=False, preview=False,
                      default_prompts=demo["default_prompts"][:2])
        promotion = yaml.safe_load((CONF / "demo" / "parameters_promotion.yml").read_text())["promotion"]
        missing = OptionalCSVDataset(filepath=str(tmp_path / "no-such-prompts.csv"))
        assert missing.load().empty
        catalog = DataCatalog({"generation_prompts": missing, "generation_cohort_geometry": MemoryDataset(grid_index()),
                               "params:generation": MemoryDataset(params),
                               "params:transformer": MemoryDataset({"text_encoder": {"path": "demo:minilm",
                                                                                     "device": "cpu"}}),
                               "params:promotion": MemoryDataset(promotion),
                               "generation_summary": MemoryDataset(), "generation_items": MemoryDataset(),
                               "generator_model_version": MemoryDataset(), "generator_promotion": MemoryDataset(),
                               # generating on its own: no promotion report of this run
                               "promotion_report": OptionalDataset(
                                   {"type": "json.JSONDataset", "filepath": str(tmp_path / "no-report.json")},
                                   default={})})
        with mlflow.start_run() as run:  # what kedro-mlflow opens for a `kedro run`
            SequentialRunner().run(create_pipeline(), catalog)
        summary, items = catalog.load("generation_summary"), catalog.load("generation_items")
        promoted = catalog.load("generator_promotion")  # (the runner releases the consumed version dict)
        generator = registry.resolve("generatect-generator", "champion")
    finally:
        mlflow.set_tracking_uri(previous)
    assert summary["generated"] == 2 and summary["generation_run_id"] == run.info.run_id
    assert summary["geometry"] == {"spacing_mm": pytest.approx([0.7, 0.8, 2.0]), "orientation": "RAS",
                                   "source": "cohort median"}
    assert isinstance(items, pd.DataFrame) and list(items["slice_count"]) == [5, 5]  # the transformer's depth
    sidecar = json.loads((tmp_path / "generated" / items["sidecar"][0]).read_text())
    assert sidecar["item"]["prompt"] == "65 years old male: Cardiomegaly."  # the cohort's wording
    assert sidecar["volume"]["shape_ijk"] == [32, 32, 5] and (tmp_path / "generated" / items["nifti"][0]).is_file()
    json.dumps(summary)  # JSON-serialisable for the catalog's JSONDataset
    # The whole path registered as one servable model, pinned to the champions, and promoted through its gate.
    assert {k for k in generator.tags if k.startswith("component.") and k.count(".") == 1} == {
        "component.ctvit", "component.transformer", "component.superres"}
    outcome = promoted["models"]["generatect-generator"]
    assert outcome["version"] == generator.version
    assert outcome["status"] == "promoted" and outcome["gates"][0]["metric"] == "registry/components_champion"
