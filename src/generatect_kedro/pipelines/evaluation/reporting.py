"""The evaluation's outputs: headline metrics (DVC's metrics file), the report, and the evidence on the versions.

The headline metrics of the challenger are

* logged to this run's MLflow run (`evaluation/...`), with the report and figures as artifacts (catalog);
* set as `metric.evaluation/...` tags on every evaluated model version (the CT-ViT, transformer and
  super-resolution versions that produced the volumes): the promotion gates read these tags first, so the
  evidence stays attached to the version whatever run later re-reads it.

The champion's numbers, when a champion was evaluated on the same test split, appear beside the
challenger's in the report and under `evaluation/champion/...` in the metrics file, never as tags.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from generatect_kedro.evaluation.report import (
    auroc_figure,
    hu_histogram_figure,
    montage_figure,
    render_markdown,
)
from generatect_kedro.evaluation.utility import utility_summary
from generatect_kedro.evaluation.volume_sets import nifti_grid_loader
from generatect_kedro.metrics.image_quality import to_hu
from generatect_kedro.pipelines.evaluation.generated import CHALLENGER, hu_window_of

LOG = logging.getLogger(__name__)

__all__ = ["evaluation_report", "headline_metrics", "tag_evaluated_versions"]

PREFIX = "evaluation/"


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def role_metrics(role: Mapping[str, Any]) -> dict[str, float]:
    """Flat numbers of one generator: alignment, Fréchet distances per feature network, HU sanity."""
    out = {f"text_alignment/{k}": v for k, v in (role.get("text_alignment") or {}).items()
           if k in ("mean_auroc_generated", "mean_auroc_real", "auroc_ratio", "common_labels")}
    out.update({key: entry.get("value") for key, entry in (role.get("frechet") or {}).items()
                if key != "unavailable" and isinstance(entry, Mapping)})
    out.update({f"hu_sanity/{k}": v for k, v in (role.get("hu_sanity") or {}).items()
                if k in ("flagged_fraction", "flagged_volumes", "generated_volumes")})
    return _finite(out)


def headline_metrics(classifier: Mapping[str, Any], results: Mapping[str, Any], utility: pd.DataFrame
                     ) -> dict[str, float]:
    """`evaluation/...` → value: what DVC shows, MLflow logs and the gates read."""
    metrics = {f"{PREFIX}classifier/{k}": classifier.get(k) for k in ("mean_auroc", "mean_average_precision",
                                                                      "evaluable_labels")}
    roles = results.get("roles") or {}
    metrics.update({f"{PREFIX}{k}": v for k, v in role_metrics(roles.get(CHALLENGER) or {}).items()})
    if len(utility):
        metrics.update({f"{PREFIX}{k}": v for k, v in utility_summary(utility).items() if "/auroc/" not in k})
    for role, values in roles.items():
        if role != CHALLENGER:
            metrics.update({f"{PREFIX}{role}/{k}": v for k, v in role_metrics(values).items()})
    return _finite(metrics)


def _evaluated_versions(ctvit_mv: Mapping[str, Any] | None, transformer_mv: Mapping[str, Any] | None,
                        superres_mv: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    out = []
    for info in (transformer_mv, superres_mv):
        if info and info.get("version"):
            out.append((str(info["name"]), str(info["version"])))
    tags = (transformer_mv or {}).get("tags") or {}
    if tags.get("ctvit_model") and tags.get("ctvit_version"):
        out.append((str(tags["ctvit_model"]), str(tags["ctvit_version"])))
    elif ctvit_mv and ctvit_mv.get("version"):
        out.append((str(ctvit_mv["name"]), str(ctvit_mv["version"])))
    return out


def tag_evaluated_versions(metrics: Mapping[str, float], versions: list[tuple[str, str]]) -> list[str]:
    """`metric.<key>` tags on each version (challenger metrics only); returns what was tagged."""
    from generatect_kedro.training.tracking import active_mlflow

    mlflow = active_mlflow()
    if mlflow is None:
        import mlflow  # outside `kedro run` the registry is still the configured tracking server's

    client = mlflow.MlflowClient()
    tagged = []
    for name, version in versions:
        try:
            for key, value in metrics.items():
                if key.startswith(f"{PREFIX}champion/"):
                    continue
                client.set_model_version_tag(name, version, f"metric.{key}", repr(float(value)))
            tagged.append(f"{name} v{version}")
        except Exception as error:  # a missing version must not lose the report
            LOG.warning("could not tag %s v%s with the evaluation metrics: %s", name, version, error)
    return tagged


def _stage_evidence(conditioning: Mapping[str, Any] | None, superres: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, probe in ((conditioning or {}).get("probes") or {}).items():
        for key in ("cohens_d", "p_value"):
            out[f"transformer/conditioning/{name}/{key}"] = (probe.get("stats") or {}).get(key)
    for method, values in ((superres or {}).get("methods") or {}).items():
        for key in ("psnr_hu", "hf_power_share", "hf_correlation"):
            out[f"superres/eval/{method}/{key}"] = values.get(key)
    return out


def _montage_panels(generated: pd.DataFrame, prompts: pd.DataFrame, cases: pd.DataFrame,
                    grids: Mapping[str, Callable[[], Any]], window: tuple[float, float], count: int) -> list[dict]:
    import torch

    panels = []
    mine = generated[(generated["role"] == CHALLENGER) & (generated["set"] == "test")].head(count)
    rows = prompts.set_index("prompt_row")
    for item in mine.itertuples(index=False):
        prompt_row = rows.loc[int(item.prompt_row)]
        real_id = prompt_row["case"]
        real = (to_hu(torch.from_numpy(grids[real_id]().volume.astype("float32")), window).numpy()
                if real_id in grids else None)
        fake = to_hu(torch.from_numpy(nifti_grid_loader(item.nifti, window)()), window).numpy()
        panels.append({"prompt": str(prompt_row["prompt"]), "real": real, "generated": fake})
    return panels


def evaluation_report(classifier_summary: Mapping[str, Any], results: Mapping[str, Any], utility: pd.DataFrame,
                      generated: pd.DataFrame, prompts: pd.DataFrame, cases: pd.DataFrame,
                      grids_fullres: Mapping[str, Callable[[], Any]], transformer_conditioning: Mapping[str, Any],
                      superres_evaluation: Mapping[str, Any], ctvit_model_version: Mapping[str, Any],
                      transformer_model_version: Mapping[str, Any], superres_model_version: Mapping[str, Any],
                      params: Mapping[str, Any]) -> tuple[dict[str, Any], str, Any, Any, Any]:
    """Metrics JSON, the Markdown report and its three figures; logs and tags as the module says."""
    from generatect_kedro.training.tracking import active_mlflow

    metrics = headline_metrics(classifier_summary, results, utility)
    results = {**results, "test_splits": list(params.get("test_splits", ["test"])),
               "skipped": _skipped(results, generated)}
    versions = _evaluated_versions(ctvit_model_version, transformer_model_version, superres_model_version)
    tagged = tag_evaluated_versions(metrics, versions) if params.get("tag_versions", True) and \
        CHALLENGER in (results.get("roles") or {}) else []
    mlflow = active_mlflow()
    if mlflow is not None:
        try:
            mlflow.log_metrics(metrics)
        except Exception as error:  # tracking trouble must not lose the report
            LOG.warning("could not log the evaluation metrics to MLflow: %s", error)
    window = hu_window_of(grids_fullres)
    markdown = render_markdown(results, utility, classifier_summary,
                               _stage_evidence(transformer_conditioning, superres_evaluation), metrics)
    if tagged:
        markdown += "\nThe headline metrics are tags `metric.evaluation/...` on " + ", ".join(tagged) + ".\n"
    panels = _montage_panels(generated, prompts, cases, grids_fullres, window, int(params.get("montage_count", 4)))
    LOG.info("evaluation: %s", ", ".join(f"{k.removeprefix(PREFIX)} {v:.3g}" for k, v in metrics.items()
                                          if "/auroc/" not in k))
    return (metrics, markdown, auroc_figure(utility), hu_histogram_figure(results.get("roles") or {}),
            montage_figure(panels, window))


def _skipped(results: Mapping[str, Any], generated: pd.DataFrame) -> dict[str, str]:
    roles = set(results.get("roles") or {})
    return {"champion": "no champion generator to compare with (first evaluation, or the challenger is the "
                        "champion)"} if "champion" not in roles and len(generated) else {}
