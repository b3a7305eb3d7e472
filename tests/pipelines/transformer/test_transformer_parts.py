"""Pieces of the transformer stage without Kedro: conditioning statistics and regions, seeded sampling noise,
the training task with and without a token critic, the registry builder, and parameter errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from generatect_kedro.models.maskgit import MaskGIT, MaskGITConfig
from generatect_kedro.models.maskgit_sampling import MaskGITSamplerConfig, sample_tokens
from generatect_kedro.models.text_encoder import TextEncoderError
from generatect_kedro.models.token_critic import TokenCritic, critic_config
from generatect_kedro.pipelines.transformer import build_maskgit
from generatect_kedro.pipelines.transformer.conditioning import Region, compare, measure, seeded_gumbel
from generatect_kedro.pipelines.transformer.nodes import ctvit_lineage, maskgit_config
from generatect_kedro.pipelines.transformer.task import (
    MaskGITTask,
    MaskGITWithCritic,
    OptimizerSettings,
    collate_token_text,
)
from generatect_kedro.text.prompt_cache import embed_prompts
from generatect_kedro.training import Trainer, TrainerConfig

TINY = MaskGITConfig(num_tokens=16, dim=16, dim_context=8, depth=1, heads=2, dim_head=8, max_seq_len=32)
GRID = (3, 2, 2)


def test_region_mask_in_display_order():
    region = Region.from_params("bases", {"d": [0.0, 0.5], "h": [0.5, 1.0], "w": [[0.0, 0.25], [0.75, 1.0]]})
    mask = region.mask((4, 4, 8))
    assert mask.sum() == 2 * 2 * 4
    assert mask[:2, 2:, :2].all() and mask[:2, 2:, 6:].all() and not mask[2:].any() and not mask[:, :2].any()
    with pytest.raises(ValueError, match="ranges"):
        Region.from_params("bad", {"d": [0.5, 0.2], "h": [0, 1], "w": [0, 1]})
    tiny = Region.from_params("tiny", {"d": [0.1, 0.11], "h": [0.0, 0.01], "w": [0.99, 1.0]})
    assert tiny.mask((3, 3, 3)).sum() == 1  # every range keeps at least one voxel


def test_measure_reads_region_means():
    hu = np.full((4, 4, 4), -800.0, dtype=np.float32)
    hu[:2, 2:] = 0.0
    regions = {"low_back": Region("low_back", (0.0, 0.5), (0.5, 1.0), ((0.0, 1.0),)),
               "front": Region("front", (0.0, 1.0), (0.0, 0.5), ((0.0, 1.0),))}
    values = measure(hu, regions, (1.0, 1.0, 1.0))
    assert values["low_back_mean_hu"] == 0.0 and values["front_mean_hu"] == -800.0
    assert "cardiothoracic_ratio" in values  # NaN or a number, never an exception


def test_compare_reports_direction_spread_and_effect_size():
    up = compare([3.0, 4.0, 5.0], [0.0, 1.0, 2.0], direction=1)
    assert up["difference"] == pytest.approx(3.0) and up["pooled_sd"] == pytest.approx(1.0)
    assert up["cohens_d"] == pytest.approx(3.0) and up["auc"] == 1.0 and up["p_value"] < 0.05
    assert up["paired_mean"] == pytest.approx(3.0) and up["paired_positive_fraction"] == 1.0
    down = compare([3.0, 4.0, 5.0], [0.0, 1.0, 2.0], direction=-1)  # the wrong way round: no effect claimed
    assert down["difference"] == pytest.approx(-3.0) and down["cohens_d"] < 0 and down["p_value"] > 0.5
    same = compare([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same["difference"] == 0.0 and same["auc"] == 0.5
    assert compare([1.0, math.nan], [0.0, 1.0])["difference"] is None  # one finite value is too few


def test_seeded_noise_reproduces_batch_of_one_sampling_per_seed():
    torch.manual_seed(0)
    model = MaskGIT(TINY).eval()
    text = torch.randn(1, 5, 8)
    config = MaskGITSamplerConfig(steps=4, cond_scale=2.0)
    alone = [sample_tokens(model, text, None, GRID, config=config, generator=torch.Generator().manual_seed(s))
             for s in (3, 4)]
    batch = sample_tokens(model, text.expand(2, -1, -1), None, GRID, config=config, noise_fn=seeded_gumbel([3, 4]))
    assert torch.equal(batch[0], alone[0][0]) and torch.equal(batch[1], alone[1][0])


def _batches(n: int = 6):
    rng = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 16, GRID, generator=rng), torch.randn(int(2 + i % 3), 8, generator=rng))
            for i in range(n)]


@pytest.mark.parametrize("with_critic", [False, True])
def test_task_trains_with_the_shared_trainer(with_critic, tmp_path):
    torch.manual_seed(0)
    maskgit = MaskGIT(TINY)
    critic = TokenCritic(critic_config(TINY, depth=1)) if with_critic else None
    items = _batches()
    task = MaskGITTask(maskgit, OptimizerSettings(lr=1e-3, warmup_steps=2, decay="cosine"), 4,
                       cond_drop_prob=0.5, levels=4, critic=critic, validation=collate_token_text(items[:2]),
                       validation_repeats=2)
    config = TrainerConfig(max_steps=4, batch_size=3, log_every=4, validate_every=2, show_progress=False,
                           checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=2)
    result = Trainer(config, name="transformer").fit(task, items, collate_token_text)
    assert result.step == 4 and "train/maskgit/text_kept" in result.metrics
    assert ("train/critic/loss" in result.metrics) == with_critic
    assert task.last_validation["null_loss"] > 0 and "text_gain" in task.last_validation
    if with_critic:  # the registry builder rebuilds MaskGIT + critic from the registered config
        state = {**maskgit.state_dict(), **{f"critic.{k}": v for k, v in critic.state_dict().items()}}
        module = build_maskgit({"model": TINY.to_dict(), "critic": critic.config.to_dict()})
        assert isinstance(module, MaskGITWithCritic)
        module.load_state_dict(state, strict=True)
    else:
        assert type(build_maskgit({"model": TINY.to_dict()})) is MaskGIT


def test_optimizer_schedule_and_unknown_keys():
    settings = OptimizerSettings.from_params({"lr": 1.0, "warmup_steps": 4, "decay": "cosine",
                                              "final_lr_ratio": 0.1})
    scheduler = settings.scheduler(settings.adam(torch.nn.Linear(1, 1), 1.0), max_steps=14)
    factors = [scheduler.lr_lambdas[0](s) for s in (0, 3, 4, 9, 14)]
    assert factors[0] == 0.25 and factors[1] == 1.0 and factors[2] == 1.0 and factors[4] == pytest.approx(0.1)
    assert 0.1 < factors[3] < 1.0
    with pytest.raises(ValueError, match="warmup"):
        OptimizerSettings.from_params({"warmup": 5})


def test_parameter_errors_are_clear():
    with pytest.raises(TextEncoderError, match="transformer.text_encoder.path"):  # conf/base leaves it null
        embed_prompts(pd.DataFrame({"volume_id": ["v"], "prompt": ["60 years old male: Cardiomegaly."]}),
                      {"text_encoder": {"path": None}, "model": {"dim_context": 768}})
    with pytest.raises(ValueError, match="codebook"):
        maskgit_config({"model": {"num_tokens": 99}}, codebook_size=512)
    index = pd.DataFrame({"ctvit_model": ["generatect-ctvit"] * 2, "ctvit_version": ["1", "2"],
                          "ctvit_weights_sha256": ["a", "b"], "codebook_size": [512, 512]})
    with pytest.raises(ValueError, match="re-run"):
        ctvit_lineage(index)
