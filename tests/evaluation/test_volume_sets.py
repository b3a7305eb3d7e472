"""Streaming volume sets: generated NIfTI back on the grid scale, resizing, dataset protocol, joins."""

import nibabel as nib
import numpy as np
import pytest
import torch

from generatect_kedro.cohort.grids import GridVolume, scale_hu
from generatect_kedro.evaluation.volume_sets import (
    VolumeSet,
    grid_from_hu,
    nifti_grid_loader,
    partition_grid_loader,
    predict_scores,
    resize_grid,
)
from generatect_kedro.volume import affine_from_spacing, from_dhw, hu_to_int16


def test_a_generated_nifti_loads_as_the_grid_it_was_written_from(tmp_path):
    rng = np.random.default_rng(0)
    grid = rng.uniform(-1, 1, (5, 8, 6)).astype(np.float32)
    grid[0, 0, 0], grid[0, 0, 1] = -1.0, 1.0
    window = (-1000.0, 1000.0)
    hu = window[0] + (grid + 1) * 0.5 * (window[1] - window[0])  # what the sampler writes (to_hu_volume)
    path = tmp_path / "gen.nii.gz"
    nib.save(nib.Nifti1Image(from_dhw(hu_to_int16(hu)), affine_from_spacing((0.7, 0.8, 2.0))), str(path))
    loaded = nifti_grid_loader(path, window)()
    assert loaded.shape == (5, 8, 6) and loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, grid, atol=1.0 / 1000 + 1e-6)  # int16 rounding: 0.5 HU = 0.0005
    # a known HU value lands where preprocessing puts it; outside the window it is clipped
    assert grid_from_hu(np.array([-1000.0, 0.0, 1000.0, 3000.0]), window).tolist() == [-1.0, 0.0, 1.0, 1.0]
    np.testing.assert_array_equal(grid_from_hu(hu, window), scale_hu(hu, window))


@pytest.mark.parametrize("shape", [None, (5, 8, 6), (3, 4, 4), (9, 16, 12)])
def test_resize_grid_shapes(shape):
    grid = np.linspace(-1, 1, 5 * 8 * 6, dtype=np.float32).reshape(5, 8, 6)
    out = resize_grid(grid, shape)
    assert out.shape == (shape or grid.shape) and out.dtype == np.float32
    assert -1.0 <= out.min() and out.max() <= 1.0
    if shape in (None, (5, 8, 6)):
        assert out is grid or np.array_equal(out, grid)


def test_volume_set_is_a_classifier_dataset_and_joins_and_caches():
    calls = []

    def loader(value):
        def load():
            calls.append(value)
            return np.full((3, 4, 4), value, dtype=np.float32)
        return load

    labels = np.eye(3, 18, dtype=np.float32)
    a = VolumeSet(["x", "y"], [loader(0.1), loader(0.2)], labels[:2], shape=(3, 8, 8), cache=True)
    volume, y = a[1]
    assert volume.shape == (1, 3, 8, 8) and torch.allclose(volume, torch.full_like(volume, 0.2))
    assert y.tolist() == labels[1].tolist()
    a.grid(1)
    assert calls == [0.2]  # cached
    b = VolumeSet(["z"], [loader(0.3)], labels[2:])
    joined = a + b
    assert len(joined) == 3 and joined.names == ["x", "y", "z"] and joined.labels.shape == (3, 18)
    assert joined.grid(2).shape == (3, 8, 8)  # the first set's input shape applies to the join
    assert [g.mean() for g in joined.subset([2, 0]).grids()] == pytest.approx([0.3, 0.1])


def test_predict_scores_streams_batches_in_order(tmp_path):
    class MeanModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):  # (b, 1, D, H, W) → (b, 2) logits
            m = x.mean(dim=(1, 2, 3, 4))
            return torch.stack([m, -m], dim=1) * self.w

    values = [0.5, -0.5, 0.0, 1.0, -1.0]
    grids = [GridVolume(np.full((2, 4, 4), v, dtype=np.float32), np.eye(4)) for v in values]
    volumes = VolumeSet([str(v) for v in values], [partition_grid_loader(lambda g=g: g) for g in grids],
                        np.zeros((5, 2)))
    scores = predict_scores(MeanModel(), volumes, batch_size=2)
    np.testing.assert_allclose(scores[:, 0], 1 / (1 + np.exp(-np.array(values))), rtol=1e-6)
