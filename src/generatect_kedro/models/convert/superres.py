"""Map the released super-resolution checkpoint (``superres_pretrained.pt``) onto :class:`UNet`.

The file is the release trainer's dict: ``model`` (the ``Superres`` state dict: ``unets.0.dummy_parameter``
of the NullUnet placeholder, ``unets.1.*`` the U-Net), ``ema`` (a ModuleList of ema-pytorch ``EMA``
wrappers, one per U-Net), ``steps``, optimizer states… Sampling uses the EMA weights, as the release does.
ema-pytorch versions differ in what the wrapper stores: the EMA copy is always ``<i>.ema_model.*``; some
versions also register the live model as ``<i>.online_model.*`` and add ``initted``/``step`` buffers.

Leaf names are the release's; the renames are structural (levels, time and text embeddings) plus the
gain-only LayerNorm's ``g`` → ``weight``. Expectations (keys, shapes) come from the config via a meta-device
build, so the same code covers the fixture and the paper configuration.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from generatect_kedro.models.convert.ctvit import check_state_dict
from generatect_kedro.models.unet import UNet, UNetConfig

__all__ = [
    "convert_superres_state_dict",
    "expected_unet_state_shapes",
    "extract_ema_unet_state",
    "load_released_superres",
    "read_superres_checkpoint",
    "release_unet_key",
]

RELEASE_UNET_INDEX = 1  # unets.0 is the NullUnet placeholder of the (unused) first cascade stage

# (pattern, replacement) applied in order to every release U-Net key (without the "unets.1." prefix)
_RULES: tuple[tuple[re.Pattern, str], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"^null_text_embed$", "text.null_embed"),
        (r"^null_text_hidden$", "text.null_hidden"),
        (r"^text_to_cond\.", "text.to_cond."),
        (r"^to_text_non_attn_cond\.", "text.to_hidden."),
        (r"^attn_pool\.to_latents_from_mean_pooled_seq\.", "text.resampler.mean_to_latents."),
        (r"^attn_pool\.layers\.(\d+)\.0\.", r"text.resampler.layers.\1.attn."),
        (r"^attn_pool\.layers\.(\d+)\.1\.", r"text.resampler.layers.\1.ff."),
        (r"^attn_pool\.", "text.resampler."),
        (r"^to_(lowres_)?time_hiddens\.0\.weights$", r"\1time_embed.fourier.weights"),
        (r"^to_(lowres_)?time_hiddens\.1\.", r"\1time_embed.to_hidden."),
        (r"^to_(lowres_)?time_cond\.0\.", r"\1time_embed.to_cond."),
        (r"^to_(lowres_)?time_tokens\.0\.", r"\1time_embed.to_tokens.0."),
        (r"^downs\.(\d+)\.0\.1\.", r"downs.\1.downsample.conv."),
        (r"^downs\.(\d+)\.1\.", r"downs.\1.first_block."),
        (r"^downs\.(\d+)\.2\.(\d+)\.", r"downs.\1.blocks.\2."),
        (r"^ups\.(\d+)\.0\.", r"ups.\1.first_block."),
        (r"^ups\.(\d+)\.1\.(\d+)\.", r"ups.\1.blocks.\2."),
        (r"^ups\.(\d+)\.3\.net\.0\.", r"ups.\1.upsample.conv."),
        (r"\.g$", ".weight"),  # gain-only LayerNorm
    )
)


def release_unet_key(key: str) -> str:
    """One release U-Net key (``downs.0.2.1.block1.project.weight``) → ours (``downs.0.blocks.1.block1...``)."""
    for pattern, replacement in _RULES:
        key = pattern.sub(replacement, key)
    return key


@functools.lru_cache(maxsize=8)
def expected_unet_state_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    """Key → shape of our U-Net's state dict for ``config``, from a meta-device build."""
    with torch.device("meta"):
        model = UNet(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert_superres_state_dict(
    released: Mapping[str, Tensor],
    config: UNetConfig | None = None,
    *,
    prefix: str = f"unets.{RELEASE_UNET_INDEX}.",
    strict: bool = True,
) -> dict[str, Tensor]:
    """Release U-Net state dict (under ``prefix``; ``""`` for a bare U-Net / EMA copy) → :class:`UNet` state dict."""
    config = config or UNetConfig()
    state = {release_unet_key(k[len(prefix) :]): v for k, v in released.items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"no keys under {prefix!r} (first keys: {list(released)[:5]})")
    if strict:
        check_state_dict(state, expected_unet_state_shapes(config), "super-resolution U-Net state dict")
    return state


def extract_ema_unet_state(ema: Mapping[str, Tensor], unet_index: int = RELEASE_UNET_INDEX) -> dict[str, Tensor]:
    """The EMA copy of U-Net ``unet_index`` from the checkpoint's ``ema`` entry, as a bare U-Net state dict.

    Accepts ``<i>.ema_model.*`` (a ModuleList of wrappers, the release trainer) and ``ema_model.*`` (one
    wrapper); ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) wrappers are stripped.
    """
    ema = {re.sub(r"(^|\.)(module|_orig_mod)\.", r"\1", k): v for k, v in ema.items()}
    for prefix in (f"{unet_index}.ema_model.", "ema_model."):
        state = {k[len(prefix) :]: v for k, v in ema.items() if k.startswith(prefix)}
        if state:
            return state
    online = any(".online_model." in k or k.startswith("online_model.") for k in ema)
    hint = " (only online_model weights: this is not an EMA copy; use use_ema=False)" if online else ""
    raise ValueError(
        f"no EMA weights for U-Net {unet_index} in the ema entry{hint}; expected keys like "
        f"'{unet_index}.ema_model.final_conv.weight', got {sorted(ema)[:5]}"
    )


def read_superres_checkpoint(path: str | Path) -> tuple[dict[str, Tensor] | None, dict[str, Tensor] | None]:
    """(model state, ema state) from ``superres_pretrained.pt`` (``weights_only=True``) or a safetensors file.

    A flat file (safetensors, or a bare state dict) is split on ``model.``/``ema.`` prefixes; without them
    it is taken as the model state.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: Mapping[str, Any] = load_file(str(path), device="cpu")
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping):
        raise TypeError(f"{path} does not hold a checkpoint dict (got {type(obj).__name__})")
    if isinstance(obj.get("model"), Mapping) or isinstance(obj.get("ema"), Mapping):
        model, ema = obj.get("model"), obj.get("ema")
        return (dict(model) if model is not None else None), (dict(ema) if ema is not None else None)
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    ema = {k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")}
    if not model and not ema:
        return tensors, None
    return model or None, ema or None


def load_released_superres(
    path: str | Path, config: UNetConfig | None = None, *, use_ema: bool = True, strict: bool = True
) -> UNet:
    """Build :class:`UNet` (paper config by default) from the released checkpoint, EMA weights by default, eval mode."""
    config = config or UNetConfig()
    model_state, ema_state = read_superres_checkpoint(path)
    if use_ema:
        if ema_state is None:
            raise ValueError(f"{path} has no 'ema' entry; pass use_ema=False to load the raw training weights")
        state = convert_superres_state_dict(extract_ema_unet_state(ema_state), config, prefix="", strict=strict)
    else:
        if model_state is None:
            raise ValueError(f"{path} has no 'model' entry")
        prefix = f"unets.{RELEASE_UNET_INDEX}." if any(k.startswith("unets.") for k in model_state) else ""
        state = convert_superres_state_dict(model_state, config, prefix=prefix, strict=strict)
    unet = UNet(config)
    unet.load_state_dict(state, strict=strict)
    return unet.eval()
