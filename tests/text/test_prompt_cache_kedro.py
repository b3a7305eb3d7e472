"""The catalog entries handed to the transformer pipeline, run through Kedro: first run on an empty folder,
second run encodes nothing, and the consumer sees every partition."""

from __future__ import annotations

import pandas as pd
import yaml
from kedro.io import DataCatalog
from kedro.pipeline import Node, Pipeline
from kedro.runner import SequentialRunner

from generatect_kedro.models.text_encoder import DEMO_ENCODER, TextEncoder
from generatect_kedro.reports.prompts import build_prompt
from generatect_kedro.text import embed_prompts, embedding_loaders

# Exactly the YAML in the hand-over report (paths are relative to the project root; the test roots them in tmp).
CATALOG_YAML = """
prompt_embeddings_cache:    # read-only view of the folder below: {prompt_key: file metadata}, {} on first run
  type: generatect_kedro.io.embedding_dataset.PromptEmbeddingCacheDataset
  path: data/04_feature/prompt_embeddings

prompt_embeddings:          # <prompt_key>.safetensors: embeds (L, d) + mask (L,), encoder fingerprint metadata
  type: partitions.PartitionedDataset
  path: data/04_feature/prompt_embeddings
  dataset:
    type: generatect_kedro.io.embedding_dataset.PromptEmbeddingDataset
  filename_suffix: .safetensors
  overwrite: false          # incremental: the node returns only new/stale prompts

prompt_index:               # volume_id, prompt_key, n_tokens, encoder_fingerprint
  type: pandas.CSVDataset
  filepath: data/04_feature/prompt_index.csv
  load_args:
    dtype: {volume_id: str, prompt_key: str, encoder_fingerprint: str}
    keep_default_na: false
  save_args:
    index: false
"""


def _catalog(root, cohort: pd.DataFrame, params: dict) -> DataCatalog:
    config = yaml.safe_load(CATALOG_YAML)
    for entry in config.values():
        key = "path" if "path" in entry else "filepath"
        entry[key] = str(root / entry[key])
    catalog = DataCatalog.from_config(config)
    catalog["cohort"] = cohort
    catalog["params:transformer"] = params
    return catalog


def _pipeline() -> Pipeline:
    def count_embeddings(prompt_index, prompt_embeddings):
        loaders, _ = embedding_loaders(prompt_index, prompt_embeddings)
        return len(loaders)

    return Pipeline([
        Node(embed_prompts, ["cohort", "params:transformer", "prompt_embeddings_cache"],
             ["prompt_embeddings", "prompt_index"], name="embed_prompts"),
        Node(count_embeddings, ["prompt_index", "prompt_embeddings"], "n_volumes", name="consumer"),
    ])


def test_catalog_entries_run_incrementally(tmp_path, monkeypatch):
    cohort = pd.DataFrame({"volume_id": ["v1", "v2", "v3"],
                           "prompt": [build_prompt(45, "male", "Cardiomegaly."),
                                      build_prompt(45, "male", "Cardiomegaly."),
                                      build_prompt(60, "female", "Emphysema.")]})
    params = {"text_encoder": {"path": DEMO_ENCODER}, "model": {"dim_context": 384}}
    folder = tmp_path / "data/04_feature/prompt_embeddings"

    catalog = _catalog(tmp_path, cohort, params)
    SequentialRunner().run(_pipeline(), catalog)
    assert catalog.load("n_volumes") == 3
    assert len(list(folder.iterdir())) == 2
    index = catalog.load("prompt_index")
    assert index["volume_id"].tolist() == ["v1", "v2", "v3"] and index["n_tokens"].dtype.kind == "i"

    encoded = []
    original = TextEncoder.encode
    monkeypatch.setattr(TextEncoder, "encode",
                        lambda self, prompts: encoded.append(prompts) or original(self, prompts))
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    catalog = _catalog(tmp_path, cohort, params)
    SequentialRunner().run(_pipeline(), catalog)
    assert encoded == [] and catalog.load("n_volumes") == 3
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes  # nothing rewritten
