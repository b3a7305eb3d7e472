"""The high-frequency metric on synthetic images whose spectra are known exactly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from generatect_kedro.metrics.frequency import (
    cosine_image,
    high_frequency_mask,
    high_frequency_power,
    high_frequency_scores,
    highpass,
    lowres_nyquist,
)

N = 64  # full-res side; scale 2 → cutoff 0.25 cycles/pixel = 16 cycles across the image


def low_and_high(low_amp: float = 1.0, high_amp: float = 0.3, phase: float = 0.0) -> tuple[torch.Tensor, ...]:
    """A low-frequency cosine (3 cycles, below the cutoff) plus a high one (24 cycles, above it)."""
    low = cosine_image(N, N, 3, 0, low_amp)
    high = cosine_image(N, N, 0, 24, high_amp, phase)
    return low, high


def test_cutoff_is_the_lowres_nyquist_and_the_band_is_radial():
    assert lowres_nyquist(2) == 0.25 and lowres_nyquist(4) == 0.125
    mask = high_frequency_mask(N, N, 0.25)
    assert not mask[0, 0] and not mask[0, 16] and mask[0, 17]  # 16/64 = 0.25 is not strictly above
    # 12 cycles along both axes: each axis is below the cutoff, the radial frequency (0.265) is above it
    assert mask[12, 12] and not mask[11, 11]
    diagonal = cosine_image(N, N, 12, 12, 2.0)
    assert high_frequency_power(diagonal, 0.25).item() == pytest.approx(2.0, rel=1e-12)  # a²/2


def test_power_of_a_known_spectrum():
    low, high = low_and_high(low_amp=1.0, high_amp=0.3)
    volume = torch.stack([low + high, low, 2 * high])  # three slices: HF power 0.045 + 0 + 0.18
    power = high_frequency_power(volume, cutoff=0.25)
    assert power.shape == (1,)
    assert power.item() == pytest.approx(0.3**2 / 2 + 0 + 0.6**2 / 2, rel=1e-12)
    assert high_frequency_power(low + 100.0, 0.25).item() < 1e-20  # an offset (HU vs [-1, 1]) is DC only
    torch.testing.assert_close(highpass(low + high, 0.25), high, atol=1e-12, rtol=0)


def test_scores_of_reference_outputs():
    low, high = low_and_high()
    truth = (low + high)[None]  # one slice as a (1, H, W) volume
    perfect = high_frequency_scores(truth, truth, scale=2)
    assert perfect["hf_power_share"].item() == pytest.approx(1.0)
    assert perfect["hf_correlation"].item() == pytest.approx(1.0)
    assert perfect["hf_relative_error"].item() == pytest.approx(0.0, abs=1e-12)

    smooth = high_frequency_scores(low[None], truth, scale=2)  # an ideal low-pass upsampler
    assert smooth["hf_power_share"].item() == pytest.approx(0.0, abs=1e-12)
    assert smooth["hf_correlation"].item() == pytest.approx(0.0, abs=1e-6)  # numerically zero power
    assert smooth["hf_relative_error"].item() == pytest.approx(1.0)

    inverted = high_frequency_scores((low - high)[None], truth, scale=2)  # the right detail, wrong sign
    assert inverted["hf_power_share"].item() == pytest.approx(1.0)
    assert inverted["hf_correlation"].item() == pytest.approx(-1.0)
    assert inverted["hf_relative_error"].item() == pytest.approx(4.0)

    shifted = low + cosine_image(N, N, 0, 24, 0.3, phase=math.pi / 2)  # same power, in quadrature
    scores = high_frequency_scores(shifted[None], truth, scale=2)
    assert scores["hf_power_share"].item() == pytest.approx(1.0)
    assert scores["hf_correlation"].item() == pytest.approx(0.0, abs=1e-12)
    assert scores["hf_relative_error"].item() == pytest.approx(2.0)
    # the identity relating the three
    share, corr = scores["hf_power_share"], scores["hf_correlation"]
    assert scores["hf_relative_error"].item() == pytest.approx((share + 1 - 2 * corr * share.sqrt()).item())


def test_noise_has_power_but_no_correlation():
    low, high = low_and_high(high_amp=0.3)
    truth = torch.stack([low + high] * 8)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(8, N, N, generator=generator, dtype=torch.float64)
    noise = highpass(noise, 0.25)
    noise *= math.sqrt(high_frequency_power(truth, 0.25).item() / high_frequency_power(noise, 0.25).item())
    scores = high_frequency_scores(torch.stack([low] * 8) + noise, truth, scale=2)
    assert scores["hf_power_share"].item() == pytest.approx(1.0)
    assert abs(scores["hf_correlation"].item()) < 0.05
    assert scores["hf_relative_error"].item() == pytest.approx(2.0, abs=0.1)


def test_trilinear_upsampling_restores_little_and_batches_are_per_volume():
    generator = torch.Generator().manual_seed(1)
    # a blocky "phantom": random 8x8 blocks have strong edges, i.e. power far above the cutoff
    truth = F.interpolate(torch.rand(2, 3, 8, 8, generator=generator), size=(N, N), mode="nearest")
    lowres = F.interpolate(truth, size=(N // 2, N // 2), mode="area")
    trilinear = F.interpolate(lowres, size=(N, N), mode="bilinear", align_corners=False)
    scores = high_frequency_scores(trilinear, truth, scale=2)
    assert scores["hf_power_share"].shape == (2,)
    assert (scores["hf_power_share"] < 0.3).all()  # only the aliases of the low band
    # what little it has is in phase with the grid-aligned edges: it lowers the error below "no HF at all"
    assert (scores["hf_correlation"] > 0.5).all()
    assert ((scores["hf_relative_error"] > 0.3) & (scores["hf_relative_error"] < 1.0)).all()
    with pytest.raises(ValueError, match="exactly one"):
        high_frequency_scores(truth, truth)
    with pytest.raises(ValueError, match="differ in shape"):
        high_frequency_scores(truth, lowres, scale=2)
