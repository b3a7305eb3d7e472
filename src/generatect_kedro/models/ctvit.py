"""CT-ViT: the VQ autoencoder that turns a chest CT volume into a (t, h, w) grid of codebook ids.

Volumes are (batch, channels, slices, H, W) with slices = 1 + temporal_patch_size·k. The first slice is
patchified alone, the rest as temporal_patch_size-slice tubelets, giving t = 1 + k token groups of an
(H/p)×(W/p) grid. Encoder: spatial transformer within each slice group (2-D continuous position bias),
then a transformer along depth per grid cell; cosine-sim EMA codebook; the decoder mirrors it (depth,
then spatial) and ends in linear projections back to pixels. There is no absolute position embedding,
so any number of slice groups works.

Defaults reproduce the released ``ctvit_pretrained.pt`` function (non-causal depth attention, causal PEG,
``reference_quirks``). ``causal_depth=True`` makes the depth attention causal (the paper's description):
then no slice group sees later ones anywhere in the encoder or decoder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from einops.layers.torch import Rearrange
from torch import Tensor, nn

from generatect_kedro.models.attention import Transformer
from generatect_kedro.models.position_bias import ContinuousPositionBias
from generatect_kedro.models.vector_quantizer import CosineSimVQ, VQOutput

__all__ = ["CTViTConfig", "CTViT", "CTViTOutput"]


@dataclass(frozen=True)
class CTViTConfig:
    """CT-ViT hyper-parameters; defaults are the paper / released checkpoint's."""

    dim: int = 512
    codebook_size: int = 8192
    image_size: int = 128
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_depth: int = 4
    temporal_depth: int = 4
    dim_head: int = 32
    heads: int = 8
    channels: int = 1
    ff_mult: float = 4
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    vq_decay: float = 0.8
    vq_commitment_weight: float = 1.0
    vq_sync_distributed: bool = False  # all-reduce EMA statistics across ranks (the release does not)
    causal_depth: bool = False
    reference_quirks: bool = True

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.causal_depth and self.reference_quirks:
            # The release's temporal PEG reshapes ((b h w), t) memory as (b, t, h, w): its 3×3×3 window then
            # mixes neighbouring depth positions, so information would leak from later slices.
            raise ValueError("causal_depth=True needs reference_quirks=False (the quirky temporal PEG is not causal)")

    @property
    def grid_hw(self) -> tuple[int, int]:
        """Token grid (h, w) of one slice group."""
        n = self.image_size // self.patch_size
        return n, n

    def token_grid(self, num_slices: int) -> tuple[int, int, int]:
        """(t, h, w) token grid of a volume with ``num_slices`` slices (must be 1 + temporal_patch_size·k)."""
        if num_slices < 1 or (num_slices - 1) % self.temporal_patch_size:
            raise ValueError(f"slices must be 1 + {self.temporal_patch_size}·k, got {num_slices}")
        return (1 + (num_slices - 1) // self.temporal_patch_size, *self.grid_hw)

    def num_slices(self, num_groups: int) -> int:
        """Slices decoded from ``num_groups`` token groups."""
        return 1 + (num_groups - 1) * self.temporal_patch_size

    @classmethod
    def from_reference_kwargs(cls, kwargs: dict[str, Any], **overrides: Any) -> CTViTConfig:
        """Build from the release's ``CTViT(**kwargs)`` arguments (GAN/VGG arguments are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in kwargs.items() if k in names}, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CTViTOutput:
    recon: Tensor  # (b, c, slices, H, W), or (b, c, H, W) for a single-slice 4-D input
    ids: Tensor  # (b, t, h, w) int64 codebook ids
    commit_loss: Tensor  # scalar, weighted; not part of recon_loss (the release drops it without GAN/VGG)
    recon_loss: Tensor  # scalar MSE(volume, recon): the release's training loss without GAN/VGG
    pre_quant: Tensor  # (b, t, h, w, d) encoder output
    quantized: Tensor  # (b, t, h, w, d) decoder input (straight-through in training)


class CTViT(nn.Module):
    """Factorised spatial / depth transformer VQ autoencoder. Plain module: no I/O, no device choices."""

    def __init__(self, config: CTViTConfig):
        super().__init__()
        self.config = c = config
        p, pt, ch = c.patch_size, c.temporal_patch_size, c.channels

        self.spatial_rel_pos_bias = ContinuousPositionBias(dim=c.dim, heads=c.heads, num_dims=2)

        first_dim, tube_dim = ch * p * p, ch * pt * p * p
        self.to_patch_emb_first_frame = nn.Sequential(
            Rearrange("b c 1 (h p1) (w p2) -> b 1 h w (c p1 p2)", p1=p, p2=p),
            nn.LayerNorm(first_dim),
            nn.Linear(first_dim, c.dim),
            nn.LayerNorm(c.dim),
        )
        self.to_patch_emb = nn.Sequential(
            Rearrange("b c (t pt) (h p1) (w p2) -> b t h w (c pt p1 p2)", p1=p, p2=p, pt=pt),
            nn.LayerNorm(tube_dim),
            nn.Linear(tube_dim, c.dim),
            nn.LayerNorm(c.dim),
        )

        common = dict(
            dim=c.dim, dim_head=c.dim_head, heads=c.heads, ff_mult=c.ff_mult, attn_dropout=c.attn_dropout,
            ff_dropout=c.ff_dropout, peg=True, peg_causal=True, reference_quirks=c.reference_quirks,
        )
        depth_kwargs = dict(common, causal=c.causal_depth, peg_token_order="bhwt")
        self.enc_spatial_transformer = Transformer(depth=c.spatial_depth, **common)
        self.enc_temporal_transformer = Transformer(depth=c.temporal_depth, **depth_kwargs)
        self.vq = CosineSimVQ(
            c.dim, c.codebook_size, decay=c.vq_decay, commitment_weight=c.vq_commitment_weight,
            sync_distributed=c.vq_sync_distributed,
        )
        self.dec_spatial_transformer = Transformer(depth=c.spatial_depth, **common)
        self.dec_temporal_transformer = Transformer(depth=c.temporal_depth, **depth_kwargs)

        self.to_pixels_first_frame = nn.Sequential(
            nn.Linear(c.dim, first_dim),
            Rearrange("b 1 h w (c p1 p2) -> b c 1 (h p1) (w p2)", p1=p, p2=p),
        )
        self.to_pixels = nn.Sequential(
            nn.Linear(c.dim, tube_dim),
            Rearrange("b t h w (c pt p1 p2) -> b c (t pt) (h p1) (w p2)", p1=p, p2=p, pt=pt),
        )

    # ---- shapes ---------------------------------------------------------------------------------------

    def _check_volume(self, volume: Tensor) -> Tensor:
        c = self.config
        if volume.ndim == 4:  # a single slice (b, c, H, W)
            volume = rearrange(volume, "b c h w -> b c 1 h w")
        if volume.ndim != 5:
            raise ValueError(f"expected (b, c, slices, H, W), got shape {tuple(volume.shape)}")
        _, ch, f, hh, ww = volume.shape
        if ch != c.channels or (hh, ww) != (c.image_size, c.image_size):
            size = c.image_size
            raise ValueError(f"expected (b, {c.channels}, slices, {size}, {size}), got {tuple(volume.shape)}")
        c.token_grid(f)  # validates 1 + pt·k
        return volume

    # ---- encoder --------------------------------------------------------------------------------------

    def patch_embed(self, volume: Tensor) -> Tensor:
        """(b, c, slices, H, W) → (b, t, h, w, d) patch embeddings (first slice alone, then tubelets)."""
        volume = self._check_volume(volume)
        first = self.to_patch_emb_first_frame(volume[:, :, :1])
        if volume.shape[2] == 1:
            return first
        return torch.cat((first, self.to_patch_emb(volume[:, :, 1:])), dim=1)

    def encode_tokens(self, tokens: Tensor) -> Tensor:
        """Patch embeddings (b, t, h, w, d) → pre-quantisation tokens (b, t, h, w, d). The release's ``encode``."""
        b, t, h, w, _ = tokens.shape
        video_shape = (b, t, h, w)
        x = rearrange(tokens, "b t h w d -> (b t) (h w) d")
        bias = self.spatial_rel_pos_bias(h, w, device=tokens.device)
        x = self.enc_spatial_transformer(x, video_shape=video_shape, attn_bias=bias)
        x = rearrange(x, "(b t) (h w) d -> (b h w) t d", b=b, h=h, w=w)
        x = self.enc_temporal_transformer(x, video_shape=video_shape)
        return rearrange(x, "(b h w) t d -> b t h w d", b=b, h=h, w=w)

    def encode(self, volume: Tensor) -> Tensor:
        """(b, c, slices, H, W) → pre-quantisation tokens (b, t, h, w, d)."""
        return self.encode_tokens(self.patch_embed(volume))

    def quantize(self, tokens: Tensor, update_codebook: bool | None = None) -> VQOutput:
        """(b, t, h, w, d) → quantised tokens, ids (b, t, h, w), commitment loss. EMA-updates in training."""
        return self.vq(tokens, update_codebook=update_codebook)

    @torch.no_grad()
    def tokenize(self, volume: Tensor) -> Tensor:
        """(b, c, slices, H, W) → codebook ids (b, t, h, w). No graph, never updates the codebook."""
        return self.vq.assign(self.encode(volume))

    # ---- decoder --------------------------------------------------------------------------------------

    def decode(self, tokens: Tensor, grid_shape: tuple[int, int, int] | None = None) -> Tensor:
        """Quantised tokens (b, t, h, w, d), or (b, t·h·w, d) in (t, h, w) order → (b, c, slices, H, W)."""
        if tokens.ndim == 3:
            tokens = self._unflatten(tokens, grid_shape, "b (t h w) d -> b t h w d")
        b, t, h, w, _ = tokens.shape
        video_shape = (b, t, h, w)
        x = rearrange(tokens, "b t h w d -> (b h w) t d")
        x = self.dec_temporal_transformer(x, video_shape=video_shape)
        x = rearrange(x, "(b h w) t d -> (b t) (h w) d", b=b, h=h, w=w)
        bias = self.spatial_rel_pos_bias(h, w, device=tokens.device)
        x = self.dec_spatial_transformer(x, video_shape=video_shape, attn_bias=bias)
        x = rearrange(x, "(b t) (h w) d -> b t h w d", b=b, h=h, w=w)

        first = self.to_pixels_first_frame(x[:, :1])
        if t == 1:
            return first
        return torch.cat((first, self.to_pixels(x[:, 1:])), dim=2)

    def decode_from_ids(self, ids: Tensor, grid_shape: tuple[int, int, int] | None = None) -> Tensor:
        """Ids (b, t, h, w), or (b, n) in (t, h, w) order (``grid_shape`` optional) → (b, c, slices, H, W)."""
        if ids.ndim == 2:
            ids = self._unflatten(ids, grid_shape, "b (t h w) -> b t h w")
        if ids.ndim != 4:
            raise ValueError(f"expected ids (b, t, h, w) or (b, n), got shape {tuple(ids.shape)}")
        return self.decode(self.vq.lookup(ids))

    def _unflatten(self, x: Tensor, grid_shape: tuple[int, int, int] | None, pattern: str) -> Tensor:
        h, w = self.config.grid_hw
        n = x.shape[1]
        if grid_shape is not None:
            if tuple(grid_shape[1:]) != (h, w) or grid_shape[0] * h * w != n:
                raise ValueError(f"grid_shape {grid_shape} does not fit {n} tokens of a {h}×{w} grid")
        elif n % (h * w):
            raise ValueError(f"{n} tokens is not a whole number of {h}×{w} slice groups")
        return rearrange(x, pattern, h=h, w=w)

    # ---- full pass ------------------------------------------------------------------------------------

    def forward(self, volume: Tensor) -> CTViTOutput:
        """Encode, quantise (EMA update in training), decode; MSE reconstruction loss and commitment loss."""
        is_slice = volume.ndim == 4
        volume = self._check_volume(volume)
        pre_quant = self.encode_tokens(self.patch_embed(volume))
        vq = self.quantize(pre_quant)
        recon = self.decode(vq.quantized)
        recon_loss = F.mse_loss(volume, recon)
        if is_slice:
            recon = rearrange(recon, "b c 1 h w -> b c h w")
        return CTViTOutput(
            recon=recon, ids=vq.ids, commit_loss=vq.commit_loss, recon_loss=recon_loss,
            pre_quant=pre_quant, quantized=vq.quantized,
        )
