"""The CT-ViT "perceptual" network: ImageNet VGG16 truncated to fc7, frozen, loaded from a local file.

The released CT-ViT takes ``torchvision.models.vgg16(pretrained=True)``, cuts ``classifier[:-2]`` (so the
output is ReLU(fc7), 4096 features) and compares the features of one slice of input and reconstruction,
grey repeated to 3 channels, without ImageNet normalisation. torchvision cannot be installed here (it would
replace the CPU torch build), and nothing may be downloaded at run time, so VGG16 is defined here with
torchvision's state-dict names (``features.N.*``, ``classifier.{0,3}.*``): torchvision's own
``vgg16-397923af.pth`` (``torch.load(weights_only=True)``) or a ``.safetensors`` copy loads as is; fc8
(``classifier.6.*``) is dropped when present.

Differences from the release, on purpose: the network stays in eval mode (the release leaves the
classifier's dropout active while the CT-ViT trains), and inputs smaller than 32 pixels are upsampled
bilinearly to 32 (five 2× max-pools need at least that; the paper's 128² slices are unaffected).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["VGG16Config", "VGG16Perceptual", "load_vgg16_perceptual", "PerceptualWeightsError"]

LOG = logging.getLogger(__name__)

# torchvision's configuration "D": output channels in units of the first width; "M" = 2×2 max-pool.
_VGG16_LAYOUT = (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M")
_DROPPED_KEYS = ("classifier.6.weight", "classifier.6.bias")  # fc8: the release truncates it away
MIN_INPUT_SIZE = 32


class PerceptualWeightsError(ValueError):
    """The weights file does not hold a (truncated) torchvision VGG16 state dict of this configuration."""


@dataclass(frozen=True)
class VGG16Config:
    """torchvision's VGG16 is the default; smaller widths exist only so tests can build one in milliseconds."""

    width: int = 64  # channels of the first conv block (torchvision: 64 → 128 → 256 → 512 → 512)
    fc_dim: int = 4096  # fc6 / fc7 width
    pool_size: int = 7  # adaptive average pool before the classifier


class VGG16Perceptual(nn.Module):
    """(b, 1 or 3, H, W) slices in [-1, 1] → (b, fc_dim) ReLU(fc7) features. Frozen, always in eval mode."""

    def __init__(self, config: VGG16Config = VGG16Config()):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out = config.width * int(item)
                layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((config.pool_size, config.pool_size))
        self.classifier = nn.Sequential(  # torchvision's classifier[:-2]: fc6, ReLU, Dropout, fc7, ReLU
            nn.Linear(channels * config.pool_size**2, config.fc_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(config.fc_dim, config.fc_dim),
            nn.ReLU(inplace=True),
        )
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> VGG16Perceptual:  # noqa: ARG002 - frozen feature net
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if min(x.shape[-2:]) < MIN_INPUT_SIZE:
            scale = MIN_INPUT_SIZE / min(x.shape[-2:])
            size = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle.UnpicklingError for anything but plain tensors
        raise PerceptualWeightsError(f"could not read {path} as a state dict with torch.load(weights_only=True): "
                                     f"{error}") from error
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise PerceptualWeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    return dict(state)


def _check_keys(state: Mapping[str, Tensor], expected: Mapping[str, torch.Size], path: Path) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - set(_DROPPED_KEYS))
    wrong = sorted(k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        def head(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" … ({len(keys)} in all)" if len(keys) > 6 else "")

        problems = [f"missing keys: {head(missing)}" if missing else "",
                    f"unexpected keys: {head(unexpected)}" if unexpected else "",
                    "shape mismatches: " + ", ".join(f"{k} {tuple(state[k].shape)} != {tuple(expected[k])}"
                                                     for k in wrong[:6]) if wrong else ""]
        raise PerceptualWeightsError(
            f"{path} is not a torchvision VGG16 state dict (features.N.*, classifier.0/3.*): "
            + "; ".join(p for p in problems if p))


def load_vgg16_perceptual(path: str | Path, config: VGG16Config = VGG16Config()) -> VGG16Perceptual:
    """Build the truncated VGG16 from a local ``.pth``/``.pt`` (weights_only) or ``.safetensors`` file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"perceptual-loss weights not found at {path}: put torchvision's VGG16 ImageNet state dict there "
            "(vgg16-397923af.pth or a .safetensors copy), or set ctvit.loss.perceptual.weights_path to null "
            "to train without the perceptual term")
    state = _read_state_dict(path)
    with torch.device("meta"):  # no random init of 134 M parameters just to overwrite them
        model = VGG16Perceptual(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    _check_keys(state, expected, path)
    model.load_state_dict({k: state[k].float().contiguous() for k in expected}, assign=True)
    model.requires_grad_(False)
    LOG.info("perceptual network: VGG16 fc7 from %s (%.1f M parameters, frozen)", path,
             sum(p.numel() for p in model.parameters()) / 1e6)
    return model
