"""Training losses of the GenerateCT stages (CT-ViT: reconstruction + commitment + perceptual + GAN; MaskGIT:
masked-token cross-entropy with real text dropout)."""

from generatect_kedro.losses.ctvit_loss import (
    CTViTLoss,
    CTViTLossConfig,
    adaptive_weight,
    pick_slices,
    random_slice_index,
)
from generatect_kedro.losses.maskgit_loss import masked_token_loss, token_critic_loss

__all__ = [
    "CTViTLoss",
    "CTViTLossConfig",
    "adaptive_weight",
    "masked_token_loss",
    "pick_slices",
    "random_slice_index",
    "token_critic_loss",
]
