"""Converter: released CT-ViT key layout ↔ our modules, at the paper config (meta device) and on fixture weights."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from generatect_kedro.models.convert import (
    convert_ctvit_state_dict,
    expected_state_shapes,
    load_released_ctvit,
)
from generatect_kedro.models.ctvit import CTViT, CTViTConfig
from generatect_kedro.models.discriminator import DiscriminatorConfig

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


def is_documented_drop(key: str, shape: tuple[int, ...], core_keys: set[str]) -> bool:
    """Release entries without a counterpart: VGG, zero beta buffers, zero-size null_kv, unused self-attn norms."""
    return (
        key.startswith("vgg.")
        or key.endswith(".beta")
        or (key.endswith(".null_kv") and 0 in shape)
        or (".context_norm." in key and key not in core_keys)
    )


def test_release_keys_map_one_to_one_at_paper_config(fixtures_dir: Path):
    release = read_key_list(fixtures_dir / "release_keys" / "release_ctvit_pretrained_keys.txt")
    config = CTViTConfig()
    core, discr = convert_ctvit_state_dict(meta_state(release), config, return_discriminator=True)

    expected = expected_state_shapes(config)
    assert {k: tuple(v.shape) for k, v in core.items()} == expected  # every model entry, right shape, nothing else
    assert {k: tuple(v.shape) for k, v in discr.items()} == expected_state_shapes(DiscriminatorConfig())

    renamed = {"vq.embed": "vq._codebook.embed", "vq.cluster_size": "vq._codebook.cluster_size",
               "vq.initted": "vq._codebook.initted"}
    sources = {renamed.get(k, k) for k in core} | {f"discr.{k}" for k in discr}
    dropped = {k: s for k, s in release.items() if k not in sources}
    assert all(is_documented_drop(k, s, set(core)) for k, s in dropped.items()), sorted(dropped)[:5]
    assert release["vq._codebook.embed"] == (1, *expected["vq.embed"])

    # sizes quoted by the README: 43.26 M parameters in the core, 47.48 M elements with the codebook buffers
    with torch.device("meta"):
        model = CTViT(config)
    n_params = sum(p.numel() for p in model.parameters())
    core_dropped = {k: s for k, s in dropped.items() if not k.startswith(("vgg.", "discr."))}
    unused_norms = sum(torch.Size(s).numel() for k, s in core_dropped.items() if ".context_norm.gamma" in k)
    assert round((n_params + unused_norms) / 1e6, 2) == 43.26
    n_elements = n_params + sum(b.numel() for b in model.buffers())
    dropped_core = sum(torch.Size(s).numel() for s in core_dropped.values())
    release_core = sum(torch.Size(s).numel() for k, s in release.items() if not k.startswith(("vgg.", "discr.")))
    assert n_elements + dropped_core == release_core
    assert round(release_core / 1e6, 2) == 47.48


def test_fixture_key_list_converts_at_fixture_config(fixtures_dir: Path):
    meta = json.loads((fixtures_dir / "ctvit.json").read_text())
    config = CTViTConfig.from_reference_kwargs(meta["constructor_kwargs"])
    keys = read_key_list(fixtures_dir / "ctvit_state_dict_keys.txt")
    core, discr = convert_ctvit_state_dict(meta_state(keys), config, return_discriminator=True)
    assert {k: tuple(v.shape) for k, v in core.items()} == expected_state_shapes(config)
    assert discr is None


def test_converter_rejects_wrong_configs_and_nonzero_beta(fixtures_dir: Path):
    weights = load_file(fixtures_dir / "ctvit_weights.safetensors")
    meta = json.loads((fixtures_dir / "ctvit.json").read_text())
    config = CTViTConfig.from_reference_kwargs(meta["constructor_kwargs"])
    kwargs = meta["constructor_kwargs"]
    with pytest.raises(ValueError, match="shape mismatches"):
        convert_ctvit_state_dict(weights, CTViTConfig.from_reference_kwargs(kwargs, heads=4))
    with pytest.raises(ValueError, match="missing"):
        convert_ctvit_state_dict(weights, CTViTConfig.from_reference_kwargs(kwargs, spatial_depth=3))
    bad = dict(weights)
    bad["enc_spatial_transformer.norm_out.beta"] = torch.ones(64)
    with pytest.raises(ValueError, match="beta"):
        convert_ctvit_state_dict(bad, config)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_load_released_checkpoint_file(fixtures_dir: Path, tmp_path: Path, suffix: str):
    """A release-style file (with vgg.* and under a prefix) loads into a working model."""
    weights = load_file(fixtures_dir / "ctvit_weights.safetensors")
    io = load_file(fixtures_dir / "ctvit_io.safetensors")
    meta = json.loads((fixtures_dir / "ctvit.json").read_text())
    config = CTViTConfig.from_reference_kwargs(meta["constructor_kwargs"])
    state = {f"ctvit.{k}": v for k, v in weights.items()}
    state["ctvit.vgg.features.0.weight"] = torch.zeros(4, 3, 3, 3)
    state["maskgit.token_emb.weight"] = torch.zeros(3, 2)
    path = tmp_path / f"ckpt{suffix}"
    torch.save(state, path) if suffix == ".pt" else save_file(state, str(path))
    model = load_released_ctvit(path, config, prefix="ctvit.")
    assert not model.training
    with torch.no_grad():
        recon = model.decode_from_ids(io["eval.codebook_ids"])
    torch.testing.assert_close(recon, io["eval.recon_forward"], atol=1e-5, rtol=1e-4)
