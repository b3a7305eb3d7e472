"""GenerateCT model modules: plain ``nn.Module``s with typed configs; no I/O, no hard-coded devices."""

from generatect_kedro.models.ctvit import CTViT, CTViTConfig, CTViTOutput
from generatect_kedro.models.discriminator import Discriminator, DiscriminatorConfig
from generatect_kedro.models.maskgit import MaskGIT, MaskGITConfig, MaskGITContext
from generatect_kedro.models.maskgit_sampling import MaskGITSamplerConfig, sample_tokens
from generatect_kedro.models.token_critic import TokenCritic, critic_config
from generatect_kedro.models.unet import UNet, UNetConfig
from generatect_kedro.models.vector_quantizer import CosineSimVQ, VQOutput

__all__ = [
    "CTViT",
    "CTViTConfig",
    "CTViTOutput",
    "CosineSimVQ",
    "Discriminator",
    "DiscriminatorConfig",
    "MaskGIT",
    "MaskGITConfig",
    "MaskGITContext",
    "MaskGITSamplerConfig",
    "TokenCritic",
    "UNet",
    "UNetConfig",
    "VQOutput",
    "critic_config",
    "sample_tokens",
]
