"""The text-conditional 2-D super-resolution U-Net of GenerateCT (imagen-pytorch ``Unet``, as released).

It predicts v = α·ε − σ·x₀ for a noisy high-res slice x_t, given the log-SNR of x_t, the upsampled and
noise-augmented low-res slice (concatenated as an input channel and again before the last conv), the
log-SNR of that augmentation, and T5 text tokens. It knows nothing of samplers or schedules.

Layout ("memory efficient", the release's): cross-embed init conv → an initial ResNet block at full
resolution → per level: downsample first (pixel-unshuffle), one ResNet block with optional text
cross-attention, ``num_resnet_blocks`` gated blocks (a skip after each, and one more after the level) →
two cross-attention mid blocks → mirrored up levels that concatenate the skips (scaled by 2^-½) and end in
a pixel-shuffle upsample → a final gated ResNet block → concat(low-res) → 3×3 conv.

Defaults are the released checkpoint's: dim 64, mults (1, 2, 4), T5-base 768-d text, 8 heads of 64, and
text cross-attention at *every* level. The release's YAML says ``layer_cross_attns: [F, F, F, T]`` but
OmegaConf hands it over as a ListConfig that the release's ``cast_tuple`` treats as one truthy scalar,
so every level got cross-attention; the released weights need that (``from_reference_kwargs`` mirrors it).
Not supported (unused by GenerateCT): self-attention/linear-attention layers, the non-memory-efficient
layout, self-conditioning, image conditioning, combined upsample feature maps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from generatect_kedro.models.text_pooling import TextConditioning
from generatect_kedro.models.unet_blocks import (
    CrossEmbedLayer,
    Downsample,
    NoiseLevelEmbedding,
    PixelShuffleUpsample,
    ResnetBlock,
)

__all__ = ["UNetConfig", "UNet"]

# release Unet kwargs this implementation fixes, with the only value it supports
_FIXED_RELEASE_KWARGS: dict[str, Any] = {
    "memory_efficient": True, "layer_attns": False, "attend_at_middle": False, "use_linear_attn": False,
    "use_linear_cross_attn": False, "init_cross_embed": True, "cross_embed_downsample": False,
    "final_resnet_block": True, "pixel_shuffle_upsample": True, "combine_upsample_fmaps": False,
    "init_conv_to_final_conv_residual": False, "self_cond": False, "cond_images_channels": 0,
    "cosine_sim_attn": False, "init_dim": None, "dropout": 0.0,
}


@dataclass(frozen=True)
class UNetConfig:
    """U-Net hyper-parameters; defaults build the released ``superres_pretrained.pt`` U-Net (22.19 M)."""

    dim: int = 64
    dim_mults: tuple[int, ...] = (1, 2, 4)
    num_resnet_blocks: int | tuple[int, ...] = 2
    channels: int = 1
    text_embed_dim: int = 768  # T5-v1.1-base
    cond_dim: int | None = None  # width of the cross-attention context; None = dim (release default)
    attn_heads: int = 8
    attn_dim_head: int = 64
    mid_attn_heads: int = 8  # the release's mid blocks ignore attn_heads/attn_dim_head (class defaults)
    mid_attn_dim_head: int = 64
    layer_cross_attns: bool | tuple[bool, ...] = True  # per level (down i and its mirrored up level)
    lowres_cond: bool = True
    cond_on_text: bool = True
    max_text_len: int = 256
    num_time_tokens: int = 2
    learned_sinu_pos_emb_dim: int = 16
    attn_pool_text: bool = True
    attn_pool_num_latents: int = 32
    attn_pool_num_latents_mean_pooled: int = 4
    attn_pool_depth: int = 2
    attn_pool_max_seq_len: int = 512
    attn_pool_ff_mult: float = 4.0
    resnet_groups: int = 8
    init_cross_embed_kernel_sizes: tuple[int, ...] = (3, 7, 15)
    use_global_context_attn: bool = True
    scale_skip_connection: bool = True
    final_conv_kernel_size: int = 3

    def __post_init__(self) -> None:
        levels = len(self.dim_mults)
        if levels == 0:
            raise ValueError("dim_mults must name at least one level")
        for name in ("num_resnet_blocks", "layer_cross_attns"):
            value = getattr(self, name)
            if isinstance(value, (tuple, list)):
                if len(value) != levels:
                    raise ValueError(f"{name} has {len(value)} entries for {levels} levels")
                object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "dim_mults", tuple(self.dim_mults))
        object.__setattr__(self, "init_cross_embed_kernel_sizes", tuple(self.init_cross_embed_kernel_sizes))
        for width in {self.dim, *self.level_dims}:
            if width % self.resnet_groups:
                raise ValueError(f"channel count {width} is not divisible by resnet_groups {self.resnet_groups}")
        if self.attn_pool_text and self.attn_pool_max_seq_len < self.max_text_len:
            raise ValueError("attn_pool_max_seq_len must be >= max_text_len")

    # derived sizes -------------------------------------------------------------------------------
    @property
    def context_dim(self) -> int:
        return self.cond_dim if self.cond_dim is not None else self.dim

    @property
    def time_cond_dim(self) -> int:
        return self.dim * 4 * (2 if self.lowres_cond else 1)

    @property
    def level_dims(self) -> tuple[int, ...]:
        return tuple(self.dim * m for m in self.dim_mults)

    @property
    def blocks_per_level(self) -> tuple[int, ...]:
        n = self.num_resnet_blocks
        return n if isinstance(n, tuple) else (n,) * len(self.dim_mults)

    @property
    def cross_attn_per_level(self) -> tuple[bool, ...]:
        flags = self.layer_cross_attns
        return flags if isinstance(flags, tuple) else (bool(flags),) * len(self.dim_mults)

    @property
    def downsample_factor(self) -> int:
        """Image sides must be multiples of this (one 2× downsample per level)."""
        return 2 ** len(self.dim_mults)

    # construction helpers -----------------------------------------------------------------------
    @classmethod
    def from_reference_kwargs(
        cls, kwargs: Mapping[str, Any], *, text_embed_dim: int | None = None, listconfig_quirk: bool = True, **overrides
    ) -> UNetConfig:
        """Build from the release's ``Unet(**kwargs)`` (e.g. a ``superres.yaml`` ``unets.unet1`` entry).

        ``listconfig_quirk=True`` reproduces what the release built from YAML: a list ``layer_cross_attns``
        became one truthy value, i.e. cross-attention at every level. ``Superres`` always re-builds the
        U-Net with ``lowres_cond=True`` and its own ``text_embed_dim``, so pass that here.
        """
        kwargs = dict(kwargs)
        for key, supported in _FIXED_RELEASE_KWARGS.items():
            value = kwargs.pop(key, supported)
            if value != supported:
                raise ValueError(f"release U-Net option {key}={value!r} is not supported (only {supported!r})")
        flags = kwargs.get("layer_cross_attns")
        if isinstance(flags, (list, tuple)) and listconfig_quirk:
            kwargs["layer_cross_attns"] = bool(flags)
        if text_embed_dim is not None:
            kwargs["text_embed_dim"] = text_embed_dim
        if kwargs.get("channels_out") not in (None, kwargs.get("channels", 1)):
            raise ValueError("channels_out different from channels is not supported")
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in kwargs.items() if k in names}, **overrides})

    @classmethod
    def from_release_superres_config(
        cls, config: Mapping[str, Any], *, unet_name: str = "unet1", **overrides
    ) -> UNetConfig:
        """From a parsed release ``superres.yaml`` (``unets.<name>`` + ``superres.params``), quirk included.

        The text width is ``superres.params.text_embed_dim``, else T5-v1.1-base's 768 (what ``Superres`` uses).
        """
        params = config.get("superres", {}).get("params", {})
        text_dim = params.get("text_embed_dim") or 768
        return cls.from_reference_kwargs(config["unets"][unet_name], text_embed_dim=text_dim, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _DownLevel(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, num_blocks: int, cross_attn: bool, c: UNetConfig):
        super().__init__()
        self.downsample = Downsample(dim_in, dim_out)
        self.first_block = ResnetBlock(
            dim_out, dim_out, time_cond_dim=c.time_cond_dim, cond_dim=c.context_dim if cross_attn else None,
            groups=c.resnet_groups, heads=c.attn_heads, dim_head=c.attn_dim_head,
        )
        self.blocks = nn.ModuleList(
            ResnetBlock(dim_out, dim_out, time_cond_dim=c.time_cond_dim, groups=c.resnet_groups,
                        use_gca=c.use_global_context_attn)
            for _ in range(num_blocks)
        )


class _UpLevel(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, skip_dim: int, num_blocks: int, cross_attn: bool, c: UNetConfig):
        super().__init__()
        self.first_block = ResnetBlock(
            dim_out + skip_dim, dim_out, time_cond_dim=c.time_cond_dim,
            cond_dim=c.context_dim if cross_attn else None, groups=c.resnet_groups, heads=c.attn_heads,
            dim_head=c.attn_dim_head,
        )
        self.blocks = nn.ModuleList(
            ResnetBlock(dim_out + skip_dim, dim_out, time_cond_dim=c.time_cond_dim, groups=c.resnet_groups,
                        use_gca=c.use_global_context_attn)
            for _ in range(num_blocks)
        )
        self.upsample = PixelShuffleUpsample(dim_out, dim_in)


class UNet(nn.Module):
    """v-prediction U-Net for one 2-D slice batch. Plain module: no I/O, no device choices, no sampler."""

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = c = config or UNetConfig()
        self.gradient_checkpointing = False
        in_channels = c.channels * (2 if c.lowres_cond else 1)
        self.init_conv = CrossEmbedLayer(in_channels, c.dim, c.init_cross_embed_kernel_sizes, stride=1)

        embed_kwargs = dict(fourier_dim=c.learned_sinu_pos_emb_dim, time_cond_dim=c.time_cond_dim,
                            cond_dim=c.context_dim, num_tokens=c.num_time_tokens)
        self.time_embed = NoiseLevelEmbedding(**embed_kwargs)
        self.lowres_time_embed = NoiseLevelEmbedding(**embed_kwargs) if c.lowres_cond else None
        self.text = (
            TextConditioning(
                text_embed_dim=c.text_embed_dim, cond_dim=c.context_dim, time_cond_dim=c.time_cond_dim,
                max_text_len=c.max_text_len, attn_pool=c.attn_pool_text, pool_depth=c.attn_pool_depth,
                pool_dim_head=c.attn_dim_head, pool_heads=c.attn_heads, pool_num_latents=c.attn_pool_num_latents,
                pool_num_latents_mean_pooled=c.attn_pool_num_latents_mean_pooled,
                pool_max_seq_len=c.attn_pool_max_seq_len, pool_ff_mult=c.attn_pool_ff_mult,
            )
            if c.cond_on_text
            else None
        )
        self.norm_cond = nn.LayerNorm(c.context_dim)

        self.init_resnet_block = ResnetBlock(c.dim, c.dim, time_cond_dim=c.time_cond_dim, groups=c.resnet_groups,
                                             use_gca=c.use_global_context_attn)
        dims = (c.dim, *c.level_dims)
        in_out = list(zip(dims[:-1], dims[1:]))
        flags, blocks = c.cross_attn_per_level, c.blocks_per_level
        self.downs = nn.ModuleList(
            _DownLevel(d_in, d_out, n, f, c) for (d_in, d_out), n, f in zip(in_out, blocks, flags)
        )
        mid = dims[-1]
        mid_kwargs = dict(time_cond_dim=c.time_cond_dim, cond_dim=c.context_dim, groups=c.resnet_groups,
                          heads=c.mid_attn_heads, dim_head=c.mid_attn_dim_head)
        self.mid_block1 = ResnetBlock(mid, mid, **mid_kwargs)
        self.mid_block2 = ResnetBlock(mid, mid, **mid_kwargs)
        self.ups = nn.ModuleList(
            _UpLevel(d_in, d_out, d_out, n, f, c)  # memory-efficient skips have the level's output width
            for (d_in, d_out), n, f in zip(reversed(in_out), reversed(blocks), reversed(flags))
        )
        self.skip_scale = 2**-0.5 if c.scale_skip_connection else 1.0
        self.final_res_block = ResnetBlock(c.dim, c.dim, time_cond_dim=c.time_cond_dim, groups=c.resnet_groups,
                                           use_gca=True)
        final_in = c.dim + (c.channels if c.lowres_cond else 0)
        k = c.final_conv_kernel_size
        self.final_conv = nn.Conv2d(final_in, c.channels, k, padding=k // 2)
        nn.init.zeros_(self.final_conv.weight)  # start as "predict v = 0"
        nn.init.zeros_(self.final_conv.bias)

    def _run(self, block: ResnetBlock, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, t, context, use_reentrant=False)
        return block(x, t, context)

    def conditioning(
        self,
        log_snr: Tensor,
        lowres_noise_log_snr: Tensor | None,
        text_embeds: Tensor | None,
        text_mask: Tensor | None,
        keep: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """(time conditioning vector (b, time_cond_dim), normalised context tokens (b, m, cond_dim))."""
        t, tokens = self.time_embed(log_snr)
        if self.lowres_time_embed is not None:
            lowres_t, lowres_tokens = self.lowres_time_embed(lowres_noise_log_snr)
            t = t + lowres_t
            tokens = torch.cat((tokens, lowres_tokens), dim=-2)
        if text_embeds is not None and self.text is not None:
            text_tokens, text_hidden = self.text(text_embeds, text_mask, keep)
            t = t + text_hidden
            tokens = torch.cat((tokens, text_tokens), dim=-2)
        return t, self.norm_cond(tokens)

    def forward(
        self,
        x: Tensor,
        log_snr: Tensor,
        *,
        lowres_cond_img: Tensor | None = None,
        lowres_noise_log_snr: Tensor | None = None,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        cond_drop_prob: float = 0.0,
        text_keep_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """x (b, c, H, W) noisy slices; log_snr (b,) or scalar; lowres_cond_img (b, c, H, W) already upsampled
        and noised; text_embeds (b, n, text_embed_dim) with text_mask (b, n) True = real token.

        The prompt is dropped per sample with ``cond_drop_prob`` (one uniform draw per sample from
        ``generator``, only when 0 < p < 1), or exactly where ``text_keep_mask`` (b,) is False.
        """
        c = self.config
        b, _, height, width = x.shape
        if height % c.downsample_factor or width % c.downsample_factor:
            raise ValueError(f"slice size {height}×{width} must be a multiple of {c.downsample_factor}")
        log_snr = torch.as_tensor(log_snr, dtype=x.dtype, device=x.device).expand(b)
        if c.lowres_cond:
            if lowres_cond_img is None or lowres_noise_log_snr is None:
                raise ValueError("this U-Net is low-res conditioned: pass lowres_cond_img and lowres_noise_log_snr")
            lowres_noise_log_snr = torch.as_tensor(lowres_noise_log_snr, dtype=x.dtype, device=x.device).expand(b)
            x = torch.cat((x, lowres_cond_img), dim=1)
        keep = text_keep_mask.to(x.device).bool() if text_keep_mask is not None else self._keep_mask(
            b, cond_drop_prob, x.device, generator
        )

        t, context = self.conditioning(log_snr, lowres_noise_log_snr, text_embeds, text_mask, keep)
        x = self._run(self.init_resnet_block, self.init_conv(x), t)

        skips = []
        for level in self.downs:
            x = self._run(level.first_block, level.downsample(x), t, context)
            for block in level.blocks:
                x = self._run(block, x, t)
                skips.append(x)
            skips.append(x)  # the release's (identity) attention slot pushes one more skip per level
        x = self._run(self.mid_block1, x, t, context)
        x = self._run(self.mid_block2, x, t, context)
        for level in self.ups:
            x = self._run(level.first_block, torch.cat((x, skips.pop() * self.skip_scale), dim=1), t, context)
            for block in level.blocks:
                x = self._run(block, torch.cat((x, skips.pop() * self.skip_scale), dim=1), t)
            x = level.upsample(x)

        x = self._run(self.final_res_block, x, t)
        if c.lowres_cond:
            x = torch.cat((x, lowres_cond_img), dim=1)
        return self.final_conv(x)

    @staticmethod
    def _keep_mask(batch: int, cond_drop_prob: float, device: torch.device, generator: torch.Generator | None):
        if cond_drop_prob <= 0:
            return torch.ones(batch, dtype=torch.bool, device=device)
        if cond_drop_prob >= 1:
            return torch.zeros(batch, dtype=torch.bool, device=device)
        draw_device = generator.device if generator is not None else device
        return (torch.rand(batch, generator=generator, device=draw_device) < 1 - cond_drop_prob).to(device)
