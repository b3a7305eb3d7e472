"""Map the released ``transformer_pretrained.pt`` onto :class:`MaskGIT` (and its CT-ViT copy onto :class:`CTViT`).

The file is a plain ``MaskGITTransformer`` state dict: ``maskgit.*`` (the MaskGit) next to ``ctvit.*`` (an
evaluation copy of the CT-ViT, VGG and discriminator removed). Our MaskGIT module names equal the release's,
so conversion drops what carries no information (zero ``beta`` buffers of the bias-less LayerNorm, zero-size
self-attention ``null_kv``, unused self-attention ``context_norm``) via the CT-ViT converter's helper; the
CT-ViT part goes through :func:`convert_ctvit_state_dict`. Expectations come from meta-device builds of the
configs, so one code path covers the fixture and the paper configuration.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from generatect_kedro.models.convert.ctvit import (
    check_state_dict,
    convert_ctvit_state_dict,
    drop_release_attention_extras,
    load_state_file,
)
from generatect_kedro.models.ctvit import CTViTConfig
from generatect_kedro.models.maskgit import MaskGIT, MaskGITConfig

__all__ = [
    "convert_maskgit_state_dict",
    "expected_maskgit_shapes",
    "load_released_maskgit",
    "load_released_transformer",
    "split_transformer_state_dict",
]

MASKGIT_PREFIX = "maskgit."
CTVIT_PREFIX = "ctvit."


@functools.lru_cache(maxsize=8)
def expected_maskgit_shapes(config: MaskGITConfig) -> dict[str, tuple[int, ...]]:
    """Key → shape of :class:`MaskGIT`'s state dict for ``config`` (meta-device build: no memory, no init)."""
    with torch.device("meta"):
        model = MaskGIT(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert_maskgit_state_dict(
    released: Mapping[str, Tensor], config: MaskGITConfig, *, prefix: str = "", strict: bool = True
) -> dict[str, Tensor]:
    """Released ``MaskGit`` state dict → our :class:`MaskGIT` state dict.

    ``prefix`` selects the sub-model (``"maskgit."`` inside ``transformer_pretrained.pt``); other keys are
    ignored. ``strict`` raises one error listing missing, unexpected and mis-shaped entries.
    """
    state = {k[len(prefix) :]: v for k, v in released.items() if k.startswith(prefix)}
    expected = expected_maskgit_shapes(config)
    out = drop_release_attention_extras(state, expected)
    if strict:
        check_state_dict(out, expected, "MaskGIT state dict")
    return out


def split_transformer_state_dict(released: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``transformer_pretrained.pt`` → (``maskgit.*`` entries, ``ctvit.*`` entries), prefixes kept off.

    Raises if anything else is present, so a wrong file does not pass as a half-empty model.
    """
    other = sorted(k for k in released if not k.startswith((MASKGIT_PREFIX, CTVIT_PREFIX)))
    if other:
        raise ValueError(f"unexpected entries in a MaskGITTransformer checkpoint: {other[:10]} ({len(other)})")
    maskgit = {k[len(MASKGIT_PREFIX) :]: v for k, v in released.items() if k.startswith(MASKGIT_PREFIX)}
    ctvit = {k[len(CTVIT_PREFIX) :]: v for k, v in released.items() if k.startswith(CTVIT_PREFIX)}
    if not maskgit:
        raise ValueError("no maskgit.* entries: not a MaskGITTransformer checkpoint")
    return maskgit, ctvit


def load_released_transformer(
    path: str | Path,
    maskgit_config: MaskGITConfig | None = None,
    ctvit_config: CTViTConfig | None = None,
    *,
    strict: bool = True,
) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """Read ``transformer_pretrained.pt`` (torch pickle with ``weights_only=True``, or safetensors).

    Returns (MaskGIT state, CT-ViT state) for :class:`MaskGIT` / :class:`CTViT` built with the configs
    (paper defaults when omitted); the CT-ViT state is ``None`` if the file holds no ``ctvit.*`` part.
    """
    maskgit, ctvit = split_transformer_state_dict(load_state_file(path))
    maskgit_state = convert_maskgit_state_dict(maskgit, maskgit_config or MaskGITConfig(), strict=strict)
    ctvit_state = convert_ctvit_state_dict(ctvit, ctvit_config or CTViTConfig(), strict=strict) if ctvit else None
    return maskgit_state, ctvit_state  # type: ignore[return-value]


def load_released_maskgit(path: str | Path, config: MaskGITConfig | None = None, *, strict: bool = True) -> MaskGIT:
    """Build :class:`MaskGIT` (paper config by default) with released weights, in eval mode, on CPU.

    ``path`` is ``transformer_pretrained.pt`` (its ``maskgit.*`` part is used) or a bare MaskGit state dict.
    """
    config = config or MaskGITConfig()
    released = load_state_file(path)
    prefix = MASKGIT_PREFIX if any(k.startswith(MASKGIT_PREFIX) for k in released) else ""
    model = MaskGIT(config)
    model.load_state_dict(convert_maskgit_state_dict(released, config, prefix=prefix, strict=strict), strict=strict)
    return model.eval()
