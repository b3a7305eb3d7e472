"""Converter: released ``transformer_pretrained.pt`` layout ↔ MaskGIT + CT-ViT, at the paper config (meta device)
and on the fixture weights written as a release-style checkpoint file."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from generatect_kedro.models.convert import (
    convert_ctvit_state_dict,
    convert_maskgit_state_dict,
    expected_state_shapes,
    load_released_maskgit,
    load_released_transformer,
)
from generatect_kedro.models.convert.maskgit import expected_maskgit_shapes, split_transformer_state_dict
from generatect_kedro.models.ctvit import CTViT, CTViTConfig
from generatect_kedro.models.maskgit import MaskGIT, MaskGITConfig

pytestmark = pytest.mark.fixtures


def read_key_list(path: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape, _dtype = line.split("\t")
            shapes[key] = tuple(ast.literal_eval(shape))
    return shapes


def meta_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def is_documented_drop(key: str, shape: tuple[int, ...], kept: set[str]) -> bool:
    """Zero ``beta`` buffers, zero-size self-attention null_kv, and unused self-attention context norms."""
    return key.endswith(".beta") or (key.endswith(".null_kv") and 0 in shape) or (
        ".context_norm." in key and key not in kept
    )


def fixture_configs(fixtures_dir: Path) -> tuple[MaskGITConfig, CTViTConfig]:
    mg = json.loads((fixtures_dir / "maskgit.json").read_text())["constructor_kwargs"]
    cv = json.loads((fixtures_dir / "ctvit.json").read_text())["constructor_kwargs"]
    return MaskGITConfig.from_reference_kwargs(mg), CTViTConfig.from_reference_kwargs(cv)


def test_release_keys_map_at_paper_config(fixtures_dir: Path):
    release = read_key_list(fixtures_dir / "release_keys" / "release_transformer_pretrained_keys.txt")
    assert len(release) == 457
    maskgit_part, ctvit_part = split_transformer_state_dict(meta_state(release))

    config = MaskGITConfig()
    state = convert_maskgit_state_dict(maskgit_part, config)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_maskgit_shapes(config)
    dropped = {k: tuple(v.shape) for k, v in maskgit_part.items() if k not in state}
    assert dropped and all(is_documented_drop(k, s, set(state)) for k, s in dropped.items()), sorted(dropped)[:5]

    # README: maskgit.* holds 40.38 M parameters (the unused self-attention context norms included)
    with torch.device("meta"):
        model = MaskGIT(config)
    n_params = sum(p.numel() for p in model.parameters())
    unused = sum(torch.Size(s).numel() for k, s in dropped.items() if k.endswith(".context_norm.gamma"))
    assert round((n_params + unused) / 1e6, 2) == 40.38
    assert release["maskgit.token_emb.weight"] == (config.num_tokens + 1, config.dim)

    ctvit_state = convert_ctvit_state_dict(ctvit_part, CTViTConfig())  # the eval copy: no vgg.*, no discr.*
    assert {k: tuple(v.shape) for k, v in ctvit_state.items()} == expected_state_shapes(CTViTConfig())


def test_fixture_key_list_converts_at_fixture_config(fixtures_dir: Path):
    config, _ = fixture_configs(fixtures_dir)
    keys = read_key_list(fixtures_dir / "maskgit_state_dict_keys.txt")
    state = convert_maskgit_state_dict(meta_state(keys), config)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_maskgit_shapes(config)


def test_converter_rejects_wrong_configs(fixtures_dir: Path):
    config, _ = fixture_configs(fixtures_dir)
    weights = load_file(fixtures_dir / "maskgit_weights.safetensors")
    with pytest.raises(ValueError, match="shape mismatches"):
        convert_maskgit_state_dict(weights, MaskGITConfig(**{**config.to_dict(), "num_tokens": 64}))
    with pytest.raises(ValueError, match="missing"):
        convert_maskgit_state_dict(weights, MaskGITConfig(**{**config.to_dict(), "depth": 3}))
    with pytest.raises(ValueError, match="unexpected"):
        convert_maskgit_state_dict(weights, MaskGITConfig(**{**config.to_dict(), "unconditional": True}))
    with pytest.raises(ValueError, match="unexpected entries"):
        split_transformer_state_dict({"maskgit.a": torch.zeros(1), "optimizer.b": torch.zeros(1)})


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_load_released_transformer_file(fixtures_dir: Path, tmp_path: Path, suffix: str):
    """Fixture weights saved in the release layout (maskgit.* + ctvit.*) load and compute the release outputs."""
    mg_config, cv_config = fixture_configs(fixtures_dir)
    state = {f"maskgit.{k}": v for k, v in load_file(fixtures_dir / "maskgit_weights.safetensors").items()}
    state |= {f"ctvit.{k}": v for k, v in load_file(fixtures_dir / "ctvit_weights.safetensors").items()}
    path = tmp_path / f"transformer_pretrained{suffix}"
    torch.save(state, path) if suffix == ".pt" else save_file(state, str(path))

    mg_state, cv_state = load_released_transformer(path, mg_config, cv_config)
    maskgit = MaskGIT(mg_config)
    maskgit.load_state_dict(mg_state)
    ctvit = CTViT(cv_config)
    ctvit.load_state_dict(cv_state)
    io = load_file(fixtures_dir / "maskgit_io.safetensors")
    with torch.no_grad():
        ids, text, mask = io["input.token_ids"], io["input.text_embeds"], io["input.text_mask"]
        logits = maskgit.eval()(ids, text, mask, grid_shape=(5, 4, 4))
        video = ctvit.eval().decode_from_ids(io["sample.final_token_ids"], (5, 4, 4))
    torch.testing.assert_close(logits, io["eval.logits_cond"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(video, io["sample.video"], atol=1e-5, rtol=1e-4)

    model = load_released_maskgit(path, mg_config)
    assert not model.training
    assert all(torch.equal(v, mg_state[k]) for k, v in model.state_dict().items())
