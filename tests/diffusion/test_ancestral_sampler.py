"""The release's 3-step ancestral sampling run (fixture ``sample.*``), step by step and end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from generatect_kedro.diffusion import AncestralSampler, GeneratorNoise, upsample_slices
from generatect_kedro.models.convert import convert_superres_state_dict
from generatect_kedro.models.unet import UNet, UNetConfig

pytestmark = pytest.mark.fixtures

ATOL, RTOL = 5e-5, 1e-4
STEP_KEYS = ("step_x_in", "step_unet_out", "step_x_start", "step_x_out")


@pytest.fixture(scope="module")
def unet_and_io(fixtures_dir: Path):
    meta = json.loads((fixtures_dir / "superres_unet.json").read_text())
    config = UNetConfig.from_release_superres_config(yaml.safe_load(meta["yaml_used"]))
    unet = UNet(config)
    weights = load_file(fixtures_dir / "superres_unet_weights.safetensors")
    unet.load_state_dict(convert_superres_state_dict(weights, config, prefix=""))
    return unet.eval(), load_file(fixtures_dir / "superres_unet_io.safetensors")


class RecordedNoise:
    """Replays tensors in order (the fixture's every Gaussian draw); records what it served."""

    def __init__(self, draws: list[torch.Tensor]):
        self.draws, self.served = list(draws), []

    def __call__(self, shape: tuple[int, ...]) -> torch.Tensor:
        out = self.draws.pop(0)
        assert tuple(out.shape[1:]) == tuple(shape)
        self.served.append(out)
        return out


class RecordingNoise(GeneratorNoise):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.served: list[torch.Tensor] = []

    def __call__(self, shape):
        out = super().__call__(shape)
        self.served.append(out)
        return out


def run(unet, io, noise):
    steps: dict[str, list[torch.Tensor]] = {k: [] for k in STEP_KEYS}

    def record(_i, _t, x_in, v, out):
        for key, value in zip(STEP_KEYS, (x_in, v, out.pred_original_sample, out.prev_sample)):
            steps[key].append(value)

    start = io["sample.start_image"] * 2 - 1  # the release samples from [0, 1] images, normalised like this
    final = upsample_slices(unet, start, io["input.text_embeds"], io["input.text_mask"], size=(32, 32),
                            sampler=AncestralSampler(), steps=3, lowres_noise_level=0.1, noise=noise, callback=record)
    return {k: torch.stack(v) for k, v in steps.items()}, (final + 1) / 2


def recorded_draws(io) -> list[torch.Tensor]:
    return [io["sample.noise.lowres_aug"], io["sample.noise.init"], *io["sample.noise.step"].unbind(0)]


def test_each_step_matches_release_with_recorded_noise(unet_and_io):
    unet, io = unet_and_io
    noise = RecordedNoise(recorded_draws(io))
    steps, final = run(unet, io, noise)
    assert not noise.draws  # all five draws consumed, in the release's order
    for key in STEP_KEYS:  # observed max |diff|: x_in 1.2e-6, unet_out 5.0e-6, x_start 1.7e-6, x_out 1.7e-6
        torch.testing.assert_close(steps[key], io[f"sample.{key}"], atol=ATOL, rtol=RTOL, msg=key)
    torch.testing.assert_close(final, io["sample.output"], atol=ATOL, rtol=RTOL)  # observed 8.3e-7


def test_seed_alone_reproduces_the_release_random_stream(unet_and_io):
    """One generator seeded 9 draws exactly the release's noises after ``torch.manual_seed(9)``."""
    unet, io = unet_and_io
    noise = RecordingNoise(2, torch.Generator().manual_seed(9))
    _, final = run(unet, io, noise)
    for served, expected in zip(noise.served, recorded_draws(io), strict=True):
        assert torch.equal(served, expected)
    torch.testing.assert_close(final, io["sample.output"], atol=ATOL, rtol=RTOL)


def test_step_function_on_recorded_model_outputs(unet_and_io):
    """The sampler alone (no U-Net): recorded x_in and v at batch-wise times give the recorded x₀ and x_out."""
    _, io = unet_and_io
    sampler = AncestralSampler()
    sampler.set_timesteps(3)
    for s in range(3):
        t = io["sample.step_t"][s]  # (batch,) as the release passes it
        v, x_in, noise = io["sample.step_unet_out"][s], io["sample.step_x_in"][s], io["sample.noise.step"][s]
        out = sampler.step(v, t, x_in, noise=noise)
        torch.testing.assert_close(out.pred_original_sample, io["sample.step_x_start"][s], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out.prev_sample, io["sample.step_x_out"][s], atol=1e-6, rtol=1e-5)
