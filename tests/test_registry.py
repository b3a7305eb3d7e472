"""Registry round trip against a temporary SQLite MLflow: register, alias, resolve, load, sha256, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from generatect_kedro import registry
from generatect_kedro.models.ctvit import CTViT, CTViTConfig

TINY = dict(dim=32, codebook_size=32, image_size=16, patch_size=8, spatial_depth=1, temporal_depth=1,
            dim_head=8, heads=2)


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory):
    """One SQLite tracking/registry database for the module; the previous tracking URI is restored."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("registry-test", artifact_location=(root / "artifacts").as_uri())
        mlflow.set_experiment(experiment_id=experiment)
        yield root
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def registered(mlflow_db, tmp_path_factory):
    torch.manual_seed(0)
    model = CTViT(CTViTConfig(**TINY)).eval()
    path = tmp_path_factory.mktemp("weights") / "ctvit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    config = {"kind": "ctvit", "model": TINY, "grid_shape": [5, 16, 16]}
    first = registry.register_model("generatect-ctvit", path, config, {"git_commit": "abc", "grid_shape": "5x16x16"})
    same = registry.register_model("generatect-ctvit", path, config, {"git_commit": "abc"})
    second = registry.register_model("generatect-ctvit", path, config, {"git_commit": "def"}, reuse_identical=False)
    return model, path, config, first, same, second


def test_register_sets_challenger_and_tags(registered):
    model, path, config, first, same, second = registered
    from generatect_kedro.utils.atomic import file_sha256

    assert (first["version"], same["version"], second["version"]) == ("1", "1", "2")
    assert same["reused"] and not first["reused"] and not second["reused"]
    assert first["weights_sha256"] == file_sha256(path)
    ref = registry.resolve("generatect-ctvit", "challenger")
    assert ref.version == "2" and "challenger" in ref.aliases  # the alias moved to the newest version
    assert ref.tags["git_commit"] == "def" and ref.weights_sha256 == file_sha256(path)
    assert ref.tags["training_run_id"] == ref.run_id == second["run_id"]
    old = registry.resolve("generatect-ctvit", 1)
    assert old.tags["grid_shape"] == "5x16x16" and old.aliases == ()


def test_load_weights_round_trip(registered):
    model, _, config, *_ = registered
    state, loaded_config = registry.load_weights(registry.resolve("generatect-ctvit", "challenger"))
    assert loaded_config == config
    for key, value in model.state_dict().items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    module, _ = registry.load_module(registry.resolve("generatect-ctvit", "1"))
    assert isinstance(module, CTViT) and not module.training


def test_sha256_mismatch_is_refused(registered):
    ref = registry.resolve("generatect-ctvit", "challenger")
    forged = dataclasses.replace(ref, tags={**ref.tags, "weights_sha256": "0" * 64})
    with pytest.raises(registry.RegistryError, match="sha256"):
        registry.load_weights(forged)


def test_missing_alias_version_and_model_name_the_fix(registered):
    with pytest.raises(registry.RegistryError, match="generatect promote generatect-ctvit"):
        registry.resolve("generatect-ctvit", "champion")
    with pytest.raises(registry.RegistryError, match="no version 99"):
        registry.resolve("generatect-ctvit", "99")
    with pytest.raises(registry.RegistryError, match="kedro run --pipelines transformer"):
        registry.resolve("generatect-transformer", "challenger")


def test_pyfunc_wrapper_tokenizes_like_the_model(registered):
    import mlflow

    model = registered[0]
    volumes = np.random.default_rng(0).uniform(-1, 1, (2, 5, 16, 16)).astype(np.float32)
    served = mlflow.pyfunc.load_model("models:/generatect-ctvit@challenger")
    ids = served.predict(volumes)
    expected = model.tokenize(torch.from_numpy(volumes).unsqueeze(1)).numpy()
    np.testing.assert_array_equal(ids, expected)
