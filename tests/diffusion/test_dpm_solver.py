"""DPM-Solver++(2M): contract, and accuracy on an analytic denoiser against the release's ancestral sampler.

Test case: data x₀ ~ N(μ, diag(s²)) over 16 "pixels" (μ ∈ [−0.5, 0.5], s ∈ [0.05, 0.3]). Its exact
posterior mean E[x₀ | x_t] = μ + α·s²/(α²s² + σ²)·(x_t − α·μ) is the denoiser (v = (α·x_t − x̂₀)/σ), so
every error below is the sampler's. Measures, from 20,000 samples:
* ``w2``: per-pixel 2-Wasserstein distance between Gaussian fits of two sample sets (|Δmean|² + |Δstd|²)^½,
  averaged over pixels. The ancestral sampler is stochastic and the solver deterministic, so per-sample
  differences (mean abs / PSNR) between them are meaningless; their output *distributions* should agree.
* ``flow``: mean |x − x_exact| against the exact probability-flow ODE map of the same x_T (DPM only).
Observed (seeded, 2 threads), all vs the ancestral sampler at 250 steps (itself w2 0.0068 from the exact
marginal: Monte-Carlo floor of two 20k-sample sets plus its own error):
    DPM-Solver++2M 10 steps  w2 0.0050  (flow 0.0024)      20 steps  w2 0.0090  (flow 0.0018)
    naive, 10 steps: DDIM (DPM++1) w2 0.032 (flow 0.031), ancestral (release) w2 0.060;
    ancestral 25 steps (the release's setting) w2 0.032; DPM++2M 10 steps on the release's time grid 0.033.
So 10 DPM-Solver++ steps sit at the sampling-noise floor of a 250-step ancestral run, 6× closer than the
release's own 25 steps, and 12× closer than ancestral at the same 10 steps.
SDE-DPM-Solver++(2M), w2 vs the exact marginal (same seed; ODE / ancestral at the same count in brackets):
    8 steps 0.024 (0.010 / 0.076), 10 steps 0.0098 (0.0035 / 0.067), 15 steps 0.0048 (0.0037 / 0.053),
    25 steps 0.0031 (0.0022 / 0.038).
"""

from __future__ import annotations

import pytest
import torch

from generatect_kedro.diffusion import (
    COSINE,
    AncestralSampler,
    DPMSolverPlusPlus2M,
    DPMSolverPlusPlus2MSDE,
    GeneratorNoise,
    make_sampler,
    sample_loop,
)

N, P = 20_000, 16


@pytest.fixture(scope="module")
def gaussian():
    gen = torch.Generator().manual_seed(0)
    mu = torch.rand(P, generator=gen) - 0.5
    s = torch.rand(P, generator=gen) * 0.25 + 0.05

    def denoiser(x, log_snr):
        alpha, sigma = (torch.sigmoid(v).sqrt().reshape(-1, 1) for v in (log_snr, -log_snr))
        x0 = mu + alpha * s**2 / (alpha**2 * s**2 + sigma**2) * (x - alpha * mu)
        return (alpha * x - x0) / sigma

    a0, s0 = COSINE.alpha_sigma(0.0)
    return denoiser, mu, s, a0 * mu, (a0**2 * s**2 + s0**2).sqrt()


def sample(denoiser, sampler, steps: int, seed: int) -> torch.Tensor:
    noise = GeneratorNoise(N, torch.Generator().manual_seed(seed))
    return sample_loop(denoiser, sampler, (N, P), steps=steps, noise=noise)


def w2(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> float:
    return ((x.mean(0) - mean) ** 2 + (x.std(0) - std) ** 2).sqrt().mean().item()


def exact_flow(x_T: torch.Tensor, mu, s, mean0, std0, t_start: float) -> torch.Tensor:
    """The probability-flow ODE keeps z = (x_t − α_t·μ)/(α_t²s² + σ_t²)^½ constant for Gaussian data."""
    a, sg = COSINE.alpha_sigma(t_start)
    return mean0 + std0 * (x_T - a * mu) / (a**2 * s**2 + sg**2).sqrt()


def test_dpm_solver_at_few_steps_matches_ancestral_at_many(gaussian):
    denoiser, mu, s, mean0, std0 = gaussian
    reference = sample(denoiser, AncestralSampler(dynamic_thresholding=False), 250, seed=2)
    ref_mean, ref_std = reference.mean(0), reference.std(0)
    assert w2(reference, mean0, std0) < 0.008  # the long ancestral run is right (Monte-Carlo floor ≈ 0.004)

    x_T = torch.randn(N, P, generator=torch.Generator().manual_seed(1))  # what sample() draws first for seed 1
    results = {}
    for name, sampler, steps in [
        ("dpm10", DPMSolverPlusPlus2M(dynamic_thresholding=False), 10),
        ("dpm20", DPMSolverPlusPlus2M(dynamic_thresholding=False), 20),
        ("ddim10", DPMSolverPlusPlus2M(dynamic_thresholding=False, solver_order=1), 10),
        ("ancestral10", AncestralSampler(dynamic_thresholding=False), 10),
    ]:
        x = sample(denoiser, sampler, steps, seed=1)
        flow = None
        if name.startswith(("dpm", "ddim")):
            flow = (x - exact_flow(x_T, mu, s, mean0, std0, float(sampler.times[0]))).abs().mean().item()
        results[name] = (w2(x, ref_mean, ref_std), flow)

    assert results["dpm10"][0] < 0.012 and results["dpm20"][0] < 0.012  # at the sampling-noise floor
    for baseline in ("ddim10", "ancestral10"):
        assert results["dpm10"][0] * 3 < results[baseline][0], results
    assert results["dpm10"][1] < 0.005 and results["dpm20"][1] < results["dpm10"][1]
    assert results["dpm10"][1] * 5 < results["ddim10"][1], results


def test_time_spacing_grid_is_the_release_grid_and_logsnr_is_uniform():
    sampler = DPMSolverPlusPlus2M(spacing="time")
    sampler.set_timesteps(4)
    torch.testing.assert_close(sampler.times, torch.linspace(1, 0, 5))
    sampler = DPMSolverPlusPlus2M()
    sampler.set_timesteps(4)
    log_snr = COSINE.log_snr(sampler.times.double())
    uniform = torch.linspace(-10, COSINE.log_snr(0.0).item(), 5, dtype=torch.float64)
    torch.testing.assert_close(log_snr[:-1], uniform[:-1], atol=1e-4, rtol=0)
    assert sampler.times[-1] == 0


def test_contract_order_state_and_determinism(gaussian):
    denoiser = gaussian[0]
    sampler = DPMSolverPlusPlus2M()
    assert not sampler.stochastic
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sampler.step(torch.zeros(2, P), 1.0, torch.zeros(2, P))
    sampler.set_timesteps(5)
    x = torch.randn(2, P, generator=torch.Generator().manual_seed(0))
    first = sampler.step(denoiser(x, sampler.model_condition(sampler.timesteps[0]).expand(2)), sampler.timesteps[0], x)
    with pytest.raises(RuntimeError, match="out of order"):
        sampler.step(first.prev_sample, sampler.timesteps[3], first.prev_sample)
    runs = [sample_loop(denoiser, DPMSolverPlusPlus2M(), (4, P), steps=6,
                        noise=GeneratorNoise(4, torch.Generator().manual_seed(5))) for _ in range(2)]
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)  # a reused seed → the same output, bit for bit
    reused = DPMSolverPlusPlus2M()  # set_timesteps resets the multistep history
    a = sample_loop(denoiser, reused, (4, P), steps=6, noise=GeneratorNoise(4, torch.Generator().manual_seed(5)))
    b = sample_loop(denoiser, reused, (4, P), steps=6, noise=GeneratorNoise(4, torch.Generator().manual_seed(5)))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_first_step_is_ddim():
    """One first-order step equals DDIM: x_next = α_next·x̂₀ + σ_next·ε̂."""
    sampler = DPMSolverPlusPlus2M(dynamic_thresholding=False, spacing="time")
    sampler.set_timesteps(4)
    gen = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 1, 4, 4, generator=gen), torch.randn(3, 1, 4, 4, generator=gen)
    t, t_next = sampler.timesteps[1], sampler.times[2]
    sampler._last_index = 0  # pretend step 0 ran (first-order since no history)
    out = sampler.step(v, t, x)
    x0, eps = COSINE.predict_start_from_v(x, t, v), COSINE.predict_noise_from_v(x, t, v)
    a, s = COSINE.alpha_sigma(t_next)
    torch.testing.assert_close(out.prev_sample, a * x0 + s * eps, atol=1e-5, rtol=1e-5)


def test_sde_solver_samples_the_marginal_at_few_steps(gaussian):
    """The SDE variant reaches the sampling floor by ~15 steps; ancestral at 15 is 10× further."""
    denoiser, _, _, mean0, std0 = gaussian
    sde15 = w2(sample(denoiser, DPMSolverPlusPlus2MSDE(dynamic_thresholding=False), 15, seed=1), mean0, std0)
    sde5 = w2(sample(denoiser, DPMSolverPlusPlus2MSDE(dynamic_thresholding=False), 5, seed=1), mean0, std0)
    ancestral15 = w2(sample(denoiser, AncestralSampler(dynamic_thresholding=False), 15, seed=1), mean0, std0)
    assert sde15 < 0.008, sde15  # the exact marginal, within the Monte-Carlo floor of 20k samples
    assert sde15 * 5 < ancestral15 and sde15 * 5 < sde5, (sde15, ancestral15, sde5)


def test_sde_solver_contract_noise_and_noise_free_last_step(gaussian):
    denoiser = gaussian[0]
    assert isinstance(make_sampler("dpm++2m-sde"), DPMSolverPlusPlus2MSDE)
    sampler = DPMSolverPlusPlus2MSDE(dynamic_thresholding=False)
    assert sampler.stochastic  # the sampling loop hands it fresh noise each step

    def run(seed: int) -> torch.Tensor:
        return sample_loop(denoiser, DPMSolverPlusPlus2MSDE(), (4, P), steps=6,
                           noise=GeneratorNoise(4, torch.Generator().manual_seed(seed)))

    torch.testing.assert_close(run(5), run(5), atol=0, rtol=0)
    assert (run(5) - run(6)).abs().mean() > 0.01
    # a step's noise moves the sample by σ_next·√(1 − e^{−2h})·ε; the last step (onto t = 0) takes none
    x = torch.randn(2, P, generator=torch.Generator().manual_seed(0))

    def first_step(steps: int, noise: torch.Tensor) -> torch.Tensor:
        solver = DPMSolverPlusPlus2MSDE(dynamic_thresholding=False)
        solver.set_timesteps(steps)
        t = solver.timesteps[0]
        return solver.step(denoiser(x, solver.model_condition(t).expand(2)), t, x, noise=noise).prev_sample

    solver = DPMSolverPlusPlus2MSDE()
    solver.set_timesteps(3)
    alpha, sigma = COSINE.alpha_sigma(solver.times[:2].double())
    h = torch.log(alpha[1] / sigma[1]) - torch.log(alpha[0] / sigma[0])
    expected = float(sigma[1] * torch.sqrt(-torch.expm1(-2 * h)))
    moved = first_step(3, torch.ones_like(x)) - first_step(3, torch.zeros_like(x))
    torch.testing.assert_close(moved, torch.full_like(x, expected), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(first_step(1, torch.ones_like(x)), first_step(1, torch.zeros_like(x)), atol=0, rtol=0)
