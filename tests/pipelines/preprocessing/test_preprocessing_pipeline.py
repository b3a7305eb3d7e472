"""Run the preprocessing pipeline with SequentialRunner: HU volumes → safetensors grids + grid index."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from project_config import catalog_config, parameters

from generatect_kedro.pipelines.preprocessing import create_pipeline
from generatect_kedro.volume import HUVolume

TINY = {"lowres": {"shape": [17, 32, 32], "spacing_mm": [4.0, 3.0, 3.0]},
        "fullres": {"shape": [17, 64, 64], "spacing_mm": [4.0, 1.5, 1.5]}}


def volumes():
    rng = np.random.default_rng(0)
    out, rows = {}, []
    for n, (shape, spacing) in enumerate([((40, 36, 20), (0.9, 0.9, 2.5)), ((48, 48, 24), (0.7, 0.7, 1.25)), ((30, 30, 10), (1.0, 1.0, 5.0))]):
        vid = f"vol-{n}"
        data = rng.integers(-1000, 1000, shape).astype(np.int16)
        volume = HUVolume(data, np.diag([*spacing, 1.0]))
        out[vid] = (lambda v=volume: v)
        rows.append({"volume_id": vid, "shape_i": shape[0], "shape_j": shape[1], "shape_k": shape[2],
                     "spacing_i": spacing[0], "spacing_j": spacing[1], "spacing_k": spacing[2]})
    return out, pd.DataFrame(rows)


@pytest.mark.parametrize("mode", ["fixed_grid", "spacing_first"])
def test_preprocessing_pipeline(tmp_path, mode):
    params = parameters("preprocessing")
    params = {**params, "grids": TINY, "resize_mode": mode}
    hu_volumes, manifest = volumes()
    cohort = pd.DataFrame({"volume_id": ["vol-0", "vol-2"], "patient_key": ["p0", "p2"]})  # vol-1 not in cohort
    catalog = DataCatalog.from_config(catalog_config("preprocessing", tmp_path))
    catalog["hu_volumes"] = MemoryDataset(hu_volumes, copy_mode="assign")
    catalog["cohort"] = MemoryDataset(cohort)
    catalog["volume_manifest"] = MemoryDataset(manifest)
    catalog["params:preprocessing"] = MemoryDataset(params)
    SequentialRunner().run(create_pipeline(), catalog)

    files = sorted(p.name for p in (tmp_path / "data/04_feature/grids_lowres").iterdir())
    assert files == ["vol-0.safetensors", "vol-2.safetensors"]
    index = pd.read_csv(tmp_path / "data/04_feature/grid_index.csv").set_index("volume_id")
    assert list(index.index) == ["vol-0", "vol-2"]
    for name, grids in (("lowres", catalog.load("grids_lowres")), ("fullres", catalog.load("grids_fullres"))):
        for vid, load in grids.items():
            grid = load()
            assert grid.volume.shape == tuple(TINY[name]["shape"])
            assert grid.volume.dtype == np.dtype(params["dtype"])
            assert float(grid.volume.min()) >= -1 and float(grid.volume.max()) <= 1
            assert grid.meta["resize_mode"] == mode
            row = index.loc[vid]
            assert (row[f"{name}_d"], row[f"{name}_h"], row[f"{name}_w"]) == tuple(TINY[name]["shape"])
            spacing = (row[f"{name}_spacing_d"], row[f"{name}_spacing_h"], row[f"{name}_spacing_w"])
            np.testing.assert_allclose(spacing, grid.spacing_dhw)
            if mode == "spacing_first":
                np.testing.assert_allclose(grid.spacing_dhw, TINY[name]["spacing_mm"])


def test_missing_hu_volume_is_an_error(tmp_path):
    from generatect_kedro.pipelines.preprocessing.nodes import make_grids

    params = {"grids": TINY}
    with pytest.raises(KeyError, match="1 cohort volumes"):
        make_grids({}, pd.DataFrame({"volume_id": ["vol-9"]}), params)


def test_base_parameters_are_paper_scale():
    params = parameters("preprocessing")
    assert params["grids"]["lowres"]["shape"] == [201, 128, 128]
    assert params["grids"]["fullres"]["shape"] == [201, 512, 512]
    assert params["hu_window"] == [-1000, 1000]
