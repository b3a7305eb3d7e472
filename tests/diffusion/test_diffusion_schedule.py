"""Noise schedules and posterior algebra equal the release's (fixture ``schedule.*``), plus their identities."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from generatect_kedro.diffusion import COSINE, LINEAR, AncestralSampler, NoiseSchedule, dynamic_threshold
from generatect_kedro.diffusion.dpm_solver import time_from_log_snr


@pytest.fixture(scope="module")
def io(fixtures_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(fixtures_dir / "superres_unet_io.safetensors")


@pytest.mark.fixtures
@pytest.mark.parametrize("kind", ["cosine", "linear"])
@pytest.mark.parametrize("quantity", ["log_snr", "alpha", "sigma"])
def test_schedule_values_match_release(io, kind, quantity):
    schedule = NoiseSchedule(kind)
    t = io["schedule.t"]
    alpha, sigma = schedule.alpha_sigma(t)
    got = {"log_snr": schedule.log_snr(t), "alpha": alpha, "sigma": sigma}[quantity]
    # observed max |diff| ≤ 1.2e-7 (cosine log-SNR; the release's is TorchScript-compiled)
    torch.testing.assert_close(got, io[f"schedule.{kind}.{quantity}"], atol=1e-6, rtol=1e-6)


@pytest.mark.fixtures
def test_fixture_inputs_are_the_schedules_at_the_recorded_times(io):
    torch.testing.assert_close(COSINE.log_snr(io["aux.t"]), io["input.time"])
    torch.testing.assert_close(LINEAR.log_snr(io["aux.lowres_t"]), io["input.lowres_noise_times"])
    torch.testing.assert_close(COSINE.q_sample(io["aux.x_start"], io["aux.t"], io["aux.noise"]), io["input.x"])
    lowres = LINEAR.q_sample(io["aux.lowres_clean_normed"], io["aux.lowres_t"], io["aux.lowres_noise"])
    torch.testing.assert_close(lowres, io["input.lowres_cond_img"])


@pytest.mark.fixtures
def test_sampling_times_match_release(io):
    sampler = AncestralSampler()
    sampler.set_timesteps(3)
    expected = io["schedule.sampling_times"]  # (steps, [t, t_next], batch)
    torch.testing.assert_close(sampler.timesteps, expected[:, 0, 0], atol=0, rtol=0)
    torch.testing.assert_close(torch.stack([sampler.next_time(t) for t in sampler.timesteps]), expected[:, 1, 0])
    torch.testing.assert_close(sampler.next_time(expected[1, 0]), expected[1, 1])  # batch-wise times too


@pytest.mark.fixtures
@pytest.mark.parametrize("i, name", [(0, "mean"), (1, "variance"), (2, "log_variance")])
def test_q_posterior_matches_release(io, i, name):
    got = COSINE.q_posterior(io["aux.x_start"], io["input.x"], io["aux.t"], io["aux.t"] - 0.2)[i]
    expected = io[f"schedule.q_posterior.{name}"]
    torch.testing.assert_close(got.expand_as(expected), expected, atol=1e-6, rtol=1e-5)  # observed: exact


@pytest.mark.fixtures
def test_predict_start_from_v_matches_release(io):
    got = COSINE.predict_start_from_v(io["input.x"], io["aux.t"], io["eval.out"])
    torch.testing.assert_close(got, io["schedule.predict_start_from_v"], atol=1e-6, rtol=1e-5)  # observed 1.2e-7


def test_v_parametrisation_identities():
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 1, 8, 8, generator=gen), torch.randn(4, 1, 8, 8, generator=gen)
    t = torch.tensor([0.05, 0.3, 0.7, 0.95])
    x_t = COSINE.q_sample(x0, t, eps)
    v = COSINE.v_target(x0, t, eps)
    torch.testing.assert_close(COSINE.predict_start_from_v(x_t, t, v), x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(COSINE.predict_noise_from_v(x_t, t, v), eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(COSINE.predict_start_from_noise(x_t, t, eps), x0, atol=1e-4, rtol=1e-4)
    alpha, sigma = COSINE.alpha_sigma(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(4))
    # posterior of the exact x0 is consistent with forward noising: t_next = t gives back x_t, no variance
    mean, var, _ = COSINE.q_posterior(x0, x_t, t, t)
    torch.testing.assert_close(mean, x_t, atol=1e-5, rtol=1e-5)
    assert var.abs().max() < 1e-7


def test_cosine_clamp_and_inverse():
    assert COSINE.log_snr(0.0).item() == pytest.approx(8.7692, abs=1e-3)
    assert COSINE.log_snr(torch.tensor(-0.008)).item() == pytest.approx(-torch.log(torch.tensor(1e-5)).item())  # clamp
    for schedule in (COSINE, LINEAR):
        t = torch.linspace(0.02, 0.98, 9, dtype=torch.float64)
        torch.testing.assert_close(time_from_log_snr(schedule, schedule.log_snr(t)), t, atol=1e-6, rtol=0)


def test_dynamic_threshold():
    x = torch.stack([torch.linspace(-0.5, 0.5, 100), torch.linspace(-3, 3, 100)]).reshape(2, 1, 10, 10)
    out = dynamic_threshold(x, 0.95)
    torch.testing.assert_close(out[0], x[0])  # s clamps to 1: inside [-1, 1] nothing changes
    s = torch.quantile(x[1].abs().flatten(), 0.95)
    torch.testing.assert_close(out[1], x[1].clamp(-s, s) / s)
    assert out[1].abs().max() == pytest.approx(1.0)
