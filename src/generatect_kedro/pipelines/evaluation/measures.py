"""The measurements of one generator (challenger or champion) on the test prompts.

Each measurement that cannot be made on the sets at hand (too few volumes, a feature network file missing)
is recorded with the reason instead of failing the run: a demo with a dozen test volumes must still produce
a report, and the report must say what it could not measure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from generatect_kedro.evaluation.alignment import text_alignment
from generatect_kedro.evaluation.frechet import (
    ClassifierFeatures,
    SliceSelection,
    TorchScriptI3D,
    TorchScriptInception,
    fid_2d,
    fvd_3d,
)
from generatect_kedro.evaluation.hu_sanity import HUSanityConfig, hu_sanity
from generatect_kedro.evaluation.volume_sets import VolumeSet, predict_scores
from generatect_kedro.metrics.image_quality import to_hu

LOG = logging.getLogger(__name__)

__all__ = ["HISTOGRAM_EDGES", "hu_histogram", "measure_role"]

HISTOGRAM_EDGES = np.arange(-1000.0, 1001.0, 25.0)


def _grid_hu(volumes: VolumeSet, window: Sequence[float]) -> list[np.ndarray]:
    """HU of every volume at its own grid (not the classifier's input size): HU statistics need no resize."""
    return [to_hu(torch.from_numpy(load()), window).numpy() for load in volumes.loaders]


def hu_histogram(volumes_hu: Sequence[np.ndarray], edges: np.ndarray = HISTOGRAM_EDGES) -> list[float]:
    """Voxel share per HU bin over a whole set (the bins cover the grid window)."""
    counts = sum((np.histogram(np.clip(v, edges[0], edges[-1]), bins=edges)[0] for v in volumes_hu),
                 np.zeros(len(edges) - 1))
    total = counts.sum()
    return (counts / total).tolist() if total else counts.tolist()


def _extractors(model: torch.nn.Module, window: Sequence[float], params: Mapping[str, Any]) -> tuple[list, dict]:
    """The project's classifier always; Inception (FID) and I3D (FVD) when their local files are configured."""
    feature_params = dict(params.get("feature_networks") or {})
    extractors, unavailable = [("classifier", ClassifierFeatures(model, name="ct-classifier (this run's)"))], {}
    for key, cls in (("inception", TorchScriptInception), ("i3d", TorchScriptI3D)):
        spec = dict(feature_params.get(key) or {})
        if not spec.get("path"):
            continue
        try:
            extractors.append((key, cls(spec.pop("path"), grid_window_hu=window, **spec)))
        except (FileNotFoundError, ValueError) as error:
            unavailable[key] = str(error)
            LOG.warning("evaluation: %s feature network unavailable: %s", key, error)
    return extractors, unavailable


def _frechet(real: VolumeSet, generated: VolumeSet, model: torch.nn.Module, window: Sequence[float],
             params: Mapping[str, Any]) -> dict[str, Any]:
    extractors, unavailable = _extractors(model, window, params)
    selection = SliceSelection(**dict(params.get("fid_slices") or {}))
    out: dict[str, Any] = {"unavailable": unavailable}
    for key, extractor in extractors:
        for metric, method in (("fid_2d", "slice_features"), ("fvd_3d", "volume_features")):
            if not hasattr(extractor, method):  # Inception has slice features only, I3D volume features only
                continue
            if min(len(real), len(generated)) < 2:
                out[f"{metric}/{key}"] = {"value": None, "extractor": extractor.name,
                                          "reason": "needs at least 2 real and 2 generated volumes"}
            elif metric == "fid_2d":
                out[f"{metric}/{key}"] = fid_2d(real.grids(), generated.grids(), extractor, selection).as_dict()
            else:
                out[f"{metric}/{key}"] = fvd_3d(real.grids(), generated.grids(), extractor).as_dict()
    return out


def measure_role(model: torch.nn.Module, real: VolumeSet, real_scores: np.ndarray, generated: VolumeSet,
                 window: Sequence[float], not_trained: Mapping[str, str], label_names: Sequence[str],
                 params: Mapping[str, Any]) -> dict[str, Any]:
    """Fréchet distances, text alignment (with the real ceiling) and HU sanity of one generator's volumes."""
    result: dict[str, Any] = {"generated_volumes": len(generated)}
    result["frechet"] = _frechet(real, generated, model, window, params)

    scores = predict_scores(model, generated)
    alignment = text_alignment(scores, generated.labels, real_scores, real.labels, label_names,
                               not_trained=not_trained)
    result["text_alignment"] = {**alignment.summary(prefix=""),
                                "generated_table": alignment.generated.table.to_dict("records"),
                                "real_table": alignment.real.table.to_dict("records")}

    real_hu, generated_hu = _grid_hu(real, window), _grid_hu(generated, window)
    result["hu_histogram"] = {"edges": HISTOGRAM_EDGES.tolist(), "real": hu_histogram(real_hu),
                              "generated": hu_histogram(generated_hu)}
    if len(real_hu) < 2:
        result["hu_sanity"] = {"reason": "needs at least 2 real test volumes to define a range"}
    else:
        config = HUSanityConfig(**dict(params.get("hu_sanity") or {}))
        report = hu_sanity(real_hu, generated_hu, config=config, real_names=real.names,
                           generated_names=generated.names)
        result["hu_sanity"] = {**{k.split("/", 1)[1]: v for k, v in report.summary().items()},
                               "flags": report.flags.to_dict("records"),
                               "real_median": report.real.median().to_dict(),
                               "generated_median": report.generated.median().to_dict()}
    return result
