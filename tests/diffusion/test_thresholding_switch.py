"""The per-stage x̂₀ thresholding switch: dynamic thresholding (as released) vs a clamp, threaded from the cascade
stage through the volume/slice upsamplers into both samplers.

Stand-in network: it returns the v for which x̂₀ = α·x − σ·v is a fixed image, half "air" overshooting to −1.2,
half "tissue" at 0.3. Dynamic thresholding at the 0.95 quantile (s = 1.2) rescales the whole slice (tissue
0.3 → 0.25); off, x̂₀ is clamped (ancestral) or left alone (DPM-Solver++), the output clamped, tissue stays 0.3.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from generatect_kedro.diffusion import Cascade, CascadeStage, upsample_slices, upsample_volume
from generatect_kedro.diffusion.schedule import log_snr_to_alpha_sigma
from generatect_kedro.diffusion.upsample import GeneratorNoise


class FixedStart(nn.Module):
    """v such that the sampler's x̂₀ is ``air`` on the left half of the slice and ``tissue`` on the right."""

    def __init__(self, air: float = -1.2, tissue: float = 0.3):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # a device for upsample_volume
        self.air, self.tissue = air, tissue

    def target(self, x: torch.Tensor) -> torch.Tensor:
        x0 = torch.full_like(x, self.tissue)
        x0[..., : x.shape[-1] // 2] = self.air
        return x0

    def forward(self, x, log_snr, **conditioning):
        alpha, sigma = log_snr_to_alpha_sigma(log_snr.reshape(-1, 1, 1, 1).to(x.dtype))
        return (alpha * x - self.target(x)) / sigma


def halves(out: torch.Tensor) -> tuple[float, float]:
    w = out.shape[-1] // 2
    return float(out[..., :w].mean()), float(out[..., w:].mean())


def run(sampler: str, unet: nn.Module | None = None, **switch) -> torch.Tensor:
    lowres = torch.zeros(2, 1, 4, 4)
    return upsample_slices(unet or FixedStart(), lowres, size=(8, 8), sampler=sampler, steps=6,
                           lowres_noise_level=0.0, noise=GeneratorNoise(2, torch.Generator().manual_seed(0)),
                           **switch)


@pytest.mark.parametrize("sampler", ["ancestral", "dpm++2m"])
def test_on_rescales_the_slice_off_keeps_tissue(sampler):
    on = run(sampler)  # the default: as released
    assert torch.equal(on, run(sampler, dynamic_thresholding=True, threshold_percentile=0.95))
    off = run(sampler, dynamic_thresholding=False)
    air_on, tissue_on = halves(on)
    air_off, tissue_off = halves(off)
    assert air_on == pytest.approx(-1.0, abs=0.02) and air_off == pytest.approx(-1.0, abs=0.02)
    assert tissue_on == pytest.approx(0.3 / 1.2, abs=0.02)  # the whole slice divided by s = 1.2
    assert tissue_off == pytest.approx(0.3, abs=0.02)


@pytest.mark.parametrize("sampler", ["ancestral", "dpm++2m"])
def test_percentile_is_threaded(sampler):
    # the 0.4 quantile of |x̂₀| is a tissue value (0.3 < 1): s = max(1, 0.3) = 1, i.e. a plain clamp
    low = run(sampler, dynamic_thresholding=True, threshold_percentile=0.4)
    assert halves(low)[1] == pytest.approx(0.3, abs=0.02)


@pytest.mark.parametrize("sampler", ["ancestral", "dpm++2m"])
def test_on_and_off_agree_when_the_prediction_stays_in_range(sampler):
    unet = FixedStart(air=-0.9, tissue=0.3)
    torch.testing.assert_close(run(sampler, unet), run(sampler, unet, dynamic_thresholding=False))


def test_cascade_stage_carries_the_switch():
    unet, volume = FixedStart(), torch.zeros(3, 4, 4)
    for flag in (True, False):
        stage = CascadeStage(unet=unet, scale=2, sampler="dpm++2m", steps=4, lowres_noise_level=0.0,
                             dynamic_thresholding=flag)
        seed = torch.randint(0, 2**63 - 1, (1,), generator=torch.Generator().manual_seed(5)).item()
        direct = upsample_volume(unet, volume, scale=2, sampler="dpm++2m", steps=4, lowres_noise_level=0.0,
                                 generator=torch.Generator().manual_seed(seed), dynamic_thresholding=flag)
        cascaded = Cascade([stage])(volume, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(cascaded, direct)
        assert halves(cascaded)[1] == pytest.approx(0.25 if flag else 0.3, abs=0.02)
