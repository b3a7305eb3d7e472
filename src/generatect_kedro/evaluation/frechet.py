"""Fréchet distances between real and generated CT: FID over 2D slices and FVD over whole volumes (paper §4.1).

    d² = ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^{1/2})

between Gaussians fitted to the features of the two sets. The number means nothing without the network
that produced the features, so every result carries the extractor's `name`:

* `ClassifierFeatures` — the project's own `AbnormalityClassifier` (paper: FVD_CT-Net): volume features for
  FVD, per-slice encoder features for a slice-level FID. Trained on the project's CT, so domain-relevant.
* `TorchScriptInception` — an ImageNet Inception-v3 from a local TorchScript file (paper: FID). torchvision
  is not a dependency, so the network comes as TorchScript: NVIDIA's ``inception-2015-12-05.pt`` (the
  TF-FID weights, used by StyleGAN2-ADA/3 and clean-fid), from
  https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt .
  It takes (n, 3, H, W) floats in [0, 255] and, called with ``return_features=True``, gives the 2048-d pool
  features. (pytorch-fid's ``pt_inception-2015-12-05-*.pth`` is a state dict for its own module code, not
  TorchScript: it cannot be loaded here.)
* `TorchScriptI3D` — the Kinetics-400 I3D of FVD, as StyleGAN-V's ``i3d_torchscript.pt``
  (https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt): input (n, 3, T, 224, 224) in [-1, 1],
  called with ``rescale=False, resize=False, return_features=True`` → 400-d (the pre-softmax logits).

Both external networks are optional; they are loaded from a local path (nothing downloads here) and checked
on a dummy batch, so a wrong file fails at load time with the shape it produced. Slices go to them as the
[-1, 1] grid mapped through an HU display window and replicated to 3 channels.

Few samples make the covariance rank-deficient (n ≤ feature dimension) and the estimate biased upwards;
results record both set sizes so that numbers are compared only at equal n.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from scipy import linalg
from torch import Tensor

__all__ = ["ClassifierFeatures", "FrechetResult", "SliceFeatureExtractor", "SliceSelection", "TorchScriptI3D",
           "TorchScriptInception", "VolumeFeatureExtractor", "feature_statistics", "fid_2d", "frechet_distance",
           "frechet_distance_from_features", "fvd_3d", "select_slices"]

LOG = logging.getLogger(__name__)
Volumes = np.ndarray | Tensor | Iterable[np.ndarray | Tensor]
PLANES = {"axial": 0, "coronal": 1, "sagittal": 2}  # the axis of a (D, H, W) grid the slices are cut across


# ---- the distance ------------------------------------------------------------------------------------------

def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F) of (n, F) features, in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need (n >= 2, F) features, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features hold NaN or infinite values")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6, imaginary_tolerance: float = 1e-3) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), with pytorch-fid's numerical handling.

    When Σ1Σ2 is singular enough that its square root is not finite, `eps`·I is added to both covariances;
    imaginary parts from round-off are dropped unless the diagonal's exceed `imaginary_tolerance`, which
    raises (the covariances are then not positive semi-definite: a bug upstream, not noise).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"mismatched statistics: means {mu1.shape}, {mu2.shape}; covariances {sigma1.shape}, "
                         f"{sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # a singular product is the rule for n <= F; handled just below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        LOG.warning("Fréchet distance: singular covariance product; adding %g to the diagonals", eps)
        offset = np.eye(len(mu1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=imaginary_tolerance):
            raise ValueError(f"Fréchet distance: imaginary component {np.max(np.abs(covmean.imag)):.3g} in "
                             "sqrtm(Σ1Σ2); are both covariances positive semi-definite?")
        covmean = covmean.real
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    scale = 1.0 + float(np.trace(sigma1) + np.trace(sigma2))
    if -1e-6 * scale < value < 0:  # round-off around an exact 0 (identical sets)
        value = 0.0
    return value


def frechet_distance_from_features(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """`frechet_distance` of the Gaussians fitted to two (n, F) feature sets."""
    (mu1, s1), (mu2, s2) = feature_statistics(a), feature_statistics(b)
    return frechet_distance(mu1, s1, mu2, s2, eps=eps)


@dataclass
class FrechetResult:
    """One FID/FVD number with what it depends on (for the evaluation report)."""

    metric: str  # "fid_2d" | "fvd_3d"
    value: float
    extractor: str  # the feature network's name
    real_samples: int  # feature vectors (slices or volumes) per set
    generated_samples: int
    feature_dim: int
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "extractor": self.extractor,
                "real_samples": self.real_samples, "generated_samples": self.generated_samples,
                "feature_dim": self.feature_dim, **self.details}


# ---- extractors --------------------------------------------------------------------------------------------

@runtime_checkable
class VolumeFeatureExtractor(Protocol):
    name: str

    def volume_features(self, volumes: Volumes) -> np.ndarray:
        """(n, F) features of n (D, H, W) grids in [-1, 1]."""


@runtime_checkable
class SliceFeatureExtractor(Protocol):
    name: str

    def slice_features(self, volumes: Volumes) -> np.ndarray:
        """(Σ D_i, F) features of every axial (first-axis) slice of each (D, H, W) grid in [-1, 1]."""


def iter_batches(volumes: Volumes, batch_size: int) -> Iterator[Tensor]:
    """(b, D, H, W) float32 CPU batches from a stacked (n, [1,] D, H, W) array/tensor or an iterable of
    (D, H, W) grids; a batch ends early where the grid shape changes."""
    if isinstance(volumes, (np.ndarray, Tensor)):
        stacked = torch.as_tensor(np.asarray(volumes) if isinstance(volumes, np.ndarray) else volumes)
        if stacked.ndim == 5 and stacked.shape[1] == 1:
            stacked = stacked[:, 0]
        if stacked.ndim != 4:
            raise ValueError(f"expected volumes (n, [1,] D, H, W), got {tuple(stacked.shape)}")
        volumes = iter(stacked)
    pending: list[Tensor] = []
    for volume in volumes:
        v = torch.as_tensor(np.asarray(volume) if isinstance(volume, np.ndarray) else volume).float()
        v = v[0] if v.ndim == 4 and v.shape[0] == 1 else v
        if v.ndim != 3:
            raise ValueError(f"each volume must be (D, H, W), got {tuple(v.shape)}")
        if pending and (len(pending) == batch_size or pending[0].shape != v.shape):
            yield torch.stack(pending)
            pending = []
        pending.append(v)
    if pending:
        yield torch.stack(pending)


class ClassifierFeatures:
    """The project's `AbnormalityClassifier` as a feature network (FVD_CT-Net and a CT-specific slice FID)."""

    def __init__(self, model: torch.nn.Module, name: str = "ct-classifier", batch_size: int = 4) -> None:
        self.model = model
        self.name = name
        self.batch_size = batch_size

    @torch.no_grad()
    def _run(self, volumes: Volumes, method: str) -> np.ndarray:
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            out = [getattr(self.model, method)(batch.unsqueeze(1).to(device)).float().cpu()
                   for batch in iter_batches(volumes, self.batch_size)]  # (b, D, H, W) → (b, 1, D, H, W)
        finally:
            self.model.train(was_training)
        return torch.cat(out).numpy().astype(np.float64)

    def volume_features(self, volumes: Volumes) -> np.ndarray:
        return self._run(volumes, "features")

    def slice_features(self, volumes: Volumes) -> np.ndarray:
        return self._run(volumes, "slice_features")


def _window(x: Tensor, grid_window_hu: Sequence[float], display_window_hu: Sequence[float] | None) -> Tensor:
    """[-1, 1] grid values → [0, 1] through an HU display window (the whole grid window when None)."""
    low, high = float(grid_window_hu[0]), float(grid_window_hu[1])
    hu = low + (x.clamp(-1, 1) + 1) * 0.5 * (high - low)
    w_low, w_high = display_window_hu or (low, high)
    return ((hu - w_low) / (float(w_high) - float(w_low))).clamp(0, 1)


def _load_torchscript(path: str | Path, what: str) -> torch.jit.ScriptModule:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no TorchScript file at {path} (see generatect_kedro.evaluation.frechet "
                                "for where to get it)")
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.13, but it is how these ship
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as error:
        raise ValueError(f"{what}: {path} is not a TorchScript file: {error}") from None
    return module.eval()


class _TorchScriptExtractor:
    def __init__(self, path: str | Path, *, name: str, feature_dim: int, call_kwargs: Mapping[str, Any],
                 grid_window_hu: Sequence[float], display_window_hu: Sequence[float] | None, batch_size: int,
                 device: str | torch.device, what: str) -> None:
        self.what = what
        self.network = _load_torchscript(path, what).to(device)
        self.device = torch.device(device)
        self.name = name
        self.feature_dim = feature_dim
        self.call_kwargs = dict(call_kwargs)
        self.grid_window_hu = tuple(grid_window_hu)
        self.display_window_hu = tuple(display_window_hu) if display_window_hu else None
        self.batch_size = batch_size

    @torch.no_grad()
    def _call(self, x: Tensor) -> Tensor:
        out = self.network(x.to(self.device), **self.call_kwargs)
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape != (len(x), self.feature_dim):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"{self.what}: the network returned {shape}, expected ({len(x)}, {self.feature_dim})"
                             f" pooled features; is this the right file / call_kwargs {self.call_kwargs}?")
        return out.float().cpu()


class TorchScriptInception(_TorchScriptExtractor):
    """ImageNet Inception-v3 pool features of axial slices (FID). Each slice: HU display window → [0, 1] →
    `value_range` (NVIDIA's file: [0, 255]), bilinear resize to `size`², replicated to 3 channels."""

    def __init__(self, path: str | Path, *, name: str = "inception-v3-2015-12-05", feature_dim: int = 2048,
                 size: int = 299, value_range: tuple[float, float] = (0.0, 255.0),
                 call_kwargs: Mapping[str, Any] | None = None, grid_window_hu: Sequence[float] = (-1000.0, 1000.0),
                 display_window_hu: Sequence[float] | None = None, batch_size: int = 32,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(path, name=name, feature_dim=feature_dim,
                         call_kwargs={"return_features": True} if call_kwargs is None else call_kwargs,
                         grid_window_hu=grid_window_hu, display_window_hu=display_window_hu,
                         batch_size=batch_size, device=device, what="Inception")
        self.size = size
        self.value_range = value_range
        self._call(torch.zeros(1, 3, size, size))  # fail now, with the shape, if the file is not the right one

    def _images(self, slices: Tensor) -> Tensor:
        """(m, H, W) grid slices → (m, 3, size, size) network input."""
        x = _window(slices, self.grid_window_hu, self.display_window_hu)
        x = F.interpolate(rearrange(x, "m h w -> m 1 h w"), size=(self.size, self.size), mode="bilinear",
                          align_corners=False, antialias=True)
        low, high = self.value_range
        return repeat(low + x * (high - low), "m 1 h w -> m c h w", c=3)

    def slice_features(self, volumes: Volumes) -> np.ndarray:
        out = []
        for batch in iter_batches(volumes, 1):
            slices = rearrange(batch, "b d h w -> (b d) h w")
            out += [self._call(self._images(slices[i:i + self.batch_size]))
                    for i in range(0, len(slices), self.batch_size)]
        return torch.cat(out).numpy().astype(np.float64)


class TorchScriptI3D(_TorchScriptExtractor):
    """Kinetics-400 I3D features of whole volumes (FVD): the D axial slices are the frames; each is windowed,
    resized to `size`², replicated to RGB and mapped to `value_range` ([-1, 1] for StyleGAN-V's file)."""

    def __init__(self, path: str | Path, *, name: str = "i3d-kinetics-400", feature_dim: int = 400,
                 size: int = 224, value_range: tuple[float, float] = (-1.0, 1.0),
                 call_kwargs: Mapping[str, Any] | None = None, grid_window_hu: Sequence[float] = (-1000.0, 1000.0),
                 display_window_hu: Sequence[float] | None = None, batch_size: int = 4,
                 device: str | torch.device = "cpu", probe_frames: int = 16) -> None:
        super().__init__(path, name=name, feature_dim=feature_dim,
                         call_kwargs=(dict(rescale=False, resize=False, return_features=True)
                                      if call_kwargs is None else call_kwargs),
                         grid_window_hu=grid_window_hu, display_window_hu=display_window_hu,
                         batch_size=batch_size, device=device, what="I3D")
        self.size = size
        self.value_range = value_range
        self._call(torch.zeros(1, 3, probe_frames, size, size))

    def volume_features(self, volumes: Volumes) -> np.ndarray:
        out = []
        for batch in iter_batches(volumes, self.batch_size):
            b = len(batch)
            x = _window(rearrange(batch, "b d h w -> (b d) 1 h w"), self.grid_window_hu, self.display_window_hu)
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
            low, high = self.value_range
            x = low + x * (high - low)
            out.append(self._call(repeat(x, "(b d) 1 h w -> b c d h w", b=b, c=3)))  # frames = axial slices
        return torch.cat(out).numpy().astype(np.float64)


# ---- the metrics -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SliceSelection:
    """Which 2D slices enter FID: every `every`-th slice across `plane`, skipping `skip_ends` of the
    slices at each end (the first and last slices of a chest CT are mostly neck/abdomen or padding)."""

    plane: Literal["axial", "coronal", "sagittal"] = "axial"
    every: int = 1
    skip_ends: float = 0.0  # fraction in [0, 0.5)

    def __post_init__(self) -> None:
        if self.plane not in PLANES or self.every < 1 or not 0.0 <= self.skip_ends < 0.5:
            raise ValueError(f"invalid slice selection {self}: plane axial|coronal|sagittal, every >= 1, "
                             "skip_ends in [0, 0.5)")


def select_slices(volume: Tensor, selection: SliceSelection) -> Tensor:
    """(D, H, W) grid → (m, h, w): the selected slices across `selection.plane`, stacked first."""
    axis = PLANES[selection.plane]
    moved = torch.movedim(volume, axis, 0)
    n = moved.shape[0]
    skip = int(math.floor(n * selection.skip_ends))
    return moved[skip:n - skip:selection.every]


def _selected(volumes: Volumes, selection: SliceSelection) -> Iterator[Tensor]:
    for batch in iter_batches(volumes, 1):
        yield select_slices(batch[0], selection)


def fid_2d(real: Volumes, generated: Volumes, extractor: SliceFeatureExtractor,
           selection: SliceSelection = SliceSelection(), eps: float = 1e-6) -> FrechetResult:
    """Slice-level FID: the Fréchet distance of the selected slices' features, real vs generated."""
    a = extractor.slice_features(_selected(real, selection))
    b = extractor.slice_features(_selected(generated, selection))
    return FrechetResult("fid_2d", frechet_distance_from_features(a, b, eps), extractor.name, len(a), len(b),
                         a.shape[1], {"plane": selection.plane, "every": selection.every,
                                      "skip_ends": selection.skip_ends})


def fvd_3d(real: Volumes, generated: Volumes, extractor: VolumeFeatureExtractor, eps: float = 1e-6
           ) -> FrechetResult:
    """Volume-level FVD: the Fréchet distance of whole-volume features, real vs generated."""
    a = extractor.volume_features(real)
    b = extractor.volume_features(generated)
    if min(len(a), len(b)) <= a.shape[1]:
        LOG.warning("fvd_3d: %d real / %d generated volumes for %d-d features: the covariances are rank-"
                    "deficient and the value is biased upwards; compare only at equal set sizes",
                    len(a), len(b), a.shape[1])
    return FrechetResult("fvd_3d", frechet_distance_from_features(a, b, eps), extractor.name, len(a), len(b),
                         a.shape[1])
