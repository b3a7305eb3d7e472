"""HU-based PSNR / SSIM and the mean-volume baseline against values known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from generatect_kedro.metrics import (
    hu_data_range,
    mean_volume,
    mean_volume_baseline_psnr,
    psnr_hu,
    ssim_hu,
    to_hu,
)
from generatect_kedro.metrics.image_quality import MAX_PSNR_DB


def volumes(b: int = 2, shape=(9, 16, 16)) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(b, *shape) * 1000 - 500  # HU, well inside the window


def test_to_hu_maps_the_window_and_clips():
    grid = torch.tensor([-1.5, -1.0, 0.0, 0.5, 1.0, 2.0])
    assert to_hu(grid).tolist() == [-1000.0, -1000.0, 0.0, 500.0, 1000.0, 1000.0]
    assert to_hu(torch.tensor([0.0]), (-1000, 3000)).item() == 1000.0
    assert hu_data_range() == 2000.0
    with pytest.raises(ValueError):
        hu_data_range((5, 5))


def test_identical_volumes_give_the_cap_and_ssim_one():
    x = volumes()
    assert psnr_hu(x, x).tolist() == [MAX_PSNR_DB, MAX_PSNR_DB]
    torch.testing.assert_close(ssim_hu(x, x), torch.ones(2))
    torch.testing.assert_close(ssim_hu(x, x, mode="volume"), torch.ones(2))


@pytest.mark.parametrize("sigma", [5.0, 20.0, 100.0])
def test_known_noise_gives_the_analytical_psnr(sigma):
    x = volumes()
    signs = torch.where(torch.rand(x.shape) < 0.5, -1.0, 1.0)  # |error| = sigma everywhere: MSE = sigma²
    psnr = psnr_hu(x + sigma * signs, x)
    expected = 20 * math.log10(2000.0 / sigma)
    torch.testing.assert_close(psnr, torch.full((2,), expected), rtol=1e-5, atol=1e-4)


def test_psnr_is_per_volume_and_accepts_channel_axes():
    x = volumes()
    y = x.clone()
    y[1] += 20.0
    psnr = psnr_hu(y.unsqueeze(1), x.unsqueeze(1))
    assert psnr[0] == MAX_PSNR_DB and abs(float(psnr[1]) - 20 * math.log10(100)) < 1e-3
    with pytest.raises(ValueError, match="shape"):
        psnr_hu(x, x[:, :4])


def test_ssim_falls_with_noise_and_rejects_unknown_modes():
    x = volumes()
    noisy = x + 200 * torch.randn(x.shape)
    values = ssim_hu(noisy, x)
    assert ((values > 0) & (values < 0.9)).all()
    assert (ssim_hu(x + 20 * torch.randn(x.shape), x) > values).all()
    with pytest.raises(ValueError, match="mode"):
        ssim_hu(x, x, mode="cube")
    tiny = torch.rand(1, 3, 4, 4) * 100  # kernel shrinks to fit tiny grids
    assert float(ssim_hu(tiny, tiny, mode="volume")) == pytest.approx(1.0)


def test_mean_volume_baseline():
    grids = torch.stack([torch.full((3, 4, 4), -0.5), torch.full((3, 4, 4), 0.5)])  # HU -500 and +500
    mean = mean_volume(g for g in grids)
    assert torch.equal(mean, torch.zeros(3, 4, 4))
    assert mean_volume_baseline_psnr(mean, grids) == pytest.approx(20 * math.log10(2000 / 500), abs=1e-4)
    with pytest.raises(ValueError):
        mean_volume([])
