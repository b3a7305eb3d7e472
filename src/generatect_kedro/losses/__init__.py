"""Training losses of the GenerateCT stages (CT-ViT: reconstruction + commitment + perceptual + GAN)."""

from generatect_kedro.losses.ctvit_loss import (
    CTViTLoss,
    CTViTLossConfig,
    adaptive_weight,
    pick_slices,
    random_slice_index,
)

__all__ = ["CTViTLoss", "CTViTLossConfig", "adaptive_weight", "pick_slices", "random_slice_index"]
