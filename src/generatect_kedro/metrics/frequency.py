"""High-frequency content of super-resolved volumes: what an upsampler adds above the low-res grid's Nyquist.

A volume upsampled from an h×w grid to H×W (scale s = H/h) can only carry information up to the low-res
Nyquist frequency, 1/(2s) cycles per full-res pixel; everything above it is what the upsampler *invents*.
Trilinear interpolation invents almost nothing there; a diffusion model invents a lot, and the question
is whether it is the ground truth's detail or plausible-looking noise. Per axial slice (H, W):

* spectrum ``X = FFT2(x)``, radial frequency ``r = sqrt(fy² + fx²)`` in cycles per pixel (``fftfreq``),
  high-frequency (HF) band ``r > cutoff`` with ``cutoff = 1 / (2·scale)`` (strictly above; DC never in it);
* HF power ``P(x) = Σ_HF |X|² / (H·W)²`` — by Parseval, the mean squared value of the HF component of the
  slice (a cosine of amplitude a above the cutoff has power a²/2). A volume's power sums its slices.

Scores of an output y against the ground truth t (per volume; sums over slices, then ratios):

* ``hf_power_share``   = P(y) / P(t): the share of the ground truth's HF power present in the output
  (0 for an ideal low-pass upsampler, 1 when the output is as detailed as the truth, >1 when it is busier);
* ``hf_correlation``   = Re Σ_HF Y·conj(T) / sqrt(Σ_HF |Y|² · Σ_HF |T|²): the correlation of the two HF
  components (the high-passed slices, whose means are 0). ≈0 for detail unrelated to the truth (noise),
  1 for the truth's own detail; 0 by definition when the output has no HF power;
* ``hf_relative_error`` = Σ_HF |Y − T|² / Σ_HF |T|²: the HF error relative to predicting no HF at all.
  1 for an HF-free output, 0 for a perfect one, about 1 + share for uncorrelated noise; below 1 means
  the output restores more true detail than it invents false detail. (It equals
  ``share + 1 − 2·correlation·sqrt(share)``.)

The scores are invariant to the intensity scale and offset (HU or [-1, 1] give the same numbers). No
window is applied: CT slices are surrounded by air, so their periodic extension has no edge to leak.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "high_frequency_mask",
    "high_frequency_power",
    "high_frequency_scores",
    "highpass",
    "lowres_nyquist",
    "radial_frequency",
]


def lowres_nyquist(scale: float) -> float:
    """The low-res grid's Nyquist frequency in cycles per full-res pixel, for an upsampling factor ``scale``."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return 0.5 / float(scale)


def radial_frequency(height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """(H, W) radial frequency in cycles per pixel of each FFT bin (``torch.fft.fftfreq`` layout)."""
    fy = torch.fft.fftfreq(height, device=device, dtype=torch.float64)
    fx = torch.fft.fftfreq(width, device=device, dtype=torch.float64)
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def high_frequency_mask(height: int, width: int, cutoff: float, device: torch.device | str | None = None) -> Tensor:
    """(H, W) bool: FFT bins with radial frequency strictly above ``cutoff`` (cycles per pixel)."""
    return radial_frequency(height, width, device) > cutoff


def _spectrum(x: Tensor) -> Tensor:
    """FFT2 over the last two axes in float64, scaled so that Σ|X|² is the mean squared value (Parseval)."""
    h, w = x.shape[-2:]
    return torch.fft.fft2(x.double()) / (h * w)


def _as_volumes(x: Tensor) -> Tensor:
    """(H, W) → (1, 1, H, W); (D, H, W) → (1, D, H, W); (B, D, H, W) stays."""
    if x.ndim == 2:
        return x[None, None]
    if x.ndim == 3:
        return x[None]
    if x.ndim == 4:
        return x
    raise ValueError(f"expected (H, W), (D, H, W) or (B, D, H, W), got shape {tuple(x.shape)}")


def highpass(x: Tensor, cutoff: float) -> Tensor:
    """The HF component of each slice (the inverse FFT of the HF band), same shape as ``x``, float64."""
    h, w = x.shape[-2:]
    mask = high_frequency_mask(h, w, cutoff, x.device)
    return torch.fft.ifft2(torch.fft.fft2(x.double()) * mask).real


def high_frequency_power(x: Tensor, cutoff: float) -> Tensor:
    """HF power per volume (B,) — Σ over slices of the mean squared HF component; see the module docstring."""
    volumes = _as_volumes(x)
    h, w = volumes.shape[-2:]
    mask = high_frequency_mask(h, w, cutoff, volumes.device)
    power = _spectrum(volumes).abs().pow(2)
    return (power * mask).flatten(1).sum(dim=1)


def high_frequency_scores(pred: Tensor, target: Tensor, *, scale: float | None = None,
                          cutoff: float | None = None) -> dict[str, Tensor]:
    """Per-volume (B,) ``hf_power_share``, ``hf_correlation``, ``hf_relative_error``, ``hf_power`` (of pred)
    and ``hf_power_target``, for (D, H, W) or (B, D, H, W) volumes (or single (H, W) slices).

    Give the upsampling ``scale`` (cutoff = its low-res Nyquist) or the ``cutoff`` in cycles per pixel.
    """
    if (scale is None) == (cutoff is None):
        raise ValueError("give exactly one of scale or cutoff")
    cutoff = lowres_nyquist(scale) if cutoff is None else float(cutoff)
    p, t = _as_volumes(pred), _as_volumes(target)
    if p.shape != t.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and target {tuple(t.shape)} differ in shape")
    h, w = p.shape[-2:]
    mask = high_frequency_mask(h, w, cutoff, p.device)
    if not bool(mask.any()):
        raise ValueError(f"no frequency bin of a {h}x{w} slice lies above the cutoff {cutoff:.4f}")
    sp, st = _spectrum(p) * mask, _spectrum(t) * mask
    power_p = sp.abs().pow(2).flatten(1).sum(dim=1)
    power_t = st.abs().pow(2).flatten(1).sum(dim=1)
    cross = (sp * st.conj()).real.flatten(1).sum(dim=1)
    error = (sp - st).abs().pow(2).flatten(1).sum(dim=1)
    tiny = torch.finfo(torch.float64).tiny
    denominator = torch.sqrt(power_p * power_t)
    correlation = torch.where(denominator > tiny, cross / denominator.clamp_min(tiny), torch.zeros_like(cross))
    return {
        "hf_power_share": power_p / power_t.clamp_min(tiny),
        "hf_correlation": correlation,
        "hf_relative_error": error / power_t.clamp_min(tiny),
        "hf_power": power_p,
        "hf_power_target": power_t,
    }


def cosine_image(height: int, width: int, cycles_y: float, cycles_x: float, amplitude: float = 1.0,
                 phase: float = 0.0) -> Tensor:
    """A 2-D cosine with the given whole numbers of cycles across the image: a test image of known spectrum."""
    y = torch.arange(height, dtype=torch.float64)[:, None] / height
    x = torch.arange(width, dtype=torch.float64)[None, :] / width
    return amplitude * torch.cos(2 * math.pi * (cycles_y * y + cycles_x * x) + phase)
