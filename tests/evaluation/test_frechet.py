"""Fréchet distances: closed forms, invariants, numerical handling, slice selection and the feature networks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from generatect_kedro.evaluation.frechet import (
    ClassifierFeatures,
    SliceSelection,
    TorchScriptI3D,
    TorchScriptInception,
    feature_statistics,
    fid_2d,
    frechet_distance,
    frechet_distance_from_features,
    fvd_3d,
    iter_batches,
    select_slices,
)
from generatect_kedro.models.classifier import AbnormalityClassifier, ClassifierConfig


def test_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 3.0, -2.0])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))  # 5 + (4 + 1 + 0) = 10
    assert expected == pytest.approx(10.0)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(10.0)


def test_closed_form_for_rotated_covariances():
    """Same spectrum in a rotated basis: d² = ‖Δμ‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½), here with commuting Σs."""
    rotation = np.array([[np.cos(0.7), -np.sin(0.7)], [np.sin(0.7), np.cos(0.7)]])
    sigma1 = rotation @ np.diag([4.0, 1.0]) @ rotation.T
    sigma2 = rotation @ np.diag([1.0, 9.0]) @ rotation.T
    # eigenvalues pair up: (4, 1) → (2 − 1)² = 1 and (1, 9) → (1 − 3)² = 4; mean shift (3, 4) → 25
    assert frechet_distance(np.zeros(2), sigma1, np.array([3.0, 4.0]), sigma2) == pytest.approx(30.0)


def test_one_dimensional_closed_form():
    # (m1 − m2)² + (s1 − s2)² for standard deviations s
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-1.0]), np.array([[1.0]])) == \
        pytest.approx(4.0 + 1.0)


def test_identical_sets_give_zero_and_distance_is_symmetric():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(150, 8)) * 1.5 + 0.3
    assert frechet_distance_from_features(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance_from_features(a, b) == pytest.approx(frechet_distance_from_features(b, a), rel=1e-9)
    assert frechet_distance_from_features(a, b) > 1.0


@pytest.mark.parametrize("shift", [0.5, 1.0, 2.0])
def test_mean_shift_adds_exactly_its_squared_norm(shift):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(100, 6))
    assert frechet_distance_from_features(a, a + shift) == pytest.approx(shift**2 * 6, rel=1e-6)


def test_fewer_samples_than_dimensions_stays_finite():
    """n <= F makes both covariances singular (the usual small-cohort case): still a finite, >= 0 number."""
    rng = np.random.default_rng(2)
    value = frechet_distance_from_features(rng.normal(size=(5, 32)), rng.normal(size=(6, 32)))
    assert np.isfinite(value) and value > 0


def test_non_psd_covariance_raises_on_imaginary_part():
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), np.diag([-1.0, 1.0]), np.zeros(2), np.eye(2))


def test_statistics_checks():
    mu, sigma = feature_statistics(np.array([[0.0, 1.0], [2.0, 3.0]]))
    np.testing.assert_allclose(mu, [1.0, 2.0])
    np.testing.assert_allclose(sigma, [[2.0, 2.0], [2.0, 2.0]])  # unbiased (n − 1)
    with pytest.raises(ValueError, match="n >= 2"):
        feature_statistics(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_slice_selection():
    volume = torch.arange(10 * 4 * 6, dtype=torch.float32).reshape(10, 4, 6)
    axial = select_slices(volume, SliceSelection(every=3, skip_ends=0.1))  # skip 1 at each end: 1, 4, 7
    torch.testing.assert_close(axial, volume[[1, 4, 7]])
    coronal = select_slices(volume, SliceSelection(plane="coronal", every=2))
    torch.testing.assert_close(coronal, volume.permute(1, 0, 2)[[0, 2]])
    with pytest.raises(ValueError):
        SliceSelection(plane="oblique")


def test_iter_batches_splits_on_shape_changes():
    volumes = [np.zeros((3, 8, 8)), np.zeros((3, 8, 8)), np.zeros((5, 8, 8)), np.zeros((1, 3, 8, 8))]
    shapes = [tuple(b.shape) for b in iter_batches(volumes, batch_size=4)]
    assert shapes == [(2, 3, 8, 8), (1, 5, 8, 8), (1, 3, 8, 8)]
    assert [tuple(b.shape) for b in iter_batches(np.zeros((5, 1, 2, 8, 8)), 2)] == [(2, 2, 8, 8)] * 2 + [(1, 2, 8, 8)]


@pytest.fixture(scope="module")
def classifier_features():
    torch.manual_seed(0)
    model = AbnormalityClassifier(ClassifierConfig(widths=(4, 8), head_width=8, embed_dim=8, dropout=0.0))
    return ClassifierFeatures(model, name="toy-ct-net", batch_size=8)


def _blob_volumes(n: int, seed: int, lower: bool) -> Tensor:
    """(n, 5, 16, 16) noise with a bright 5×5 blob per volume in the upper or the lower half of the slices."""
    gen = torch.Generator().manual_seed(seed)
    volumes = torch.rand(n, 5, 16, 16, generator=gen) * 0.2 - 0.8
    for i in range(n):
        row = int(torch.randint(0, 4, (1,), generator=gen)) + (9 if lower else 0)
        col = int(torch.randint(0, 12, (1,), generator=gen))
        volumes[i, :, row:row + 5, col:col + 5] = 0.5
    return volumes


def test_fvd_and_fid_with_the_classifier(classifier_features):
    real, other = _blob_volumes(24, 3, lower=False), _blob_volumes(24, 4, lower=False)
    moved = _blob_volumes(24, 5, lower=True)  # another distribution: the blobs sit lower
    same = fvd_3d(real, real, classifier_features)
    assert same.value == pytest.approx(0.0, abs=1e-8)
    assert (same.extractor, same.real_samples, same.feature_dim) == ("toy-ct-net", 24, 8)
    assert fvd_3d(real, moved, classifier_features).value > 3 * fvd_3d(real, other, classifier_features).value
    fid = fid_2d(real, moved, classifier_features, SliceSelection(every=2))
    assert (fid.real_samples, fid.generated_samples, fid.feature_dim) == (24 * 3, 24 * 3, 8)
    assert fid.value > fid_2d(real, other, classifier_features, SliceSelection(every=2)).value
    assert fid.as_dict()["extractor"] == "toy-ct-net" and fid.as_dict()["every"] == 2


class _TinyInception(nn.Module):
    """Stands in for inception-2015-12-05.pt: the same call signature, features = channel means repeated."""

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor:
        return x.mean(dim=(2, 3)).repeat(1, 4)  # (n, 12)


class _TinyI3D(nn.Module):
    def forward(self, x: Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
                ) -> Tensor:
        return x.mean(dim=(2, 3, 4))  # (n, 3)


@pytest.fixture()
def scripted(tmp_path):
    def save(module: nn.Module, name: str):
        path = tmp_path / name
        with warnings.catch_warnings():  # torch.jit is deprecated in torch 2.13; the external files are TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.script(module).save(str(path))
        return path
    return save


def test_torchscript_inception_loader(scripted):
    extractor = TorchScriptInception(scripted(_TinyInception(), "inception.pt"), feature_dim=12, size=32)
    volumes = torch.zeros(2, 3, 20, 20)  # grid 0 = 0 HU = the middle of [-1000, 1000] → 127.5 of [0, 255]
    features = extractor.slice_features(volumes)
    assert features.shape == (6, 12)
    np.testing.assert_allclose(features, 127.5, rtol=1e-5)
    lung = TorchScriptInception(scripted(_TinyInception(), "i2.pt"), feature_dim=12, size=32,
                                display_window_hu=(-1000.0, 0.0))  # 0 HU is the top of this window
    np.testing.assert_allclose(lung.slice_features(volumes), 255.0, rtol=1e-5)
    assert fid_2d(volumes, volumes - 0.5, extractor).value > 0


def test_torchscript_i3d_loader(scripted):
    extractor = TorchScriptI3D(scripted(_TinyI3D(), "i3d.pt"), feature_dim=3, size=16, probe_frames=4)
    features = extractor.volume_features(torch.full((3, 6, 10, 10), 0.5))  # 500 HU → 0.75 → 0.5 of [-1, 1]
    np.testing.assert_allclose(features, 0.5, rtol=1e-5)
    assert features.shape == (3, 3)


def test_torchscript_loaders_fail_clearly(scripted, tmp_path):
    with pytest.raises(FileNotFoundError, match="no TorchScript file"):
        TorchScriptInception(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"returned \(1, 12\), expected \(1, 2048\)"):
        TorchScriptInception(scripted(_TinyInception(), "inception.pt"), size=32)  # default 2048-d
    with pytest.raises(ValueError, match=r"returned \(1, 3\), expected \(1, 400\)"):
        TorchScriptI3D(scripted(_TinyI3D(), "i3d.pt"), size=16, probe_frames=4)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        TorchScriptI3D(junk)
