"""Classifier-free guidance (Ho & Salimans 2022) around the U-Net, in one batched conditional + null pass.

v = v_null + (v_cond − v_null)·cond_scale. The null pass is the same U-Net call with the prompt dropped
(``text_keep_mask`` False → learned null text tokens and null text hidden), i.e. the release's
``cond_drop_prob=1``. The released super-resolution samples with cond_scale 1 (no guidance), but it was
trained with 10 % text dropout, so guidance is available. Batching doubles activation memory; pass
``batched=False`` to run the two passes one after the other instead.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GuidedDenoiser"]


class GuidedDenoiser:
    """``(x, log_snr) → v`` for fixed conditioning, with optional classifier-free guidance."""

    def __init__(
        self,
        unet: nn.Module,
        *,
        lowres_cond_img: Tensor | None,
        lowres_noise_log_snr: Tensor | None,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        cond_scale: float = 1.0,
        batched: bool = True,
    ):
        if cond_scale != 1.0 and text_embeds is None:
            raise ValueError("classifier-free guidance needs text embeddings")
        self.unet = unet
        self.kwargs = dict(lowres_cond_img=lowres_cond_img, lowres_noise_log_snr=lowres_noise_log_snr,
                           text_embeds=text_embeds, text_mask=text_mask)
        self.cond_scale = cond_scale
        self.batched = batched

    def __call__(self, x: Tensor, log_snr: Tensor) -> Tensor:
        b = x.shape[0]
        log_snr = torch.as_tensor(log_snr, dtype=x.dtype, device=x.device).expand(b)
        if self.cond_scale == 1.0:
            return self.unet(x, log_snr, **self.kwargs)
        if not self.batched:
            cond = self.unet(x, log_snr, **self.kwargs)
            drop = torch.zeros(b, dtype=torch.bool, device=x.device)
            null = self.unet(x, log_snr, **self.kwargs, text_keep_mask=drop)
        else:
            doubled = {k: torch.cat((v, v)) if isinstance(v, Tensor) and v.ndim else v for k, v in self.kwargs.items()}
            keep = torch.arange(2 * b, device=x.device) < b
            cond, null = self.unet(torch.cat((x, x)), torch.cat((log_snr, log_snr)), **doubled,
                                   text_keep_mask=keep).chunk(2)
        return null + (cond - null) * self.cond_scale
