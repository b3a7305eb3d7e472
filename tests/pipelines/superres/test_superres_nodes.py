"""Super-resolution pieces on their own: slice pairs, stage geometry, stage-1 inputs and their sharding over
ranks, rank-aware outputs, EMA, and the DeepSpeed config check that runs before training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import superres_fixtures as fx
from generatect_kedro.pipelines.superres import nodes
from generatect_kedro.io.rank_aware import RankAwareDataset
from generatect_kedro.pipelines.superres.data import (
    SlicePairs,
    StageGeometry,
    VolumeSources,
    area_downsample,
    cascade_geometry,
    collate_slice_pairs,
)
from generatect_kedro.pipelines.superres.task import EMA, OptimizerSettings, check_deepspeed
from generatect_kedro.training import TrainerConfig


def test_slice_pairs_cover_every_slice_in_fixed_size_chunks():
    low, full = fx.grids()
    volumes = [VolumeSources(v, lambda v=v: low[v], lambda v=v: full[v], lambda: np.ones((3, fx.TEXT_DIM), "f4"))
               for v in fx.IDS[:2]]
    stage1 = SlicePairs(volumes, StageGeometry(0, (8, 8), (16, 16), (32, 32)), depth=fx.DEPTH, slices_per_item=2)
    assert stage1.items == [(0, 0), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]  # the last chunk ends at slice 4
    item = stage1[2]
    assert item["target"].shape == (2, 1, 16, 16) and item["lowres"].shape == (2, 1, 8, 8)
    expected = area_downsample(torch.from_numpy(full[fx.IDS[0]].volume[3:5]), (16, 16))
    torch.testing.assert_close(item["target"][:, 0], expected)
    torch.testing.assert_close(item["lowres"][:, 0], torch.from_numpy(low[fx.IDS[0]].volume[3:5]))
    # a later stage's input is the ground truth downsampled to its input size
    stage2 = SlicePairs(volumes, StageGeometry(1, (16, 16), (32, 32), (32, 32)), depth=fx.DEPTH, cache=True)
    torch.testing.assert_close(stage2[1]["lowres"][0, 0], area_downsample(
        torch.from_numpy(full[fx.IDS[0]].volume[1:2]), (16, 16))[0])
    batch = collate_slice_pairs([stage1[0], {**stage1[3], "text": torch.ones(5, fx.TEXT_DIM)}])
    assert batch["target"].shape == (4, 1, 16, 16) and batch["text"].shape == (4, 5, fx.TEXT_DIM)
    assert batch["text_mask"].sum(dim=1).tolist() == [3, 3, 5, 5]


def test_cascade_geometry_must_reach_the_full_grid():
    stages = cascade_geometry({"stages": [{"scale": 2}, {"scale": 2}]}, (128, 128), (512, 512))
    assert [(g.input_hw, g.output_hw, g.scale) for g in stages] == [((128, 128), (256, 256), 2),
                                                                    ((256, 256), (512, 512), 2)]
    with pytest.raises(ValueError, match=r"take \(128, 128\) to \(256, 256\), but the full grid is \(512, 512\)"):
        cascade_geometry({"stages": [{"scale": 2}]}, (128, 128), (512, 512))
    with pytest.raises(ValueError, match="stages\\[0\\].scale"):
        cascade_geometry({"stages": [{"scale": 1}]}, (128, 128), (128, 128))


def test_downsample_condition_and_sharding_over_ranks(tmp_path, monkeypatch):
    low, full = fx.grids()
    params = {**fx.params(tmp_path), "condition": "downsample"}
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    shard, index = nodes.prepare_superres_pairs(fx.loaders(low), fx.loaders(full), {}, {}, fx.splits(), params)
    assert sorted(shard) == ["vol-01", "vol-03"]  # rank 1 of 2: every other volume of train + valid
    assert list(index["volume_id"]) == fx.IDS[:5] and set(index["condition"]) == {"downsample"}
    expected = area_downsample(torch.from_numpy(full["vol-03"].volume), (fx.LOW, fx.LOW))
    np.testing.assert_allclose(shard["vol-03"].volume, expected.numpy(), atol=1e-6)
    assert shard["vol-03"].meta["superres_condition"] == "downsample" and shard["vol-03"].meta["split"] == "valid"
    # after training, other ranks neither evaluate nor register
    started = nodes.evaluate_superres({}, {}, {}, {}, {}, None, None, params)
    assert "skipped" in started[0] and started[1] is None
    assert "skipped" in nodes.register_superres({}, {}, {}, {}, params)


def test_a_ctvit_of_another_version_is_refused(tmp_path):
    low, full = fx.grids()
    weights, version = fx.ctvit()
    with pytest.raises(ValueError, match="not the registered version 7"):
        nodes.prepare_superres_pairs(fx.loaders(low), fx.loaders(full), weights, {**version, "weights_sha256": "0"},
                                     fx.splits(), fx.params(tmp_path))


def test_rank_aware_dataset_writes_on_rank_zero_only(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    dataset = RankAwareDataset({"type": "json.JSONDataset", "filepath": str(path)})
    monkeypatch.setenv("RANK", "1")
    dataset.save({"rank": 1})
    assert not path.exists() and dataset.load() == {"rank": 1}
    monkeypatch.setenv("RANK", "0")
    dataset.save({"rank": 0})
    assert json.loads(path.read_text()) == {"rank": 0} and dataset.load() == {"rank": 0}
    shards = RankAwareDataset({"type": "json.JSONDataset", "filepath": str(tmp_path / "all.json")},
                              all_ranks_write=True, barrier=True)
    monkeypatch.setenv("RANK", "1")
    shards.save({"rank": 1})  # every rank writes its share; one process: the barrier is a no-op
    assert shards.load() == {"rank": 1}


def test_ema_warms_up_then_follows_with_beta():
    module = nn.Linear(2, 1, bias=False)
    ema = EMA(module, beta=0.5, update_every=2, start_step=2)
    with torch.no_grad():
        module.weight.fill_(1.0)
    ema.update(module, 1)  # up to start_step: a copy
    assert torch.equal(ema.shadow["weight"], module.weight)
    with torch.no_grad():
        module.weight.fill_(3.0)
    ema.update(module, 3)  # not an update step
    assert ema.shadow["weight"].eq(1.0).all()
    ema.update(module, 4)  # first update: decay min(0.5, 1/10) = 0.1
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), 0.1 * 1 + 0.9 * 3))
    restored = EMA(module)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 1 and torch.equal(restored.weights(module)["weight"], ema.shadow["weight"])


def deepspeed_trainer(source, **overrides) -> TrainerConfig:
    return TrainerConfig.from_params({"backend": "deepspeed", "device": "cpu", "max_steps": 1, "batch_size": 2,
                                      "grad_clip": 1.0, "deepspeed": source, **overrides})


def test_bad_deepspeed_config_is_refused_before_training_naming_the_file(tmp_path):
    pytest.importorskip("deepspeed")
    good = {"train_micro_batch_size_per_gpu": 2, "gradient_clipping": 1.0, "zero_optimization": {"stage": 2},
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "betas": [0.9, 0.99], "weight_decay": 0.0}}}
    optimizer = OptimizerSettings(lr=1e-3)
    path = tmp_path / "deepspeed.yml"
    path.write_text(json.dumps(good))
    check_deepspeed(deepspeed_trainer(str(path)), optimizer)
    for change, message in (
            ({"train_micro_batch_size_per_gpu": 4}, "key 'train_micro_batch_size_per_gpu': 4 disagrees"),
            ({"zero_optimization": {"stage": 3}}, "key 'zero_optimization.stage': 3"),
            ({"optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}}, "key 'optimizer.params.lr'"),
            ({"bf16": {"enabled": True}}, "key 'bf16.enabled'")):
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(ValueError, match=f"{path}: {message}"):
            check_deepspeed(deepspeed_trainer(str(path)), optimizer)
    with pytest.raises(ValueError, match="does not exist"):
        check_deepspeed(deepspeed_trainer(str(tmp_path / "missing.yml")), optimizer)
