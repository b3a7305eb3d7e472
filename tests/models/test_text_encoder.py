"""Frozen text encoder: the offline MiniLM (real weights) and a random T5 written by `build_random_t5_encoder`."""

from __future__ import annotations

import json
import logging
import re
import shutil

import pytest
import torch

from generatect_kedro.models.text_encoder import (
    DEMO_ENCODER,
    TextEncoder,
    TextEncoderConfig,
    TextEncoderDimensionError,
    TextEncoderError,
    TextEncoderNotFoundError,
    build_random_t5_encoder,
    default_demo_encoder_path,
    encoder_fingerprint,
)

PROMPTS = [
    "45 years old male: Bilateral pleural effusion. Cardiomegaly.",
    "Cardiomegaly.",
    "63 years old female: Consolidation in the right lower lobe. 11 mm nodule in the right upper lobe.",
]


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder(TextEncoderConfig(path=DEMO_ENCODER, expected_dim=384))


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return build_random_t5_encoder(tmp_path_factory.mktemp("t5"), d_model=32, num_heads=4)


@pytest.fixture(scope="module")
def t5(t5_dir) -> TextEncoder:
    return TextEncoder(TextEncoderConfig(path=str(t5_dir), expected_dim=32))


def _check_output(encoder: TextEncoder, embeds: torch.Tensor, mask: torch.Tensor, prompts: list[str]) -> None:
    counts = encoder.token_counts(prompts)
    assert embeds.dtype == torch.float32 and mask.dtype == torch.bool
    assert embeds.shape == (len(prompts), max(counts), encoder.hidden_size)
    assert mask.sum(1).tolist() == counts
    assert all(bool(row[: n].all()) and not bool(row[n:].any()) for row, n in zip(mask, counts))  # left-aligned
    assert torch.count_nonzero(embeds[~mask]) == 0  # padding rows exactly zero
    assert torch.equal((embeds != 0).any(-1), mask)  # the release's "embedding ≠ 0" mask holds
    assert not embeds.requires_grad


# ---- MiniLM (BERT-like) ----------------------------------------------------------------------------------

def test_minilm_shapes_mask_and_zero_padding(minilm):
    assert minilm.kind == "bert" and minilm.hidden_size == 384
    assert minilm.folder == default_demo_encoder_path()
    embeds, mask = minilm.encode(PROMPTS)
    _check_output(minilm, embeds, mask, PROMPTS)
    assert minilm.token_counts(PROMPTS[:2]) == [20, 7]  # [CLS] … [SEP], see environment notes §8


def test_minilm_deterministic_and_batch_invariant_for_equal_lengths(minilm):
    first, _ = minilm.encode(PROMPTS)
    second, _ = minilm.encode(PROMPTS)
    assert torch.equal(first, second)
    alone, _ = minilm.encode(PROMPTS[:1])
    repeated, _ = minilm.encode(PROMPTS[:1] * 3)
    assert torch.equal(alone[0], repeated[2])
    n = alone.shape[1]
    assert torch.allclose(alone[0], first[0, :n], atol=1e-5)  # padded batch: equal up to float noise


def test_minilm_is_frozen(minilm):
    assert all(not p.requires_grad for p in minilm.model.parameters())
    assert not minilm.model.training
    minilm.model.train()  # someone flips it: encode still runs in eval mode (no dropout)
    with torch.enable_grad():
        embeds, _ = minilm.encode(PROMPTS[:1])
    assert not minilm.model.training and not embeds.requires_grad
    assert not isinstance(minilm, torch.nn.Module)  # never registered into a trainable model


def test_minilm_different_prompts_differ(minilm):
    embeds, mask = minilm.encode(["Cardiomegaly.", "Emphysema.", "Cardiomegaly."])
    pooled = (embeds * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert not torch.allclose(pooled[0], pooled[1], atol=1e-3)
    assert torch.equal(embeds[0], embeds[2])


def test_truncation_to_max_length_warns(caplog):
    encoder = TextEncoder(TextEncoderConfig(path=DEMO_ENCODER, max_length=8))
    with caplog.at_level(logging.WARNING, logger="generatect_kedro.models.text_encoder"):
        embeds, mask = encoder.encode(PROMPTS)
    assert embeds.shape[1] == 8 and mask[1].sum() == 7 and mask[0].all()
    assert "truncated" in caplog.text


def test_fingerprint_is_stable_and_content_based(minilm, tmp_path):
    assert re.fullmatch(r"[0-9a-f]{64}", minilm.fingerprint)
    assert minilm.fingerprint == encoder_fingerprint(default_demo_encoder_path())
    copy = tmp_path / "minilm"
    shutil.copytree(default_demo_encoder_path(), copy)
    assert encoder_fingerprint(copy) == minilm.fingerprint  # location does not matter
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))
    assert encoder_fingerprint(copy) != minilm.fingerprint


# ---- T5 (random, offline tokenizer) ----------------------------------------------------------------------

def test_t5_encoder_from_utility(t5, t5_dir):
    from transformers import T5EncoderModel

    assert t5.kind == "t5" and t5.hidden_size == 32 and isinstance(t5.model, T5EncoderModel)
    assert (t5_dir / "spiece.model").is_file()
    ids = t5.tokenizer(PROMPTS[0])["input_ids"]
    assert ids[-1] == t5.tokenizer.eos_token_id and len(set(ids)) > 5  # a real vocabulary, not all <unk>
    assert t5.tokenizer.unk_token_id not in ids[:-1]
    embeds, mask = t5.encode(PROMPTS)
    _check_output(t5, embeds, mask, PROMPTS)
    again, _ = t5.encode(PROMPTS)
    assert torch.equal(embeds, again)
    assert not torch.allclose(embeds[0, 0], embeds[1, 0])
    assert all(not p.requires_grad for p in t5.model.parameters()) and not t5.model.training


def test_random_t5_is_reproducible(t5_dir, tmp_path):
    other = build_random_t5_encoder(tmp_path / "again", d_model=32, num_heads=4)
    assert encoder_fingerprint(other) == encoder_fingerprint(t5_dir)


def test_kind_must_match_the_folder(t5_dir):
    with pytest.raises(TextEncoderError, match="kind 'bert'.*model_type 't5'"):
        TextEncoder(TextEncoderConfig(path=str(t5_dir), kind="bert"))
    with pytest.raises(TextEncoderError, match="kind 't5'.*model_type 'bert'"):
        TextEncoder(TextEncoderConfig(path=DEMO_ENCODER, kind="t5"))


# ---- clear errors ----------------------------------------------------------------------------------------

def test_missing_path_says_what_to_do(tmp_path):
    with pytest.raises(TextEncoderNotFoundError) as info:
        TextEncoder(TextEncoderConfig(path=str(tmp_path / "t5-v1_1-base")))
    message = str(info.value)
    assert "does not exist" in message and "connected machine" in message and "copy" in message
    assert "transformer.text_encoder.path" in message
    assert isinstance(info.value, FileNotFoundError)


def test_hub_id_is_not_a_path():
    with pytest.raises(TextEncoderNotFoundError, match="Hub ids are not accepted"):
        TextEncoder(TextEncoderConfig(path="some-org/some-model"))


def test_folder_without_model(tmp_path):
    with pytest.raises(TextEncoderNotFoundError, match="holds no usable model.*config.json.*weights"):
        TextEncoder(TextEncoderConfig(path=str(tmp_path)))
    shutil.copy(default_demo_encoder_path() / "config.json", tmp_path / "config.json")
    with pytest.raises(TextEncoderNotFoundError, match=r"missing weights \(\*\.safetensors"):
        TextEncoder(TextEncoderConfig(path=str(tmp_path)))
    with pytest.raises(TextEncoderNotFoundError, match="is a file"):
        TextEncoder(TextEncoderConfig(path=str(tmp_path / "config.json")))


def test_hidden_size_mismatch_names_the_fix(t5_dir):
    with pytest.raises(TextEncoderDimensionError) as info:
        TextEncoder(TextEncoderConfig(path=DEMO_ENCODER, expected_dim=768))
    assert str(info.value) == ("text encoder hidden size 384 ≠ maskgit dim_context 768; set "
                               "transformer.model.dim_context: 384 or use a 768-d encoder")
    with pytest.raises(TextEncoderDimensionError, match="hidden size 32 ≠ maskgit dim_context 768"):
        TextEncoder(TextEncoderConfig(path=str(t5_dir), expected_dim=768))


def test_config_validation():
    with pytest.raises(TextEncoderNotFoundError, match="path is empty"):
        TextEncoderConfig(path="")
    with pytest.raises(TextEncoderError, match="kind"):
        TextEncoderConfig(path=DEMO_ENCODER, kind="gpt")
    with pytest.raises(TextEncoderError, match="dtype"):
        TextEncoderConfig(path=DEMO_ENCODER, dtype="float64")
    with pytest.raises(TextEncoderError, match=r"unknown text encoder parameters \['max_len'\]"):
        TextEncoderConfig.from_params({"path": DEMO_ENCODER, "max_len": 128})
    assert TextEncoderConfig.from_params({"path": DEMO_ENCODER}, expected_dim=384).expected_dim == 384


def test_encode_rejects_bad_input(minilm):
    with pytest.raises(TypeError, match="list of prompts"):
        minilm.encode("Cardiomegaly.")
    with pytest.raises(ValueError, match="at least one"):
        minilm.encode([])
    with pytest.raises(ValueError, match=r"bad positions \[1\]"):
        minilm.encode(["Cardiomegaly.", "  "])
