"""Converter: released super-resolution checkpoint layout ↔ our U-Net (paper config on meta, fixture weights)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from generatect_kedro.models.convert import (
    convert_superres_state_dict,
    expected_unet_state_shapes,
    extract_ema_unet_state,
    load_released_superres,
    release_unet_key,
)
from generatect_kedro.models.unet import UNetConfig

pytestmark = pytest.mark.fixtures


def fixture_config(fixtures_dir: Path) -> UNetConfig:
    meta = json.loads((fixtures_dir / "superres_unet.json").read_text())
    return UNetConfig.from_release_superres_config(yaml.safe_load(meta["yaml_used"]))


def read_key_list(path: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape, _dtype = line.split("\t")
            shapes[key] = tuple(ast.literal_eval(shape))
    return shapes


def meta_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def test_release_keys_map_one_to_one_at_paper_config(fixtures_dir: Path):
    release = read_key_list(fixtures_dir / "release_keys" / "release_superres_model_keys.txt")
    config = UNetConfig()  # dim 64, T5-base, cross-attention at every level (the as-built release)
    state = convert_superres_state_dict(meta_state(release), config)
    expected = expected_unet_state_shapes(config)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected  # every entry, right shape, nothing else
    unet_keys = [k for k in release if k.startswith("unets.1.")]
    assert len(unet_keys) == len(expected) == 447  # a bijection: no release entry dropped
    assert set(release) - set(unet_keys) == {"unets.0.dummy_parameter"}
    assert sum(torch.Size(s).numel() for s in release.values()) == 22_190_441


def test_fixture_key_list_converts_at_fixture_config(fixtures_dir: Path):
    keys = read_key_list(fixtures_dir / "superres_unet_state_dict_keys.txt")
    config = fixture_config(fixtures_dir)
    state = convert_superres_state_dict(meta_state(keys), config, prefix="")
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_unet_state_shapes(config)


def test_key_renames():
    assert release_unet_key("downs.1.0.1.weight") == "downs.1.downsample.conv.weight"
    assert release_unet_key("downs.0.2.1.gca.net.0.bias") == "downs.0.blocks.1.gca.net.0.bias"
    assert release_unet_key("ups.2.3.net.0.weight") == "ups.2.upsample.conv.weight"
    assert release_unet_key("ups.0.0.cross_attn.to_out.1.g") == "ups.0.first_block.cross_attn.to_out.1.weight"
    assert release_unet_key("to_lowres_time_hiddens.0.weights") == "lowres_time_embed.fourier.weights"
    assert release_unet_key("to_time_tokens.0.bias") == "time_embed.to_tokens.0.bias"
    assert release_unet_key("attn_pool.layers.1.1.3.g") == "text.resampler.layers.1.ff.3.weight"
    assert release_unet_key("mid_block1.block2.project.weight") == "mid_block1.block2.project.weight"


def test_converter_rejects_a_wrong_config(fixtures_dir: Path):
    weights = load_file(fixtures_dir / "superres_unet_weights.safetensors")
    config = fixture_config(fixtures_dir)
    with pytest.raises(ValueError, match="shape mismatches"):
        convert_superres_state_dict(weights, UNetConfig(**{**config.to_dict(), "attn_dim_head": 8}), prefix="")
    with pytest.raises(ValueError, match="unexpected"):  # the YAML's *intended* (unbuildable) variant
        convert_superres_state_dict(
            weights, UNetConfig(**{**config.to_dict(), "layer_cross_attns": (False, False, True)}), prefix=""
        )
    with pytest.raises(ValueError, match="no keys under"):
        convert_superres_state_dict(weights, config)  # bare U-Net keys, but the default prefix is unets.1.


def release_style_checkpoint(weights: dict[str, torch.Tensor], ema_layout: str) -> dict:
    """What the release trainer saves: Superres state + a ModuleList of EMA wrappers (+ extras)."""
    model = {"unets.0.dummy_parameter": torch.zeros(1), **{f"unets.1.{k}": v for k, v in weights.items()}}
    ema_weights = {k: v + 1.0 for k, v in weights.items()}  # distinguishable from the online weights
    ema: dict[str, torch.Tensor] = {"0.ema_model.dummy_parameter": torch.zeros(1), "1.initted": torch.tensor(True),
                                    "1.step": torch.tensor(7)}
    if ema_layout in ("ema_model", "with_online"):
        ema.update({f"1.ema_model.{k}": v for k, v in ema_weights.items()})
    if ema_layout in ("with_online", "online_only"):
        ema.update({f"1.online_model.{k}": v for k, v in weights.items()})
    return {"model": model, "ema": ema, "steps": torch.tensor([7, 7]), "time_elapsed": 1.5, "version": "0.0.1"}


@pytest.mark.parametrize("ema_layout", ["ema_model", "with_online"])
def test_load_released_checkpoint_picks_ema(fixtures_dir: Path, tmp_path: Path, ema_layout: str):
    weights = load_file(fixtures_dir / "superres_unet_weights.safetensors")
    path = tmp_path / "superres_pretrained.pt"
    torch.save(release_style_checkpoint(weights, ema_layout), path)
    config = fixture_config(fixtures_dir)
    ema_unet = load_released_superres(path, config)
    online_unet = load_released_superres(path, config, use_ema=False)
    assert not ema_unet.training
    torch.testing.assert_close(ema_unet.final_conv.weight, weights["final_conv.weight"] + 1.0)
    torch.testing.assert_close(online_unet.final_conv.weight, weights["final_conv.weight"])


def test_ema_errors_are_explicit(fixtures_dir: Path, tmp_path: Path):
    weights = load_file(fixtures_dir / "superres_unet_weights.safetensors")
    ckpt = release_style_checkpoint(weights, "online_only")
    with pytest.raises(ValueError, match="only online_model"):
        extract_ema_unet_state(ckpt["ema"])
    path = tmp_path / "no_ema.pt"
    torch.save({"model": ckpt["model"]}, path)
    with pytest.raises(ValueError, match="no 'ema' entry"):
        load_released_superres(path, fixture_config(fixtures_dir))


def test_single_wrapper_and_safetensors_layouts(fixtures_dir: Path, tmp_path: Path):
    weights = load_file(fixtures_dir / "superres_unet_weights.safetensors")
    config = fixture_config(fixtures_dir)
    single = extract_ema_unet_state({f"ema_model.module.{k}": v for k, v in weights.items()})
    assert convert_superres_state_dict(single, config, prefix="").keys() == expected_unet_state_shapes(config).keys()
    flat = {f"ema.1.ema_model.{k}": v.contiguous() for k, v in weights.items()}
    save_file(flat, str(tmp_path / "sr.safetensors"))
    unet = load_released_superres(tmp_path / "sr.safetensors", config)
    torch.testing.assert_close(unet.final_conv.bias, weights["final_conv.bias"])
