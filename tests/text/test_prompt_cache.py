"""Prompt-embedding cache: one file per unique prompt, incremental by encoder fingerprint, exact round trip."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd
import pytest
import torch
from kedro_datasets.partitions import PartitionedDataset

from generatect_kedro.io.embedding_dataset import PromptEmbedding, PromptEmbeddingCacheDataset, read_embedding_meta
from generatect_kedro.models.text_encoder import (
    DEMO_ENCODER,
    TextEncoder,
    TextEncoderConfig,
    TextEncoderDimensionError,
    TextEncoderError,
    build_random_t5_encoder,
    encoder_fingerprint,
    default_demo_encoder_path,
)
from generatect_kedro.reports.prompts import build_prompt
from generatect_kedro.text import PROMPT_INDEX_COLUMNS, embed_prompts, embedding_loaders, pad_embeddings, prompt_key

IMPRESSIONS = ["Bilateral pleural effusion. Cardiomegaly.", "Emphysema.",
               "Consolidation in the right lower lobe. 11 mm nodule in the right upper lobe."]
PARAMS = {"text_encoder": {"path": DEMO_ENCODER, "batch_size": 2}, "model": {"dim_context": 384}}


def _cohort(n_extra: int = 0) -> pd.DataFrame:
    rows = [("vol-a", 45, "male", IMPRESSIONS[0]), ("vol-b", 45, "male", IMPRESSIONS[0]),
            ("vol-c", 70, "female", IMPRESSIONS[1]), ("vol-d", None, None, IMPRESSIONS[2]),
            ("vol-e", 45, "male", IMPRESSIONS[0])]
    rows += [(f"vol-x{i}", 50, "female", "Hiatal hernia.") for i in range(n_extra)]
    return pd.DataFrame([{"volume_id": v, "prompt": build_prompt(a, s, imp)} for v, a, s, imp in rows])


def _partitions(path) -> PartitionedDataset:
    return PartitionedDataset(path=str(path), dataset={"type": "generatect_kedro.io.embedding_dataset."
                                                               "PromptEmbeddingDataset"},
                              filename_suffix=".safetensors", overwrite=False)


@pytest.fixture
def counter(monkeypatch):
    """Counts encoder loads and encoded prompts (the cache must skip both when nothing is new)."""
    counts = {"loads": 0, "prompts": 0}
    init, encode = TextEncoder.__init__, TextEncoder.encode

    def counting_init(self, *args, **kwargs):
        counts["loads"] += 1
        init(self, *args, **kwargs)

    def counting_encode(self, prompts):
        counts["prompts"] += len(prompts)
        return encode(self, prompts)

    monkeypatch.setattr(TextEncoder, "__init__", counting_init)
    monkeypatch.setattr(TextEncoder, "encode", counting_encode)
    return counts


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder(TextEncoderConfig(path=DEMO_ENCODER))


def test_one_file_per_unique_prompt_no_text_in_names(tmp_path, counter):
    cohort = _cohort()
    new, index = embed_prompts(cohort, PARAMS, PromptEmbeddingCacheDataset(str(tmp_path)).load())
    _partitions(tmp_path).save(new)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 3 == counter["prompts"] and counter["loads"] == 1
    assert all(re.fullmatch(r"[0-9a-f]{16}\.safetensors", name) for name in files)
    words = {w.lower() for p in cohort["prompt"] for w in re.findall(r"[A-Za-z]{4,}", p)}
    assert not any(w in name.lower() for w in words for name in files)
    assert set(files) == {f"{prompt_key(p)}.safetensors" for p in cohort["prompt"]}
    assert list(index.columns) == PROMPT_INDEX_COLUMNS and index["volume_id"].tolist() == sorted(cohort["volume_id"])
    fingerprint = encoder_fingerprint(default_demo_encoder_path())
    assert set(index["encoder_fingerprint"]) == {fingerprint}
    meta = read_embedding_meta(tmp_path / files[0])
    assert meta["encoder_fingerprint"] == fingerprint and meta["max_length"] == "256" and meta["dim"] == "384"
    assert not any(w in " ".join(meta.values()).lower() for w in words)  # metadata holds hashes, not text


def test_second_call_encodes_nothing_and_files_stay_identical(tmp_path, counter):
    cohort = _cohort()
    new, index = embed_prompts(cohort, PARAMS, PromptEmbeddingCacheDataset(str(tmp_path)).load())
    _partitions(tmp_path).save(new)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    counter.update(loads=0, prompts=0)
    again, index_again = embed_prompts(cohort, PARAMS, PromptEmbeddingCacheDataset(str(tmp_path)).load())
    assert again == {} and counter == {"loads": 0, "prompts": 0}  # not even loaded
    pd.testing.assert_frame_equal(index, index_again)
    grown = _cohort(n_extra=2)  # two volumes, one new prompt
    new, index_grown = embed_prompts(grown, PARAMS, PromptEmbeddingCacheDataset(str(tmp_path)).load())
    assert counter["prompts"] == 1 and len(new) == 1 and len(index_grown) == 7
    # the one new prompt is embedded exactly as a full run would have embedded it
    full, _ = embed_prompts(grown, PARAMS)
    key = next(iter(new))
    assert np.array_equal(new[key].embeds, full[key].embeds)
    _partitions(tmp_path).save(new)
    assert all((tmp_path / name).read_bytes() == data for name, data in before.items())  # byte-stable


def test_other_encoder_fingerprint_reencodes(tmp_path, counter):
    cohort = _cohort()
    _partitions(tmp_path).save(embed_prompts(cohort, PARAMS)[0])
    t5_dir = build_random_t5_encoder(tmp_path.parent / f"{tmp_path.name}-t5", d_model=32, num_heads=4)
    counter.update(loads=0, prompts=0)
    params = {"text_encoder": {"path": str(t5_dir)}, "model": {"dim_context": 32}}
    new, index = embed_prompts(cohort, params, PromptEmbeddingCacheDataset(str(tmp_path)).load())
    assert counter["prompts"] == 3 and len(new) == 3
    _partitions(tmp_path).save(new)
    fingerprint = encoder_fingerprint(t5_dir)
    assert {read_embedding_meta(p)["encoder_fingerprint"] for p in tmp_path.iterdir()} == {fingerprint}
    assert set(index["encoder_fingerprint"]) == {fingerprint}
    counter.update(prompts=0)  # a changed max_length or dtype also invalidates the cache
    cache = PromptEmbeddingCacheDataset(str(tmp_path)).load()
    embed_prompts(cohort, {**params, "text_encoder": {"path": str(t5_dir), "max_length": 128}}, cache)
    embed_prompts(cohort, {**params, "text_encoder": {"path": str(t5_dir), "storage_dtype": "float16"}}, cache)
    embed_prompts(cohort, {**params, "text_encoder": {"path": str(t5_dir), "dtype": "bfloat16"}}, cache)
    assert counter["prompts"] == 9


def test_round_trip_equals_direct_encoding(tmp_path, minilm):
    cohort = _cohort()
    _partitions(tmp_path).save(embed_prompts(cohort, PARAMS)[0])
    loaders = _partitions(tmp_path).load()
    for prompt in set(cohort["prompt"]):
        stored = loaders[prompt_key(prompt)]()
        direct, mask = minilm.encode([prompt])
        assert stored.embeds.dtype == np.float32 and stored.mask.all() and stored.n_tokens == int(mask.sum())
        assert torch.equal(torch.from_numpy(stored.embeds), direct[0])  # bit-exact
        assert stored.meta["prompt_sha256"] == hashlib.sha256(prompt.encode()).hexdigest()


def test_float16_storage(tmp_path, minilm):
    params = {**PARAMS, "text_encoder": {**PARAMS["text_encoder"], "storage_dtype": "float16"}}
    new, _ = embed_prompts(_cohort(), params)
    _partitions(tmp_path).save(new)
    prompt = _cohort()["prompt"][0]
    stored = _partitions(tmp_path).load()[prompt_key(prompt)]()
    direct, _ = minilm.encode([prompt])
    assert stored.embeds.dtype == np.float16
    assert torch.allclose(torch.from_numpy(stored.embeds).float(), direct[0], atol=5e-3, rtol=1e-3)
    assert np.count_nonzero(np.all(stored.embeds == 0, axis=-1)) == 0  # mask-by-nonzero still holds


def test_index_token_counts_and_loaders(tmp_path, minilm):
    cohort = _cohort()
    new, index = embed_prompts(cohort, PARAMS)
    _partitions(tmp_path).save(new)
    counts = dict(zip(cohort["volume_id"], minilm.token_counts(list(cohort["prompt"]))))
    assert dict(zip(index["volume_id"], index["n_tokens"])) == counts
    loaders, fingerprint = embedding_loaders(index, _partitions(tmp_path).load())
    assert fingerprint == minilm.fingerprint and set(loaders) == set(cohort["volume_id"])
    assert loaders["vol-a"]().n_tokens == counts["vol-a"]
    mixed = index.assign(encoder_fingerprint=["x", "y", "x", "x", "x"])
    with pytest.raises(ValueError, match="mixes 2 encoder fingerprints"):
        embedding_loaders(mixed, _partitions(tmp_path).load())
    with pytest.raises(ValueError, match="missing"):
        embedding_loaders(index, {})


def test_corrupt_cache_file_is_reencoded(tmp_path, counter):
    cohort = _cohort()
    _partitions(tmp_path).save(embed_prompts(cohort, PARAMS)[0])
    victim = tmp_path / f"{prompt_key(cohort['prompt'][2])}.safetensors"
    victim.write_bytes(b"not a safetensors file")
    counter.update(prompts=0)
    new, _ = embed_prompts(cohort, PARAMS, PromptEmbeddingCacheDataset(str(tmp_path)).load())
    assert counter["prompts"] == 1 and set(new) == {prompt_key(cohort["prompt"][2])}


def test_node_errors(tmp_path):
    with pytest.raises(TextEncoderDimensionError, match="384 ≠ maskgit dim_context 768"):
        embed_prompts(_cohort(), {**PARAMS, "model": {"dim_context": 768}})
    with pytest.raises(TextEncoderError, match="text_encoder section"):
        embed_prompts(_cohort(), {"model": {"dim_context": 384}})
    with pytest.raises(TextEncoderError, match="storage_dtype"):
        embed_prompts(_cohort(), {"text_encoder": {"path": DEMO_ENCODER, "storage_dtype": "int8"}})
    with pytest.raises(ValueError, match="empty prompt"):
        embed_prompts(_cohort().assign(prompt=["a", "", "b", "c", "d"]), PARAMS)
    with pytest.raises(ValueError, match="duplicate volume_id"):
        embed_prompts(pd.concat([_cohort(), _cohort()]), PARAMS)
    assert PromptEmbeddingCacheDataset(str(tmp_path / "absent")).load() == {}


def test_pad_embeddings():
    a = np.arange(6, dtype=np.float16).reshape(3, 2) + 1
    b = torch.full((1, 2), 7.0)
    c = PromptEmbedding(np.ones((2, 2), dtype=np.float32))
    embeds, mask = pad_embeddings([a, b, c])
    assert embeds.shape == (3, 3, 2) and embeds.dtype == torch.float32 and mask.dtype == torch.bool
    assert mask.tolist() == [[True] * 3, [True, False, False], [True, True, False]]
    assert torch.equal(embeds[0], torch.from_numpy(a).float())
    assert torch.count_nonzero(embeds[~mask]) == 0 and torch.equal((embeds != 0).any(-1), mask)
    with pytest.raises(ValueError, match="different embedding sizes"):
        pad_embeddings([a, np.ones((2, 3))])
    with pytest.raises(ValueError, match="at least one"):
        pad_embeddings([])
    with pytest.raises(ValueError, match=r"\(L, d\)"):
        pad_embeddings([np.ones(4)])
