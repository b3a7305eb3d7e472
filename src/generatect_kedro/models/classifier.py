"""A compact CT-Net-style multi-abnormality classifier: a 2D conv encoder per axial slice, a 3D conv head.

GenerateCT's supplementary experiments (Tables 1–2) and its FVD_CT-Net score use CT-Net (Draelos et al.
2021): a 2D ResNet-18 over the axial slices, then 3D convolutions over the stack of slice feature maps and
a linear layer to 83 (there: 18) logits. Its weights were never released (GenerateCT issue #20), so the
project trains its own. This one keeps the same two-stage shape but small enough to train on a CPU:

    x (b, 1, D, H, W) in [-1, 1]
      → slice encoder, on every axial slice as a 2D image: a conv3×3-SiLU stem, then `len(widths)` stages
        of (`depth` × conv3×3-GroupNorm-SiLU, then a stride-2 one)   → (b·D, widths[-1], h, w)
      → 3D head: `head_blocks` × conv3×3×3-GroupNorm-SiLU over (D, h, w) → (b, head_width, D, h, w)
      → adaptive average pool to `pool_dhw`, flatten, linear, SiLU   → features (b, embed_dim)
      → dropout, linear                                              → logits (b, num_labels)

The coarse `pool_dhw` grid (not a global pool) keeps *where* something is, as CT-Net's flattening does:
fluid density in the posterior lung base means effusion, the same density in the mediastinum does not.
GroupNorm, not BatchNorm: features must not depend on which volumes share a batch (the Fréchet metrics
compare feature distributions of separately batched real and generated sets). Any (D, H, W) works thanks
to the adaptive pooling; H and W must survive the in-plane downsampling (`min_hw`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from einops import rearrange, reduce
from torch import Tensor, nn

from generatect_kedro.labels import CT_RATE_LABELS

__all__ = ["CLASSIFIER_KIND", "AbnormalityClassifier", "ClassifierConfig", "build_classifier",
           "classifier_registry_config"]

CLASSIFIER_KIND = "abnormality_classifier"


@dataclass(frozen=True)
class ClassifierConfig:
    """Hyper-parameters of `AbnormalityClassifier`; the defaults suit 2 CPU cores and small grids."""

    in_channels: int = 1
    widths: tuple[int, ...] = (16, 32, 64)  # slice-encoder channels per stage; each stage halves H and W
    depth: int = 1  # conv blocks per encoder stage before its downsampling conv
    head_width: int = 32  # channels of the 3D head
    head_blocks: int = 1  # 3D conv blocks in the head
    pool_dhw: tuple[int, int, int] = (2, 2, 2)  # adaptive-pool grid before flattening; (1, 1, 1) = global pool
    embed_dim: int = 128  # dimension of `features` (the FVD_CT-Net feature vector)
    dropout: float = 0.1  # before the linear layer
    num_labels: int = len(CT_RATE_LABELS)
    max_groups: int = 4  # GroupNorm groups (fewer when a width is not divisible); not = width: a per-channel
    # norm of each slice (instance norm) would throw away the absolute density, which is the point in CT

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "pool_dhw", tuple(int(p) for p in self.pool_dhw))
        problems = []
        if min(self.in_channels, self.num_labels, self.head_width, self.max_groups, self.embed_dim) < 1:
            problems.append("in_channels, num_labels, head_width, embed_dim and max_groups must be >= 1")
        if len(self.pool_dhw) != 3 or min(self.pool_dhw) < 1:
            problems.append(f"pool_dhw must be three positive ints, got {self.pool_dhw}")
        if not self.widths or min(self.widths) < 1:
            problems.append(f"widths must be a non-empty tuple of positive ints, got {self.widths}")
        if self.depth < 0 or self.head_blocks < 0:
            problems.append("depth and head_blocks must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if problems:
            raise ValueError("invalid classifier config: " + "; ".join(problems))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ClassifierConfig:
        """From a Kedro parameters mapping; unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"classifier config: unknown key(s) {', '.join(unknown)}; known: {sorted(known)}")
        return cls(**dict(params))

    @property
    def min_hw(self) -> int:
        """Smallest in-plane size for which every encoder stage still has at least 2×2 pixels to downsample."""
        return 2 ** len(self.widths)

    @property
    def feature_dim(self) -> int:
        return self.embed_dim

    @property
    def slice_feature_dim(self) -> int:
        return self.widths[-1]


def _groups(channels: int, max_groups: int) -> int:
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


def _block2d(c_in: int, c_out: int, groups: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.GroupNorm(_groups(c_out, groups), c_out), nn.SiLU())


def _block3d(c_in: int, c_out: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
                         nn.GroupNorm(_groups(c_out, groups), c_out), nn.SiLU())


class AbnormalityClassifier(nn.Module):
    """Multi-label logits for a CT grid; also the feature network of FVD_CT-Net / slice-level FID."""

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ClassifierConfig()
        # The first conv is not normalised: a per-slice norm right on the input would subtract the slice's
        # mean density, and HU level (fluid vs. air, a lung at -300 HU) is what this network must see.
        layers: list[nn.Module] = [nn.Conv2d(config.in_channels, config.widths[0], 3, padding=1), nn.SiLU()]
        c_in = config.widths[0]
        for width in config.widths:
            layers += [_block2d(c_in if i == 0 else width, width, config.max_groups) for i in range(config.depth)]
            layers.append(_block2d(width if config.depth else c_in, width, config.max_groups, stride=2))
            c_in = width
        self.slice_encoder = nn.Sequential(*layers)
        head: list[nn.Module] = []
        c_in = config.widths[-1]
        for _ in range(config.head_blocks):
            head.append(_block3d(c_in, config.head_width, config.max_groups))
            c_in = config.head_width
        if c_in != config.head_width:  # head_blocks == 0: a 1×1×1 projection keeps feature_dim = head_width
            head.append(nn.Conv3d(c_in, config.head_width, 1))
        self.head = nn.Sequential(*head)
        self.pool = nn.AdaptiveAvgPool3d(config.pool_dhw)
        pooled = config.head_width * config.pool_dhw[0] * config.pool_dhw[1] * config.pool_dhw[2]
        self.embed = nn.Sequential(nn.Linear(pooled, config.embed_dim), nn.SiLU())
        self.dropout = nn.Dropout(config.dropout)
        self.classify = nn.Linear(config.embed_dim, config.num_labels)

    def _check(self, x: Tensor) -> None:
        c = self.config
        if x.ndim != 5 or x.shape[1] != c.in_channels:
            raise ValueError(f"expected (b, {c.in_channels}, D, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < c.min_hw or x.shape[2] < 1:
            raise ValueError(f"H and W must be >= {c.min_hw} for {len(c.widths)} encoder stages, got "
                             f"{tuple(x.shape[-3:])}")

    def _encode_slices(self, x: Tensor) -> Tensor:
        """(b, c, D, H, W) → per-slice maps (b, C2, D, h, w)."""
        self._check(x)
        b = x.shape[0]
        slices = rearrange(x, "b c d h w -> (b d) c h w")  # every axial slice is one 2D image
        maps = self.slice_encoder(slices)  # (b·D, C2, h, w)
        return rearrange(maps, "(b d) c h w -> b c d h w", b=b)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features (b, embed_dim): what FVD_CT-Net compares."""
        pooled = self.pool(self.head(self._encode_slices(x)))  # (b, head_width, pd, ph, pw)
        return self.embed(rearrange(pooled, "b c d h w -> b (c d h w)"))

    def slice_features(self, x: Tensor) -> Tensor:
        """Per-axial-slice features (b·D, widths[-1]), b-major: the slice encoder pooled over (h, w)."""
        maps = self._encode_slices(x)
        return reduce(maps, "b c d h w -> (b d) c", "mean")

    def forward(self, x: Tensor) -> Tensor:
        """Logits (b, num_labels); `torch.sigmoid` gives the per-label probabilities."""
        return self.classify(self.dropout(self.features(x)))


def build_classifier(config: Mapping[str, Any]) -> nn.Module:
    """Registry builder for ``kind: abnormality_classifier``: the model block is ``config["model"]``
    (the project's convention) or, when there is none, the mapping itself minus ``kind``."""
    params = config["model"] if "model" in config else {k: v for k, v in config.items() if k != "kind"}
    return AbnormalityClassifier(ClassifierConfig.from_params(params))


def classifier_registry_config(config: ClassifierConfig, **extra: Any) -> dict[str, Any]:
    """The JSON-able config `register_model` stores, which `build_classifier` reads back."""
    model = {f.name: getattr(config, f.name) for f in fields(config)}
    model["widths"] = list(config.widths)
    model["pool_dhw"] = list(config.pool_dhw)
    return {"kind": CLASSIFIER_KIND, "model": model, **extra}


