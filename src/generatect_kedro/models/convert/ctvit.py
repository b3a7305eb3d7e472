"""Map the released CT-ViT state dict (``ctvit_pretrained.pt``) onto :class:`CTViT`.

Our module names equal the release's, so conversion is: select the CT-ViT part (drop ``vgg.*``, split off
``discr.*``), drop entries that carry no information (always-zero ``beta`` buffers of the bias-less
LayerNorm, zero-size self-attention ``null_kv``, the never-used ``context_norm`` of self-attention
layers), and move the codebook from ``vq._codebook.{embed,cluster_size,initted}`` (leading codebook axis
of 1) to ``vq.{embed,cluster_size,initted}``. Every expectation (keys, shapes) comes from the config via
a model built on the meta device, so the same code covers the fixture and the paper configuration.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from generatect_kedro.models.ctvit import CTViT, CTViTConfig
from generatect_kedro.models.discriminator import Discriminator, DiscriminatorConfig

__all__ = [
    "convert_ctvit_state_dict",
    "convert_discriminator_state_dict",
    "drop_release_attention_extras",
    "check_state_dict",
    "expected_state_shapes",
    "load_released_ctvit",
    "load_state_file",
]

CODEBOOK_PREFIX = "vq._codebook."
DROPPED_PREFIXES = ("vgg.", "discr.")


@functools.lru_cache(maxsize=8)
def expected_state_shapes(config: CTViTConfig | DiscriminatorConfig) -> dict[str, tuple[int, ...]]:
    """Key → shape of our model's state dict for ``config``, from a meta-device build (no memory, no init cost)."""
    with torch.device("meta"):
        model = CTViT(config) if isinstance(config, CTViTConfig) else Discriminator(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def drop_release_attention_extras(state: Mapping[str, Tensor], expected_keys: set[str] | Mapping) -> dict[str, Tensor]:
    """Drop the release attention entries our blocks do not have (shared with the MaskGIT converter).

    * ``*.beta`` of a bias-less LayerNorm (a ``*.gamma`` sibling exists): must be all zero;
    * ``*.null_kv`` with zero elements (self-attention has no null key/values);
    * ``*.context_norm.*`` that ``expected_keys`` lacks (self-attention never uses it).
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith(".beta") and f"{key[: -len('beta')]}gamma" in state:
            if not value.is_meta and torch.count_nonzero(value):
                raise ValueError(f"{key}: bias-less LayerNorm beta is non-zero; this checkpoint is not the release's")
            continue
        if key.endswith(".null_kv") and value.numel() == 0:
            continue
        if ".context_norm." in key and key not in expected_keys:
            continue
        out[key] = value
    return out


def check_state_dict(state: Mapping[str, Tensor], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
    """Raise one readable error listing missing, unexpected and wrongly shaped keys."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: {tuple(state[k].shape)} != {shape}"
        for k, shape in expected.items()
        if k in state and tuple(state[k].shape) != shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{what} does not match the model config: missing={missing[:10]} ({len(missing)}), "
            f"unexpected={unexpected[:10]} ({len(unexpected)}), shape mismatches={shapes[:10]} ({len(shapes)})"
        )


def convert_discriminator_state_dict(
    released: Mapping[str, Tensor], config: DiscriminatorConfig | None = None, *, strict: bool = True
) -> dict[str, Tensor]:
    """Release ``Discriminator`` state dict (without the ``discr.`` prefix) → :class:`Discriminator` state dict."""
    config = config or DiscriminatorConfig()
    expected = expected_state_shapes(config)
    out = drop_release_attention_extras(released, expected)
    if strict:
        check_state_dict(out, expected, "discriminator state dict")
    return out


def convert_ctvit_state_dict(
    released: Mapping[str, Tensor],
    config: CTViTConfig,
    *,
    prefix: str = "",
    return_discriminator: bool = False,
    discriminator_config: DiscriminatorConfig | None = None,
    strict: bool = True,
) -> dict[str, Tensor] | tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """Released CT-ViT state dict → our :class:`CTViT` state dict (plus the discriminator's, if asked).

    ``prefix`` selects a sub-model, e.g. ``"ctvit."`` inside ``transformer_pretrained.pt``. VGG weights
    are always dropped (the perceptual loss needs its own ImageNet VGG16). The discriminator part is
    ``None`` when the checkpoint has none (an evaluation copy).
    """
    state = {k[len(prefix) :]: v for k, v in released.items() if k.startswith(prefix)}
    discr = {k[len("discr.") :]: v for k, v in state.items() if k.startswith("discr.")}
    core = {k: v for k, v in state.items() if not k.startswith(DROPPED_PREFIXES)}

    expected = expected_state_shapes(config)
    core = drop_release_attention_extras(core, expected)
    for key in [k for k in core if k.startswith(CODEBOOK_PREFIX)]:
        value = core.pop(key)
        name = key[len(CODEBOOK_PREFIX) :]
        if name in ("embed", "cluster_size"):
            if value.shape[0] != 1:
                raise ValueError(f"{key}: expected a single codebook (leading axis 1), got {tuple(value.shape)}")
            value = value[0]
        core[f"vq.{name}"] = value
    if strict:
        check_state_dict(core, expected, "CT-ViT state dict")
    if not return_discriminator:
        return core
    if not discr:
        return core, None
    discr_config = discriminator_config or DiscriminatorConfig(channels=config.channels)
    return core, convert_discriminator_state_dict(discr, discr_config, strict=strict)


def load_state_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch pickle (``weights_only=True``: no code execution)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        for key in ("model", "state_dict"):  # trainer-style wrappers
            if isinstance(obj.get(key), Mapping):
                return dict(obj[key])
    if not isinstance(obj, Mapping):
        raise TypeError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    return dict(obj)


def load_released_ctvit(
    path: str | Path, config: CTViTConfig | None = None, *, prefix: str = "", strict: bool = True
) -> CTViT:
    """Build :class:`CTViT` (paper config by default) with the released weights, in eval mode, on CPU."""
    config = config or CTViTConfig()
    state = convert_ctvit_state_dict(load_state_file(path), config, prefix=prefix, strict=strict)
    model = CTViT(config)
    model.load_state_dict(state, strict=strict)
    return model.eval()
