"""Models built on meta by `capacity.meta_models` are the models the pipelines build: same parameter counts as
real (CPU) modules from the demo configuration, built by the pipelines' and the registry's own builders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from generatect_kedro.capacity import Hardware, ZeroSettings, load_parameters
from generatect_kedro.capacity.memory import training_static_bytes
from generatect_kedro.capacity.meta_models import build_training_stages

ROOT = Path(__file__).resolve().parents[2]


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def demo_params() -> dict:
    return load_parameters(ROOT, "demo")


def test_meta_parameter_counts_equal_real_demo_models(demo_params):
    from generatect_kedro.models.ctvit import CTViT
    from generatect_kedro.models.discriminator import Discriminator
    from generatect_kedro.pipelines.ctvit.nodes import ctvit_config
    from generatect_kedro.pipelines.superres.task import build_cascade
    from generatect_kedro.pipelines.transformer.task import build_maskgit

    stages = {stage.key: stage for stage in build_training_stages(demo_params)}
    parts = {part.name: part for stage in stages.values() for part in stage.parts}
    assert all(p.module.parameters().__next__().device.type == "meta" for p in parts.values())

    config = ctvit_config(demo_params["ctvit"])
    assert parts["CT-ViT"].parameters == count(CTViT(config))
    discriminator = parts["CT-ViT discriminator"].module
    assert parts["CT-ViT discriminator"].parameters == count(Discriminator(discriminator.config))
    assert discriminator.config.max_dim == demo_params["ctvit"]["loss"]["gan"]["discriminator"]["max_dim"]

    maskgit = parts["MaskGIT"].module
    assert maskgit.config.num_tokens == config.codebook_size
    assert parts["MaskGIT"].parameters == count(build_maskgit({"model": maskgit.config.to_dict()}))

    unets = [p for name, p in parts.items() if name.startswith("U-Net")]
    assert len(unets) == len(demo_params["superres"]["stages"])
    cascade = build_cascade({"stages": [{"scale": 2, "sampler": "ancestral", "steps": 1, "lowres_noise_level": 0.1,
                                         "cond_scale": 1.0, "resize_mode": "nearest", "unet": u.module.config.to_dict()}
                                        for u in unets]})
    assert [u.parameters for u in unets] == [count(unet) for unet in cascade.unets]
    assert unets[0].module.config.text_embed_dim == demo_params["transformer"]["model"]["dim_context"]


def test_zero_partitioning_of_states():
    p, n = 1_000_000, 8
    single = training_static_bytes(p, backend="single", zero=None, world_size=1)
    assert (single.weights, single.gradients, single.optimizer) == (4 * p, 4 * p, 8 * p)
    zero2 = ZeroSettings(stage=2, bf16=True, reduce_bucket_elements=1000, overlap_comm=True)
    sharded = training_static_bytes(p, backend="deepspeed", zero=zero2, world_size=n)
    assert sharded.weights == 2 * p and sharded.gradients == 2 * p // n and sharded.optimizer == 16 * p // n
    assert sharded.extra == 2 * 1000 * 2  # two bf16 gradient buckets with overlap_comm
    zero3 = training_static_bytes(p, backend="deepspeed", zero=ZeroSettings(stage=3, bf16=True), world_size=n)
    assert zero3.weights == 2 * p // n


def test_hardware_override_and_unknown_keys():
    hardware = Hardware.from_params({"gpu_name": "A100-80GB", "gpu_memory_gb": 80, "gpus": 8}, gpu_memory_gb=8)
    assert hardware.gpu_memory_gb == 8 and hardware.limit_bytes == int(8 * 0.9 * 2**30)
    with pytest.raises(ValueError, match="gpu_memroy_gb"):
        Hardware.from_params({"gpu_memroy_gb": 8})
