"""CT-ViT's 2-D slice discriminator (StyleGAN-like) and its hinge / gradient-penalty losses. Training only.

The released CT-ViT trains it on one random 128×128 slice per volume (``Discriminator(image_size=128,
dim=16)``). Residual blocks halve the resolution (space-to-depth + 1×1 conv), self-attention runs after the
block whose *input* resolution is in ``attn_res_layers``, and a conv + linear head gives one logit per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from einops.layers.torch import Rearrange
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from generatect_kedro.models.attention import Attention

__all__ = [
    "DiscriminatorConfig",
    "Discriminator",
    "DiscriminatorBlock",
    "hinge_discr_loss",
    "hinge_gen_loss",
    "gradient_penalty",
]

LEAKY_SLOPE = 0.1


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Defaults are the discriminator inside the released CT-ViT."""

    dim: int = 16
    image_size: int = 128
    channels: int = 1
    attn_res_layers: tuple[int, ...] = (16,)
    max_dim: int = 512
    attn_heads: int = 8
    attn_dim_head: int = 64
    reference_quirks: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.attn_res_layers, int):  # the release's cast_tuple accepts a single resolution
            object.__setattr__(self, "attn_res_layers", (self.attn_res_layers,))
        object.__setattr__(self, "attn_res_layers", tuple(self.attn_res_layers))

    @property
    def num_layers(self) -> int:
        return int(math.log2(self.image_size) - 2)

    @property
    def layer_dims(self) -> list[int]:
        dims = [self.channels] + [(self.dim * 4) * (2**i) for i in range(self.num_layers + 1)]
        return [min(d, self.max_dim) for d in dims]


class DiscriminatorBlock(nn.Module):
    """conv3×3 → lrelu → conv3×3 → lrelu → [space-to-depth 2×2 → conv1×1], + strided 1×1 residual, /√2."""

    def __init__(self, in_channels: int, filters: int, downsample: bool = True):
        super().__init__()
        self.conv_res = nn.Conv2d(in_channels, filters, 1, stride=2 if downsample else 1)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, filters, 3, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(filters, filters, 3, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
        )
        self.downsample = (
            nn.Sequential(
                Rearrange("b c (h p1) (w p2) -> b (c p1 p2) h w", p1=2, p2=2),
                nn.Conv2d(filters * 4, filters, 1),
            )
            if downsample
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        res = self.conv_res(x)
        x = self.net(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return (x + res) * (1 / math.sqrt(2))


class Discriminator(nn.Module):
    """(b, c, H, W) slices → (b,) real/fake logits."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.config = c = config
        dims = c.layer_dims
        pairs = list(zip(dims[:-1], dims[1:]))
        blocks, attn_blocks = [], []
        resolution = c.image_size
        for ind, (in_chan, out_chan) in enumerate(pairs):
            blocks.append(DiscriminatorBlock(in_chan, out_chan, downsample=ind != len(pairs) - 1))
            attn = None
            if resolution in c.attn_res_layers:
                attn = Attention(
                    out_chan, dim_head=c.attn_dim_head, heads=c.attn_heads, norm_self_kv=not c.reference_quirks
                )
            attn_blocks.append(attn)  # ModuleList keeps None holes, so indices match the release
            resolution //= 2
        self.blocks = nn.ModuleList(blocks)
        self.attn_blocks = nn.ModuleList(attn_blocks)

        last_fmap = c.image_size // (2**c.num_layers)
        self.to_logits = nn.Sequential(
            nn.Conv2d(dims[-1], dims[-1], 3, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
            Rearrange("b ... -> b (...)"),
            nn.Linear(last_fmap * last_fmap * dims[-1], 1),
            Rearrange("b 1 -> b"),
        )

    def forward(self, x: Tensor) -> Tensor:
        for block, attn in zip(self.blocks, self.attn_blocks):
            x = block(x)
            if attn is not None:
                h = x.shape[-2]
                seq = rearrange(x, "b c h w -> b (h w) c")
                # math SDPA: the gradient penalty differentiates twice, fused kernels have no double backward
                with sdpa_kernel(SDPBackend.MATH):
                    seq = attn(seq) + seq
                x = rearrange(seq, "b (h w) c -> b c h w", h=h)
        return self.to_logits(x)


def hinge_discr_loss(fake: Tensor, real: Tensor) -> Tensor:
    """mean(relu(1 + fake) + relu(1 − real))."""
    return (F.relu(1 + fake) + F.relu(1 - real)).mean()


def hinge_gen_loss(fake: Tensor) -> Tensor:
    """−mean(fake)."""
    return -fake.mean()


def gradient_penalty(images: Tensor, logits: Tensor, weight: float = 10.0) -> Tensor:
    """weight · mean_b (‖∂logits/∂images‖₂ − 1)²; ``images`` must require grad; differentiable (create_graph)."""
    (gradients,) = torch.autograd.grad(
        outputs=logits, inputs=images, grad_outputs=torch.ones_like(logits), create_graph=True, retain_graph=True
    )
    gradients = rearrange(gradients, "b ... -> b (...)")
    return weight * ((gradients.norm(2, dim=1) - 1) ** 2).mean()
