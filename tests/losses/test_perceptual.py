"""The VGG16 perceptual network: torchvision's key layout, local loading (.pth / .safetensors), clear errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from generatect_kedro.models.perceptual import (
    PerceptualWeightsError,
    VGG16Config,
    VGG16Perceptual,
    load_vgg16_perceptual,
)

SMALL = VGG16Config(width=2, fc_dim=8, pool_size=2)
# torchvision.models.vgg16().state_dict() shapes (conv weights are (out, in, 3, 3)).
TORCHVISION_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
                     14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512),
                     26: (512, 512), 28: (512, 512)}


def test_full_size_layout_matches_torchvision_minus_fc8():
    with torch.device("meta"):
        model = VGG16Perceptual()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {}
    for index, (out, inp) in TORCHVISION_CONVS.items():
        expected[f"features.{index}.weight"] = (out, inp, 3, 3)
        expected[f"features.{index}.bias"] = (out,)
    expected.update({"classifier.0.weight": (4096, 25088), "classifier.0.bias": (4096,),
                     "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,)})
    assert shapes == expected


def small_state(with_fc8: bool = True) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in VGG16Perceptual(SMALL).state_dict().items()}
    if with_fc8:
        state["classifier.6.weight"] = torch.zeros(1000, SMALL.fc_dim)
        state["classifier.6.bias"] = torch.zeros(1000)
    return state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_loads_local_weights_frozen_and_in_eval(tmp_path, suffix):
    state = small_state()
    path = tmp_path / f"vgg{suffix}"
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    model = load_vgg16_perceptual(path, SMALL)
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training
    torch.testing.assert_close(model.state_dict()["features.0.weight"], state["features.0.weight"])
    out = model(torch.rand(3, 1, 16, 16) * 2 - 1)  # grey, below 32 px: repeated to RGB and upsampled
    assert out.shape == (3, SMALL.fc_dim) and (out >= 0).all()


def test_missing_file_names_the_parameter(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights_path"):
        load_vgg16_perceptual(tmp_path / "nope.pth", SMALL)


def test_wrong_keys_and_shapes_are_reported(tmp_path):
    state = small_state(with_fc8=False)
    del state["features.28.bias"]
    state["features.0.weight"] = torch.zeros(5, 3, 3, 3)
    state["head.weight"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(PerceptualWeightsError) as error:
        load_vgg16_perceptual(path, SMALL)
    message = str(error.value)
    assert "features.28.bias" in message and "head.weight" in message and "features.0.weight" in message


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"model": VGG16Perceptual(SMALL)}, path)  # a pickled module, not a state dict
    with pytest.raises(PerceptualWeightsError, match="weights_only"):
        load_vgg16_perceptual(path, SMALL)
