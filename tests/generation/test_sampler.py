"""The generation core with tiny registered models: determinism, batching, HU/int16/geometry, clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines" / "generation"))
from generation_fixtures import grid_index, register_tiny_models, use_registry  # noqa: E402

from generatect_kedro import registry  # noqa: E402
from generatect_kedro.generation.geometry import geometry_from_params  # noqa: E402
from generatect_kedro.generation.models import GenerationError, ModelRequest, load_models  # noqa: E402
from generatect_kedro.generation.sampler import GenerationItem, SamplerSettings, VolumeSampler  # noqa: E402

CARDIO = "65 years old male: Cardiomegaly."
EFFUSION = "58 years old female: Bilateral pleural effusion."


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import mlflow

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("registry")
    previous = mlflow.get_tracking_uri()
    use_registry(root)
    infos = register_tiny_models(root)
    try:
        yield load_models(ModelRequest(), text_encoder={"device": "cpu"}), infos, root
    finally:
        mlflow.set_tracking_uri(previous)


def sampler_for(models, **sampler):
    return VolumeSampler(models, SamplerSettings.from_params(sampler, models), geometry_from_params(None, grid_index()))


def volumes(sampler, items):
    return {item.item_id: volume for item, volume in sampler.generate(items)}


def test_seed_determinism_batching_and_hu_geometry(models):
    loaded, infos, _ = models
    sampler = sampler_for(loaded, batch_size=4, slice_batch_size=3)
    items = [GenerationItem("a", CARDIO, 1, 5), GenerationItem("b", CARDIO, 2, 5),
             GenerationItem("c", EFFUSION, 1, 5), GenerationItem("d", CARDIO, 1, 7)]
    batch = volumes(sampler, items)
    again = volumes(sampler, items)
    alone = volumes(sampler_for(loaded, batch_size=1, slice_batch_size=8), [items[1]])["b"]
    for key in batch:
        assert np.array_equal(batch[key].data, again[key].data), key
    assert np.array_equal(alone.data, batch["b"].data)  # alone (other slice batching too) == in a batch of four
    assert not np.array_equal(batch["a"].data, batch["b"].data)  # other seed, other volume
    # int16 HU inside the recorded window, (i, j, k) = (W, H, D) of the x2 cascade's output
    a = batch["a"]
    assert a.data.dtype == np.int16 and a.shape == (32, 32, 5) and batch["d"].shape == (32, 32, 7)
    assert -1000 <= a.data.min() < a.data.max() <= 1000
    # the cohort's median full-res voxel (x, y, z) = (W, H, D) spacing, centred RAS affine
    assert a.spacing == pytest.approx((0.7, 0.8, 2.0))
    assert np.allclose(a.affine[:3, :3], np.diag([0.7, 0.8, 2.0]))
    assert np.allclose(a.affine[:3, :3] @ (np.array(a.shape) - 1) / 2 + a.affine[:3, 3], 0)
    assert sampler.hu_window == (-1000.0, 1000.0)
    record = loaded.record()
    assert record["ctvit"]["version"] == infos["ctvit"]["version"]
    assert record["transformer"]["weights_sha256"] == infos["transformer"]["weights_sha256"]
    assert record["superres"]["requested"] == "champion"


def test_geometry_from_parameters_and_sampler_overrides(models):
    loaded, _, _ = models
    geometry = geometry_from_params({"spacing_mm": [1.0, 1.0, 1.5]})
    settings = SamplerSettings.from_params({"transformer": {"steps": 2, "cond_scale": None},
                                            "superres": [{"sampler": "ancestral", "steps": 1,
                                                          "dynamic_thresholding": False}]}, loaded)
    assert settings.transformer.steps == 2 and settings.transformer.cond_scale == 3.0  # null keeps registered
    registered = loaded.configs["superres"]["stages"][0]
    assert settings.stages[0] == {"stage": 1, "sampler": "ancestral", "steps": 1, "cond_scale": 1.0,
                                  "lowres_noise_level": 0.1, "dynamic_thresholding": False,
                                  "threshold_percentile": registered.get("threshold_percentile", 0.95)}
    volume_sampler = VolumeSampler(loaded, settings, geometry)
    (stage,) = volume_sampler.cascade.stages
    assert (stage.sampler, stage.steps, stage.dynamic_thresholding) == ("ancestral", 1, False)  # reaches the cascade
    volume = dict(volume_sampler.generate([GenerationItem("x", CARDIO, 0, 3)]))
    (only,) = volume.values()
    assert only.spacing == pytest.approx((1.0, 1.0, 1.5)) and only.shape == (32, 32, 3)
    assert geometry.record() == {"spacing_mm": [1.0, 1.0, 1.5], "orientation": "RAS", "source": "parameters"}
    with pytest.raises(GenerationError, match="unknown key"):
        SamplerSettings.from_params({"superres": {"stepz": 3}}, loaded)
    with pytest.raises(GenerationError, match="dynamic_thresholding must be true or false"):
        SamplerSettings.from_params({"superres": {"dynamic_thresholding": "no"}}, loaded)


@pytest.mark.parametrize("slices, message", [(4, r"not 1 \+ 2·k"), (0, r"not 1 \+ 2·k"),
                                             (11, "max_seq_len 20; at most 9 slices")])
def test_bad_slice_count_is_a_clear_error(models, slices, message):
    sampler = sampler_for(models[0])
    with pytest.raises(GenerationError, match=message):
        list(sampler.generate([GenerationItem("ok", CARDIO, 0, 5), GenerationItem("bad", CARDIO, 0, slices)]))


def test_missing_champion_names_promote_and_foreign_ctvit_is_refused(models):
    import mlflow

    _, infos, root = models
    client = mlflow.MlflowClient()
    client.delete_registered_model_alias("generatect-superres", "champion")
    try:
        with pytest.raises(registry.RegistryError, match="generatect promote generatect-superres"):
            load_models(ModelRequest())
    finally:
        client.set_registered_model_alias("generatect-superres", "champion", infos["superres"]["version"])
    # a second CT-ViT version (other weights): asking for it explicitly is refused, the default is the recorded one
    from generatect_kedro.io.safetensors_model import state_dict_bytes
    from generatect_kedro.models.ctvit import CTViT, CTViTConfig
    from generation_fixtures import CTVIT

    torch.manual_seed(5)
    path = root / "ctvit-other.safetensors"
    path.write_bytes(state_dict_bytes(CTViT(CTViTConfig(**CTVIT)).state_dict()))
    other = registry.register_model("generatect-ctvit", path, {"kind": "ctvit", "model": CTVIT}, {}, alias="other")
    with pytest.raises(GenerationError, match="decoding with another CT-ViT"):
        load_models(ModelRequest(ctvit=other["version"]), text_encoder={"device": "cpu"})


def test_precision_knob_resolves_validates_and_is_recorded(models):
    from types import SimpleNamespace

    from generatect_kedro.generation.sampler import resolve_precision

    loaded, _, _ = models
    assert SamplerSettings.from_params(None, loaded).record()["precision"] == "fp32"  # auto on CPU
    assert SamplerSettings.from_params({"precision": "bf16"}, loaded).record()["precision"] == "bf16"
    assert resolve_precision("auto", "cuda") == "bf16" and resolve_precision("fp32", "cuda") == "fp32"
    # without a device (serving pins settings at registration) auto stays auto, resolved where it runs
    assert SamplerSettings.from_params({}, SimpleNamespace(configs=loaded.configs)).precision == "auto"
    with pytest.raises(GenerationError, match="precision must be one of auto, fp32, bf16"):
        SamplerSettings.from_params({"precision": "fp16"}, loaded)


def test_bf16_volume_is_close_to_fp32(models):
    """Explicit bf16 on CPU: same tokens; voxels within a few HU of fp32 (mean |Δ| < 20 HU of a 2000 HU window,
    correlation > 0.999). The tiny U-Net's final conv is zero-initialised (v = 0 whatever the precision), so a
    copy gets random final weights for the U-Net to matter."""
    import copy
    import dataclasses

    loaded, _, _ = models
    cascade = copy.deepcopy(loaded.cascade)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for stage in cascade.stages:
            weight = stage.unet.final_conv.weight
            weight.copy_(torch.randn(weight.shape, generator=g) * 0.3)
    perturbed = dataclasses.replace(loaded, cascade=cascade)
    items = [GenerationItem("a", CARDIO, 1, 5), GenerationItem("b", EFFUSION, 2, 5)]
    runs = {}
    for precision in ("fp32", "bf16"):
        sampler = sampler_for(perturbed, precision=precision)
        tokens: list[torch.Tensor] = []

        def recording(*args, _sample=sampler._tokens, _tokens=tokens):
            _tokens.append(_sample(*args))
            return _tokens[-1]

        sampler._tokens = recording
        runs[precision] = volumes(sampler, items), torch.cat(tokens)
        assert sampler.settings.record()["precision"] == precision
    assert torch.equal(runs["fp32"][1], runs["bf16"][1])
    for key in ("a", "b"):
        full, half = (runs[p][0][key].data.astype(np.float64) for p in ("fp32", "bf16"))
        assert not np.array_equal(full, half)  # bf16 really ran
        assert np.abs(full - half).mean() < 20 and np.corrcoef(full.ravel(), half.ravel())[0, 1] > 0.999


def test_compile_knob_wraps_only_the_unets_and_is_recorded(models):
    """``generation.sampler.compile`` puts the cascade's U-Nets (not the registered modules) behind torch.compile;
    nothing is compiled until the first call, so this stays fast."""
    loaded, _, _ = models
    geometry = geometry_from_params({"spacing_mm": [1.0, 1.0, 1.5]})
    eager = SamplerSettings.from_params({}, loaded)
    compiled = SamplerSettings.from_params({"compile": True}, loaded)
    assert eager.record()["compile"] is False and compiled.record()["compile"] is True
    (stage,) = VolumeSampler(loaded, compiled, geometry).cascade.stages
    assert isinstance(stage.unet, torch._dynamo.eval_frame.OptimizedModule)
    assert stage.unet._orig_mod is loaded.cascade.stages[0].unet  # the registered weights, shared
    (plain,) = VolumeSampler(loaded, eager, geometry).cascade.stages
    assert plain.unet is loaded.cascade.stages[0].unet
    with pytest.raises(GenerationError, match="compile must be true or false"):
        SamplerSettings.from_params({"compile": "yes"}, loaded)
