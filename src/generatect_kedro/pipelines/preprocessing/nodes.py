"""Preprocessing nodes: cohort HU volumes → low-res and full-res model grids (lazy), and a grid index."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from generatect_kedro.cohort.grids import GridSpec, GridVolume, grid_spacing_dhw, make_grid
from generatect_kedro.volume import HUVolume

logger = logging.getLogger(__name__)

GRID_NAMES = ("lowres", "fullres")


def _specs(params: Mapping[str, Any]) -> dict[str, GridSpec]:
    return {name: GridSpec.from_params(params["grids"][name]) for name in GRID_NAMES}


def _grid_of(load: Callable[[], HUVolume], spec: GridSpec, params: Mapping[str, Any]) -> GridVolume:
    return make_grid(
        load(),
        spec,
        mode=params.get("resize_mode", "fixed_grid"),
        hu_window=params.get("hu_window", (-1000, 1000)),
        dtype=params.get("dtype", "float16"),
    )


def make_grids(
    hu_volumes: Mapping[str, Callable[[], HUVolume]], cohort: pd.DataFrame, params: Mapping[str, Any]
) -> tuple[dict[str, Callable[[], GridVolume]], dict[str, Callable[[], GridVolume]]]:
    """Lazy {volume_id: grid} for the cohort's volumes only; each grid is computed when it is saved.

    Lazy partitions keep memory at one volume at a time (the full-res grid of one CT is ~200 MB in float32).
    Each volume is read once per grid size: two reads traded for never holding the cohort in memory.
    """
    specs = _specs(params)
    wanted = sorted(set(cohort["volume_id"].astype(str)))
    missing = [v for v in wanted if v not in hu_volumes]
    if missing:
        raise KeyError(f"{len(missing)} cohort volumes have no HU volume (first: {missing[:3]})")
    outputs = tuple(
        {v: functools.partial(_grid_of, hu_volumes[v], specs[name], params) for v in wanted} for name in GRID_NAMES
    )
    logger.info(
        "grids for %d volumes (%s): lowres %s, fullres %s",
        len(wanted), params.get("resize_mode", "fixed_grid"), specs["lowres"].shape, specs["fullres"].shape,
    )
    return outputs


def index_grids(cohort: pd.DataFrame, volume_manifest: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """One row per cohort volume: grid shapes and voxel sizes (mm, D/H/W) of both grids, from the manifest."""
    specs = _specs(params)
    mode = params.get("resize_mode", "fixed_grid")
    manifest = volume_manifest.assign(volume_id=volume_manifest["volume_id"].astype(str)).drop_duplicates("volume_id")
    rows = manifest[manifest["volume_id"].isin(set(cohort["volume_id"].astype(str)))].sort_values("volume_id")
    records = []
    for row in rows.itertuples(index=False):
        shape = (int(row.shape_i), int(row.shape_j), int(row.shape_k))
        spacing = (float(row.spacing_i), float(row.spacing_j), float(row.spacing_k))
        record: dict[str, Any] = {"volume_id": row.volume_id, "resize_mode": mode}
        for name, spec in specs.items():
            sd, sh, sw = grid_spacing_dhw(shape, spacing, spec, mode)
            d, h, w = spec.shape
            record.update({f"{name}_d": d, f"{name}_h": h, f"{name}_w": w})
            record.update({f"{name}_spacing_d": sd, f"{name}_spacing_h": sh, f"{name}_spacing_w": sw})
        records.append(record)
    columns = ["volume_id", "resize_mode"] + [
        f"{n}_{k}" for n in GRID_NAMES for k in ("d", "h", "w", "spacing_d", "spacing_h", "spacing_w")
    ]
    return pd.DataFrame(records, columns=columns)
