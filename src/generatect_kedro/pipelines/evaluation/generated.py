"""Generating the evaluation volumes with the models under evaluation, and loading both sets back.

The challenger is the set of versions the training pipelines just registered (their *_model_version JSONs);
the champion, when one exists, is whatever @champion points at. Each generates into its own folder,
`<output_dir>/t<transformer version>-s<superres version>/`, through the generation batch writer: resumable
(an item whose sidecar exists is skipped), with a lineage sidecar per volume, in every way the volumes a
user would get from `generatect generate` with those versions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from generatect_kedro import registry
from generatect_kedro.evaluation.prompt_sets import prompt_labels
from generatect_kedro.evaluation.volume_sets import VolumeSet, nifti_grid_loader, partition_grid_loader
from generatect_kedro.reports.labeler import LABEL_COLUMNS

LOG = logging.getLogger(__name__)

__all__ = ["CHALLENGER", "CHAMPION", "generate_for_evaluation", "generated_set", "hu_window_of", "real_set"]

CHALLENGER, CHAMPION = "challenger", "champion"
GENERATED_COLUMNS = ["role", "set", "prompt_row", "item_id", "seed", "nifti", "transformer_version",
                     "superres_version"]


def _versions(transformer_mv: Mapping[str, Any] | None, superres_mv: Mapping[str, Any] | None,
              params: Mapping[str, Any]) -> dict[str, tuple[str, str] | str]:
    """{role: (transformer version, superres version)} or {role: why it is not evaluated}."""
    out: dict[str, tuple[str, str] | str] = {}
    t, s = (transformer_mv or {}).get("version"), (superres_mv or {}).get("version")
    out[CHALLENGER] = (str(t), str(s)) if t and s else "the training pipelines registered no transformer/superres"
    if not params.get("compare_champion", True):
        out[CHAMPION] = "compare_champion is off"
        return out
    try:
        champion = (registry.resolve(str((transformer_mv or {}).get("name") or "generatect-transformer"),
                                     registry.CHAMPION).version,
                    registry.resolve(str((superres_mv or {}).get("name") or "generatect-superres"),
                                     registry.CHAMPION).version)
    except registry.RegistryError as error:
        out[CHAMPION] = f"no champion to compare with ({str(error).splitlines()[0]})"
        return out
    champion = (str(champion[0]), str(champion[1]))
    out[CHAMPION] = champion if champion != out[CHALLENGER] else "the challenger is the champion"
    return out


def generate_for_evaluation(prompts: pd.DataFrame, transformer_mv: Mapping[str, Any] | None,
                            superres_mv: Mapping[str, Any] | None, geometry_table: pd.DataFrame,
                            params: Mapping[str, Any], generation_params: Mapping[str, Any],
                            text_encoder: Mapping[str, Any], *, project_path: Path | None = None,
                            ) -> tuple[pd.DataFrame, dict[str, str]]:
    """Generate every prompt row (`count` volumes each) for the challenger, and the test rows for the champion.

    Returns the table of generated items (`GENERATED_COLUMNS`) and, per role not generated, the reason.
    """
    from generatect_kedro.generation.batch import BatchSettings, expand_prompts, generate_batch
    from generatect_kedro.generation.geometry import geometry_from_params
    from generatect_kedro.generation.models import ModelRequest, load_models
    from generatect_kedro.generation.sampler import SamplerSettings, VolumeSampler

    rows, skipped = [], {}
    out_root = Path(str(params.get("output_dir", "data/07_model_output/evaluation")))
    for role, versions in _versions(transformer_mv, superres_mv, params).items():
        if isinstance(versions, str):
            skipped[role] = versions
            LOG.info("evaluation: no %s volumes: %s", role, versions)
            continue
        table = prompts if role == CHALLENGER else prompts[prompts["set"] == "test"]
        if table.empty:
            continue
        models = load_models(ModelRequest(transformer=versions[0], superres=versions[1]), text_encoder=text_encoder,
                             device=params.get("device", generation_params.get("device", "auto")))
        sampler_params = {**dict(generation_params.get("sampler") or {}), **dict(params.get("sampler") or {})}
        sampler = VolumeSampler(models, SamplerSettings.from_params(sampler_params, models),
                                geometry_from_params(generation_params.get("geometry"), geometry_table))
        items = expand_prompts(table[["prompt", "seed", "count"]].reset_index(drop=True),
                               default_slice_count=int(params.get("slice_count") or sampler.default_slice_count),
                               base_seed=int(params.get("seed", 0)))
        out_dir = out_root / f"t{versions[0]}-s{versions[1]}"
        settings = BatchSettings(out_dir=out_dir, dicom=False, preview=False, track=False,
                                 progress=bool(params.get("progress", True)))
        LOG.info("evaluation: %d %s volumes (transformer v%s, superres v%s) -> %s", len(items), role, *versions,
                 out_dir)
        _, written = generate_batch(sampler, items, settings, project_path=project_path)
        nifti = dict(zip(written["item_id"], written["nifti"]))
        sets, prompt_rows = table["set"].tolist(), table["prompt_row"].tolist()
        for item in items:
            rows.append({"role": role, "set": sets[item.row], "prompt_row": int(prompt_rows[item.row]),
                         "item_id": item.item_id, "seed": item.seed, "nifti": str(out_dir / nifti[item.item_id]),
                         "transformer_version": versions[0], "superres_version": versions[1]})
    return pd.DataFrame(rows, columns=GENERATED_COLUMNS), skipped


def hu_window_of(grids: Mapping[str, Callable[[], Any]]) -> tuple[float, float]:
    """The HU window the real grids were scaled with (their metadata), to put generated HU on the same scale."""
    for load in grids.values():
        raw = (load().meta or {}).get("hu_window")
        if raw:
            low, high = (float(v) for v in str(raw).split(","))
            return low, high
        break
    LOG.warning("the real grids record no HU window; assuming (-1000, 1000)")
    return -1000.0, 1000.0


def _columns(labels: np.ndarray, columns: Sequence[str]) -> np.ndarray:
    """(n, 18) labels in `LABEL_COLUMNS` order → the evaluated `columns` only."""
    return labels[:, [LABEL_COLUMNS.index(c) for c in columns]]


def real_set(cases: pd.DataFrame, grids: Mapping[str, Callable[[], Any]], *, labels: str = "report",
             columns: Sequence[str] = LABEL_COLUMNS, shape: tuple[int, int, int] | None = None,
             cache: bool = False) -> VolumeSet:
    """The real volumes of `cases`; `labels` = "report" (the cohort's labels) or "prompt" (the prompt's)."""
    missing = sorted(set(cases["volume_id"]) - set(grids))
    if missing:
        raise ValueError(f"{len(missing)} evaluation volume(s) have no full-res grid (e.g. {missing[0]}); "
                         "run the preprocessing pipeline")
    y = _columns(cases[list(LABEL_COLUMNS)].to_numpy(dtype=np.float32) if labels == "report"
                 else prompt_labels(cases["prompt"].tolist()), columns)
    return VolumeSet(cases["volume_id"].tolist(), [partition_grid_loader(grids[v]) for v in cases["volume_id"]],
                     y, shape, cache)


def generated_set(generated: pd.DataFrame, prompts: pd.DataFrame, hu_window: tuple[float, float], *,
                  columns: Sequence[str] = LABEL_COLUMNS, shape: tuple[int, int, int] | None = None,
                  cache: bool = False) -> VolumeSet:
    """Generated volumes (rows of the generated table) with the labels of the prompts that produced them."""
    text = prompts.set_index("prompt_row")["prompt"]
    y = _columns(prompt_labels([text[int(r)] for r in generated["prompt_row"]]), columns)
    return VolumeSet(generated["item_id"].tolist(), [nifti_grid_loader(p, hu_window) for p in generated["nifti"]],
                     y, shape, cache)
