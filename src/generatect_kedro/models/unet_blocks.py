"""Building blocks of the super-resolution U-Net (after lucidrains' imagen-pytorch, as copied by GenerateCT).

Leaf names (``block1.groupnorm``, ``block1.project``, ``cross_attn.to_q``, ``gca.net.0``, ``res_conv``,
``time_mlp.1``) equal the release's, so the converter only renames the level structure and the gain-only
LayerNorm's ``g`` (ours is ``weight``). Attention goes through ``scaled_dot_product_attention``: the release's
explicit softmax(q·kᵀ·d^-½)·v is the same function, and the fixtures agree to ~1e-6.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from einops.layers.torch import Rearrange
from torch import Tensor, nn

__all__ = [
    "GainLayerNorm",
    "LearnedSinusoidalPosEmb",
    "NoiseLevelEmbedding",
    "CrossEmbedLayer",
    "Block",
    "CrossAttention",
    "GlobalContext",
    "ResnetBlock",
    "Downsample",
    "PixelShuffleUpsample",
]


class GainLayerNorm(nn.Module):
    """LayerNorm over the last axis with a learned gain only (biased variance).

    eps is 1e-5 in float32 and 1e-3 in lower precision, as in the release (fp16 variance underflows).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        return F.layer_norm(x, x.shape[-1:], self.weight.to(x.dtype), eps=eps)


class LearnedSinusoidalPosEmb(nn.Module):
    """[t, sin(2π·t·w), cos(2π·t·w)] with learned frequencies w (crowsonkb's v-diffusion): dim+1 features."""

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"learned sinusoidal embedding dim must be even, got {dim}")
        self.weights = nn.Parameter(torch.randn(dim // 2))

    def forward(self, t: Tensor) -> Tensor:
        t = rearrange(t, "b -> b 1")
        freqs = t * rearrange(self.weights, "d -> 1 d") * (2 * math.pi)
        return torch.cat((t, freqs.sin(), freqs.cos()), dim=-1)


class NoiseLevelEmbedding(nn.Module):
    """A noise level (log-SNR) → a conditioning vector (summed into every ResNet block's scale/shift) and tokens.

    The U-Net has one for the diffusion time and one for the low-res augmentation level; their vectors are
    summed and their tokens concatenated into the cross-attention context.
    """

    def __init__(self, *, fourier_dim: int, time_cond_dim: int, cond_dim: int, num_tokens: int):
        super().__init__()
        self.fourier = LearnedSinusoidalPosEmb(fourier_dim)
        self.to_hidden = nn.Linear(fourier_dim + 1, time_cond_dim)
        self.to_cond = nn.Linear(time_cond_dim, time_cond_dim)
        self.to_tokens = nn.Sequential(
            nn.Linear(time_cond_dim, cond_dim * num_tokens), Rearrange("b (r d) -> b r d", r=num_tokens)
        )

    def forward(self, log_snr: Tensor) -> tuple[Tensor, Tensor]:
        hidden = F.silu(self.to_hidden(self.fourier(log_snr)))
        return self.to_cond(hidden), self.to_tokens(hidden)


class CrossEmbedLayer(nn.Module):
    """Parallel convs with several kernel sizes, concatenated; larger kernels get fewer channels."""

    def __init__(self, dim_in: int, dim_out: int, kernel_sizes: tuple[int, ...], stride: int = 1):
        super().__init__()
        if not all(k % 2 == stride % 2 for k in kernel_sizes):
            raise ValueError(f"kernel sizes {kernel_sizes} must have the parity of the stride {stride}")
        kernel_sizes = tuple(sorted(kernel_sizes))
        dim_scales = [int(dim_out / 2**i) for i in range(1, len(kernel_sizes))]
        dim_scales.append(dim_out - sum(dim_scales))
        self.convs = nn.ModuleList(
            nn.Conv2d(dim_in, d, k, stride=stride, padding=(k - stride) // 2) for k, d in zip(kernel_sizes, dim_scales)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([conv(x) for conv in self.convs], dim=1)


class Block(nn.Module):
    """GroupNorm → optional x·(scale+1)+shift → SiLU → 3×3 conv."""

    def __init__(self, dim: int, dim_out: int, groups: int = 8):
        super().__init__()
        self.groupnorm = nn.GroupNorm(groups, dim)
        self.project = nn.Conv2d(dim, dim_out, 3, padding=1)

    def forward(self, x: Tensor, scale_shift: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = self.groupnorm(x)
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.project(F.silu(x))


class CrossAttention(nn.Module):
    """Pixels attend to the conditioning tokens (time tokens + pooled text latents).

    q is normalised (gain-only LayerNorm), the context is not (it was normalised once, for the whole U-Net).
    A single learned null key/value of shape (2, dim_head), shared by all heads, is prepended so a pixel can
    attend to "nothing". Output: Linear → gain-only LayerNorm.
    """

    def __init__(self, dim: int, *, context_dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.heads = heads
        inner_dim = dim_head * heads
        self.norm = GainLayerNorm(dim)
        self.null_kv = nn.Parameter(torch.randn(2, dim_head))
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(context_dim, inner_dim * 2, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, dim, bias=False), GainLayerNorm(dim))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x (b, n, dim), context (b, m, context_dim) → (b, n, dim)."""
        q = self.to_q(self.norm(x))
        k, v = self.to_kv(context).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        nk, nv = repeat(self.null_kv.to(k.dtype), "two d -> two b h 1 d", b=x.shape[0], h=self.heads)
        k, v = torch.cat((nk, k), dim=-2), torch.cat((nv, v), dim=-2)
        out = F.scaled_dot_product_attention(q, k, v)  # scale d^-½, as the release's q·scale
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class GlobalContext(nn.Module):
    """Attention-pooled global descriptor → per-channel sigmoid gate (a squeeze-excitation variant)."""

    def __init__(self, *, dim_in: int, dim_out: int):
        super().__init__()
        self.to_k = nn.Conv2d(dim_in, 1, 1)
        hidden_dim = max(3, dim_out // 2)
        self.net = nn.Sequential(
            nn.Conv2d(dim_in, hidden_dim, 1), nn.SiLU(), nn.Conv2d(hidden_dim, dim_out, 1), nn.Sigmoid()
        )

    def forward(self, x: Tensor) -> Tensor:
        weights = self.to_k(x).flatten(2).softmax(dim=-1)  # (b, 1, n)
        pooled = torch.bmm(x.flatten(2), weights.transpose(1, 2))  # (b, c, 1)
        return self.net(pooled.unsqueeze(-1))


class ResnetBlock(nn.Module):
    """block1 → [cross-attention on block1's output, residual] → block2 with time scale/shift → [gate] + skip.

    ``cond_dim`` set = cross-attention to the context tokens; ``use_gca`` = global-context gating.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        *,
        time_cond_dim: int,
        cond_dim: int | None = None,
        groups: int = 8,
        heads: int = 8,
        dim_head: int = 64,
        use_gca: bool = False,
    ):
        super().__init__()
        self.time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_cond_dim, dim_out * 2))
        self.cross_attn = (
            CrossAttention(dim_out, context_dim=cond_dim, dim_head=dim_head, heads=heads)
            if cond_dim is not None
            else None
        )
        self.block1 = Block(dim, dim_out, groups=groups)
        self.block2 = Block(dim_out, dim_out, groups=groups)
        self.gca = GlobalContext(dim_in=dim_out, dim_out=dim_out) if use_gca else None
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: Tensor, time_cond: Tensor, context: Tensor | None = None) -> Tensor:
        scale_shift = rearrange(self.time_mlp(time_cond), "b c -> b c 1 1").chunk(2, dim=1)
        h = self.block1(x)
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this ResNet block has cross-attention and needs the context tokens")
            height = h.shape[-2]
            tokens = rearrange(h, "b c x y -> b (x y) c")
            tokens = self.cross_attn(tokens, context) + tokens
            h = rearrange(tokens, "b (x y) c -> b c x y", x=height)
        h = self.block2(h, scale_shift=scale_shift)
        if self.gca is not None:
            h = h * self.gca(h)
        return h + self.res_conv(x)


class Downsample(nn.Module):
    """Pixel-unshuffle 2×2 (space-to-depth, no information lost) then a 1×1 conv."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.conv = nn.Conv2d(dim * 4, dim_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pixel_unshuffle(x, 2))


class PixelShuffleUpsample(nn.Module):
    """1×1 conv → SiLU → pixel-shuffle 2×; ICNR init (each sub-pixel starts equal) avoids checkerboards."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out * 4, 1)
        weight = torch.empty(dim_out, dim, 1, 1)
        nn.init.kaiming_uniform_(weight)
        with torch.no_grad():
            self.conv.weight.copy_(repeat(weight, "o ... -> (o r) ...", r=4))
            self.conv.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(F.silu(self.conv(x)), 2)
