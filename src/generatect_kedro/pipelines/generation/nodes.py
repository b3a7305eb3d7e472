"""Generation nodes: resolve the prompts, generate the volumes through the writer, summarise.

Nodes are functions of data and parameters (``params:generation``, conf/base/parameters_generation.yml). The
volumes themselves are *not* a catalog dataset: a batch writes thousands of files resumably (an item is done
when its sidecar exists; a killed batch continues where it stopped) and under torchrun every rank writes its
own items, which a Kedro dataset saved once at the end of the node cannot express. They go through
`generation.outputs.write_generated_volume` into ``generation.output_dir``, like the CT-ViT/transformer
checkpoints go to their trainer folders; the summary and the item table are catalog outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from generatect_kedro.generation.models import GenerationError

LOG = logging.getLogger(__name__)

__all__ = ["default_prompt_table", "generate_volumes", "resolve_prompts"]


def default_prompt_table(entries: list[Mapping[str, Any]]) -> pd.DataFrame:
    """``generation.default_prompts`` (age, sex, impression[, seed, count, slice_count]) in the cohort's wording
    (`reports.prompts.build_prompt`: "65 years old male: Cardiomegaly.")."""
    from generatect_kedro.reports.prompts import build_prompt

    rows = []
    for entry in entries:
        entry = dict(entry)
        prompt = entry.pop("prompt", None) or build_prompt(entry.pop("age", None), entry.pop("sex", None),
                                                           entry.pop("impression"))
        rows.append({"prompt": prompt, **{k: entry[k] for k in ("seed", "count", "slice_count") if k in entry}})
    return pd.DataFrame(rows)


def resolve_prompts(generation_prompts: pd.DataFrame, params: Mapping[str, Any],
                    promotion_report: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The prompts to generate: ``generation.prompts`` (inline, e.g. from `generatect generate "…"`), else the
    prompts CSV, else ``generation.default_prompts``. ``promotion_report`` (the same run's promotions, when
    any) is only logged: the models are resolved from the registry by alias when generating."""
    for name, outcome in sorted(((promotion_report or {}).get("models") or {}).items()):
        if isinstance(outcome, Mapping):
            LOG.info("generation after promotion: %s v%s %s", name, outcome.get("version"), outcome.get("status"))
    inline = params.get("prompts")
    if inline:
        rows = [{"prompt": p} if isinstance(p, str) else dict(p) for p in inline]
        return pd.DataFrame(rows)
    if generation_prompts is not None and len(generation_prompts):
        return generation_prompts
    defaults = params.get("default_prompts")
    if defaults:
        LOG.info("generation: no prompts table; using the %d default prompts of the parameters", len(defaults))
        return default_prompt_table(list(defaults))
    raise GenerationError("nothing to generate: write data/05_model_input/generation_prompts.csv (columns prompt, "
                          "seed, count, slice_count), pass --prompts FILE.csv, or set generation.default_prompts")


def _text_encoder_settings(params: Mapping[str, Any], transformer: Mapping[str, Any] | None) -> dict[str, Any]:
    """``generation.text_encoder`` over ``transformer.text_encoder`` (the encoder folder on this machine)."""
    base = dict((transformer or {}).get("text_encoder") or {})
    return {**base, **{k: v for k, v in dict(params.get("text_encoder") or {}).items() if v is not None}}


def generate_volumes(generation_prompt_table: pd.DataFrame, generation_cohort_geometry: pd.DataFrame,
                     params: Mapping[str, Any], transformer_params: Mapping[str, Any] | None = None, *,
                     writer: Callable[..., Mapping[str, str]] | None = None, project_path: Path | None = None,
                     ) -> tuple[dict[str, Any], pd.DataFrame]:
    """Load the registered models, expand the prompts into items, generate this rank's unfinished ones.

    Returns the batch summary (JSON) and the item table (one row per item: id, row, seed, slice count,
    prompt hash, status, rank, seconds, file names; no prompt text).
    """
    from generatect_kedro.generation.batch import BatchSettings, expand_prompts, generate_batch
    from generatect_kedro.generation.geometry import geometry_from_params
    from generatect_kedro.generation.models import ModelRequest, load_models
    from generatect_kedro.generation.sampler import SamplerSettings, VolumeSampler

    geometry = geometry_from_params(params.get("geometry"), generation_cohort_geometry)
    models = load_models(ModelRequest.from_params(params.get("models")),
                         text_encoder=_text_encoder_settings(params, transformer_params),
                         device=params.get("device", "auto"))
    sampler = VolumeSampler(models, SamplerSettings.from_params(params.get("sampler"), models), geometry)
    slice_count = params.get("slice_count") or sampler.default_slice_count
    if slice_count is None:
        raise GenerationError("set generation.slice_count: the transformer records no grid depth")
    items = expand_prompts(generation_prompt_table, default_slice_count=int(slice_count),
                           base_seed=int(params.get("seed", 0)), default_count=int(params.get("count", 1)))
    settings = BatchSettings.from_params(params)
    summary, table = generate_batch(sampler, items, settings, writer=writer, project_path=project_path)
    LOG.info("generation: %d items, %d generated, %d already there (%s s/volume) in %s", summary["items"],
             summary["generated"], summary["skipped"], summary["seconds_per_volume"], settings.out_dir)
    return summary, table
