"""CT-ViT node helpers: the perceptual switch and split selection."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
from safetensors.torch import save_file

from generatect_kedro.models.perceptual import VGG16Config, VGG16Perceptual
from generatect_kedro.pipelines.ctvit.nodes import _perceptual_network, _split_ids

SMALL = {"width": 2, "fc_dim": 8, "pool_size": 1}


def test_perceptual_is_off_without_a_path_and_loads_with_one(tmp_path):
    assert _perceptual_network({"loss": {"perceptual": {"weights_path": None}}}) == (None,
                                                                                    "disabled (no weights path)")
    assert _perceptual_network({})[1] == "disabled (no weights path)"
    path = tmp_path / "vgg16.safetensors"
    save_file(VGG16Perceptual(VGG16Config(**SMALL)).state_dict(), str(path))
    net, status = _perceptual_network({"loss": {"perceptual": {"weights_path": str(path), "network": SMALL}}})
    assert isinstance(net, VGG16Perceptual) and status == "vgg16 fc7 from vgg16.safetensors"
    assert _perceptual_network({"loss": {"perceptual": {"weights_path": str(path), "weight": 0}}})[0] is None
    with pytest.raises(FileNotFoundError):
        _perceptual_network({"loss": {"perceptual": {"weights_path": str(tmp_path / "missing.pth")}}})


def test_split_ids_skip_volumes_without_grids(caplog):
    splits = pd.DataFrame({"volume_id": ["a", "b", "c"], "split": ["train", "train", "valid"]})
    with caplog.at_level(logging.WARNING):
        assert _split_ids({"a": None, "c": None}, splits, "train") == ["a"]
    assert "1 train volumes have no low-res grid" in caplog.text
