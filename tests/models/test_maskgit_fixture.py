"""MaskGIT equals the released ``MaskGit`` on the reference fixture (README §2): every eval tensor, the
18-step guided sampling run (ids exactly, logits within tolerance) and its CT-ViT decoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from generatect_kedro.models.convert import convert_ctvit_state_dict, convert_maskgit_state_dict
from generatect_kedro.models.ctvit import CTViT, CTViTConfig
from generatect_kedro.models.maskgit import MaskGIT, MaskGITConfig
from generatect_kedro.models.maskgit_sampling import MaskGITSamplerConfig, SamplingStep, sample_tokens

pytestmark = pytest.mark.fixtures

ATOL, RTOL = 1e-5, 1e-4
GRID = (5, 4, 4)



def load_maskgit(fixtures_dir: Path) -> tuple[MaskGIT, dict[str, torch.Tensor]]:
    meta = json.loads((fixtures_dir / "maskgit.json").read_text())
    config = MaskGITConfig.from_reference_kwargs(meta["constructor_kwargs"])
    model = MaskGIT(config)
    model.load_state_dict(convert_maskgit_state_dict(load_file(fixtures_dir / "maskgit_weights.safetensors"), config))
    return model.eval(), load_file(fixtures_dir / "maskgit_io.safetensors")


@pytest.fixture(scope="module")
def maskgit_io(fixtures_dir: Path):
    return load_maskgit(fixtures_dir)


@pytest.fixture(scope="module")
def eval_outputs(maskgit_io):
    model, io = maskgit_io
    ids, text, mask = io["input.token_ids"], io["input.text_embeds"], io["input.text_mask"]
    with torch.no_grad():
        got = {
            "eval.logits_cond": model(ids, text, mask, grid_shape=GRID, cond_drop_prob=0.0),
            "eval.logits_null": model(ids, text, mask, grid_shape=GRID, cond_drop_prob=1.0),
            "eval.logits_guided_cs5": model.forward_with_cond_scale(ids, text, mask, grid_shape=GRID, cond_scale=5.0),
            "eval.logits_cond_4d_input": model(ids.reshape(2, *GRID), text, mask),
            "eval.embeds_cond": model(ids, text, mask, grid_shape=GRID, return_embeds=True),
            "eval.logits_no_context": model(ids, grid_shape=GRID),
            "eval.continuous_pos_bias": model.continuous_pos_bias(*GRID),
        }
    return got, io


def test_every_eval_tensor_is_covered(eval_outputs):
    got, io = eval_outputs
    assert {k for k in io if k.startswith("eval.")} == set(got)


@pytest.mark.parametrize(
    "name",
    ["eval.logits_cond", "eval.logits_null", "eval.logits_guided_cs5", "eval.logits_cond_4d_input",
     "eval.embeds_cond", "eval.logits_no_context", "eval.continuous_pos_bias"],
)
def test_eval_tensor_matches_release(eval_outputs, name):
    got, io = eval_outputs
    torch.testing.assert_close(got[name], io[name], atol=ATOL, rtol=RTOL)


def test_null_condition_differs_from_no_context(eval_outputs):
    """Null k/v only (text fully masked) and no cross-attention at all are different functions."""
    got, _ = eval_outputs
    assert (got["eval.logits_null"] - got["eval.logits_no_context"]).abs().max() > 1e-2


def test_training_logits_for_the_recorded_masked_input(maskgit_io):
    model, io = maskgit_io
    with torch.no_grad():
        logits = model(io["train.masked_input"], io["input.text_embeds"], io["input.text_mask"])
    torch.testing.assert_close(logits, io["train.logits"], atol=ATOL, rtol=RTOL)


@pytest.fixture(scope="module")
def sampling_run(maskgit_io):
    """The release run (seed 6) replayed with its recorded Gumbel noise injected."""
    model, io = maskgit_io
    noise = io["sample.step_gumbel_noise"]
    steps: list[SamplingStep] = []
    ids = sample_tokens(
        model, io["input.text_embeds"], io["input.text_mask"], GRID,
        config=MaskGITSamplerConfig(steps=18, temperature=0.9, cond_scale=5.0),
        noise_fn=lambda s, _logits: noise[s], on_step=steps.append,
    )
    return ids, steps, io


def test_sampling_steps_match_release(sampling_run):
    ids, steps, io = sampling_run
    assert len(steps) == 18
    for rec in steps:
        assert torch.equal(rec.input_ids, io["sample.step_input_ids"][rec.step]), f"step {rec.step}: input ids"
        torch.testing.assert_close(rec.logits, io["sample.step_guided_logits"][rec.step], atol=ATOL, rtol=RTOL)
    assert ids.shape == (2, *GRID)
    assert torch.equal(ids.reshape(2, -1), io["sample.final_token_ids"])


def test_seeded_generator_reproduces_the_release_noise(maskgit_io):
    """torch.manual_seed(6) in the release = a generator seeded 6 here: same Gumbel draws, same ids."""
    model, io = maskgit_io
    steps: list[SamplingStep] = []
    ids = sample_tokens(model, io["input.text_embeds"], io["input.text_mask"], GRID,
                        generator=torch.Generator().manual_seed(6), on_step=steps.append)
    assert torch.equal(ids.reshape(2, -1), io["sample.final_token_ids"])
    for rec in steps:
        torch.testing.assert_close(rec.noise, io["sample.step_gumbel_noise"][rec.step], atol=1e-5, rtol=1e-6)


def test_sampled_ids_decode_to_the_release_video(fixtures_dir: Path, sampling_run):
    ids, _, io = sampling_run
    meta = json.loads((fixtures_dir / "ctvit.json").read_text())
    config = CTViTConfig.from_reference_kwargs(meta["constructor_kwargs"])
    ctvit = CTViT(config)
    ctvit.load_state_dict(convert_ctvit_state_dict(load_file(fixtures_dir / "ctvit_weights.safetensors"), config))
    with torch.no_grad():
        video = ctvit.eval().decode_from_ids(ids)
    torch.testing.assert_close(video, io["sample.video"], atol=ATOL, rtol=RTOL)
