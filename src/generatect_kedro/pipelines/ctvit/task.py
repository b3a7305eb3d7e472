"""The CT-ViT training task for the shared trainer: parts `generator` (+ `discriminator`), losses, validation.

Validation (every ``validate_every`` steps and at the end) reconstructs a fixed set of validation volumes
in eval mode (no codebook update) and reports, in HU: PSNR, SSIM (see `metrics.image_quality`), the PSNR
of the trivial mean-training-volume baseline and the gain over it, plus codebook usage and perplexity of
the validation token ids. A tri-planar preview (input vs reconstruction, lung and mediastinal windows) of
the first validation volume goes to MLflow as ``ctvit/previews/step_<step>.png``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from generatect_kedro.losses import CTViTLoss
from generatect_kedro.metrics import hu_data_range, psnr_hu, ssim_hu, to_hu
from generatect_kedro.models.ctvit import CTViT
from generatect_kedro.models.vector_quantizer import codebook_perplexity, codebook_usage
from generatect_kedro.training import Part, TrainingTask, log_figure

__all__ = ["CTViTTask", "GridTensors", "OptimizerSettings", "ValidationSet"]

LOG = logging.getLogger(__name__)


class GridTensors:
    """Map-style dataset over grid loaders (``{volume_id: load}`` values): item i → (1, D, H, W) float32.

    Deterministic per index and lazy (one file read per item), as the trainer asks of datasets; with
    ``cache`` the tensors are kept after the first read (the demo's few small grids).
    """

    def __init__(self, loaders: Sequence[Callable[[], Any]], cache: bool = False) -> None:
        self.loaders = list(loaders)
        self.cache = cache
        self._cached: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self.loaders)

    def __getitem__(self, index: int) -> Tensor:
        if index in self._cached:
            return self._cached[index]
        grid = self.loaders[index]()
        volume = getattr(grid, "volume", grid)
        tensor = torch.from_numpy(np.asarray(volume, dtype=np.float32).copy()).unsqueeze(0)
        if self.cache:
            self._cached[index] = tensor
        return tensor


@dataclass(frozen=True)
class OptimizerSettings:
    """Adam as released: no weight decay, betas (0.9, 0.99); the discriminator has its own rate."""

    lr: float = 3.0e-5
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    discriminator_lr: float = 3.0e-7

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> OptimizerSettings:
        p = dict(params or {})
        unknown = sorted(set(p) - {"lr", "betas", "weight_decay", "discriminator_lr"})
        if unknown:
            raise ValueError(f"ctvit.optimizer: unknown key(s) {', '.join(unknown)}")
        return cls(lr=float(p.get("lr", cls.lr)), betas=tuple(float(b) for b in p.get("betas", cls.betas)),
                   weight_decay=float(p.get("weight_decay", cls.weight_decay)),
                   discriminator_lr=float(p.get("discriminator_lr", cls.discriminator_lr)))

    def adam(self, module: nn.Module, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(module.parameters(), lr=lr, betas=self.betas, weight_decay=self.weight_decay)


@dataclass
class ValidationSet:
    """Fixed validation volumes (n, 1, D, H, W) in [-1, 1] and the PSNR of the mean-training-volume baseline."""

    volumes: Tensor
    baseline_psnr_hu: float
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    spacing_dhw: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ssim_mode: str = "slice"
    batch_size: int = 4
    preview: bool = True


class CTViTTask(TrainingTask):
    """Generator = the CT-ViT (reconstruction, commitment, perceptual, adaptive GAN); discriminator optional."""

    def __init__(self, ctvit: CTViT, loss: CTViTLoss, optimizer: OptimizerSettings, *,
                 discriminator: nn.Module | None = None, validation: ValidationSet | None = None) -> None:
        super().__init__()
        self.ctvit = ctvit
        self.discriminator = discriminator if loss.config.gan else None
        self.loss_fn = loss
        self.optimizer = optimizer
        self.validation = validation
        self.last_validation: dict[str, float] | None = None
        self._parts = [Part("generator", ctvit, lambda m: optimizer.adam(m, optimizer.lr))]
        if self.discriminator is not None:
            self._parts.append(Part("discriminator", self.discriminator,
                                    lambda m: optimizer.adam(m, optimizer.discriminator_lr),
                                    schedule=loss.config.discriminator_schedule))

    def parts(self) -> list[Part]:
        return self._parts

    def loss(self, part_name: str, batch: Tensor, step: int, cache: dict[str, Any]) -> tuple[Tensor, dict]:
        if part_name == "generator":
            out = self.forward_module("generator")(batch)
            cache["recon"] = out.recon.detach()
            discriminator = self.forward_module("discriminator") if self.discriminator is not None else None
            return self.loss_fn.generator(batch, out.recon, out.commit_loss, step=step,
                                          last_layer=self.last_layer_weight(batch), discriminator=discriminator)
        if part_name == "discriminator":
            return self.loss_fn.discriminator(batch, cache["recon"], self.forward_module("discriminator"))
        raise KeyError(f"CT-ViT task has no part {part_name!r}")

    def last_layer_weight(self, batch: Tensor | None = None) -> Tensor:
        """The decoder's last projection: the tubelet one, or the first-slice one for single-slice input."""
        if batch is not None and batch.shape[2] == 1:
            return self.ctvit.to_pixels_first_frame[0].weight
        return self.ctvit.to_pixels[0].weight

    # ---- validation -------------------------------------------------------------------------------------

    def reconstruct(self, volumes: Tensor, batch_size: int = 4) -> tuple[Tensor, Tensor]:
        """Eval-mode reconstructions (float32, CPU) and ids of (n, 1, D, H, W) volumes; no codebook update."""
        self.ctvit.eval()
        device = next(self.ctvit.parameters()).device
        recons, ids = [], []
        with torch.no_grad():
            for chunk in volumes.split(batch_size):
                out = self.ctvit(chunk.to(device))
                recons.append(out.recon.float().cpu())
                ids.append(out.ids.cpu())
        return torch.cat(recons), torch.cat(ids)

    def validate(self, step: int) -> dict[str, float]:
        v = self.validation
        if v is None or len(v.volumes) == 0:
            return {}
        recon, ids = self.reconstruct(v.volumes, v.batch_size)
        data_range = hu_data_range(v.hu_window)
        pred_hu, target_hu = to_hu(recon, v.hu_window), to_hu(v.volumes, v.hu_window)
        psnr = float(psnr_hu(pred_hu, target_hu, data_range=data_range).mean())
        size = self.ctvit.config.codebook_size
        metrics = {
            "psnr_hu": psnr,
            "ssim_hu": float(ssim_hu(pred_hu, target_hu, data_range=data_range, mode=v.ssim_mode).mean()),
            "baseline_psnr_hu": v.baseline_psnr_hu,
            "psnr_gain_db": psnr - v.baseline_psnr_hu,
            "recon_mse": float(F.mse_loss(recon, v.volumes.float())),
            "codebook_usage": float(codebook_usage(ids, size)),
            "codebook_perplexity": float(codebook_perplexity(ids, size)),
        }
        self.last_validation = {"step": float(step), **metrics}
        LOG.info("ctvit step %d: validation PSNR %.2f dB (mean-volume baseline %.2f dB), SSIM %.3f, "
                 "codebook usage %.1f%%", step, psnr, v.baseline_psnr_hu, metrics["ssim_hu"],
                 100 * metrics["codebook_usage"])
        if v.preview:
            self._log_preview(step, target_hu[0, 0].numpy(), pred_hu[0, 0].numpy(), psnr)
        return metrics

    def _log_preview(self, step: int, target_hu: np.ndarray, pred_hu: np.ndarray, psnr: float) -> None:
        from generatect_kedro.visualize import triplanar_figure

        try:
            figure = triplanar_figure({"input": target_hu, "recon": pred_hu},
                                      spacing_dhw=self.validation.spacing_dhw,
                                      title=f"CT-ViT step {step}: validation volume 1, PSNR {psnr:.1f} dB")
            log_figure(figure, f"ctvit/previews/step_{step:07d}.png")
        except Exception as error:  # a preview must never stop training
            LOG.warning("could not log the CT-ViT preview at step %d: %s", step, error)
