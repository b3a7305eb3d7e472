"""Does the prompt control the generated volume? Measurements, statistics and a montage for prompt pairs.

A *probe* is two prompts that differ only by one abnormality ("65 years old male: Cardiomegaly." vs "65 years
old male: No acute cardiopulmonary abnormality."). Both are sampled with the same fixed seeds (the seed fixes
each sample's Gumbel noise, so the pair shares its randomness and differs only by the prompt), decoded with
the CT-ViT, and measured where the phantom draws that abnormality: a fractional (D, H, W) box in display
order (D inferior → superior, H anterior → posterior, W patient right → left), e.g. the heart region for
cardiomegaly or the posterior lung bases for pleural effusion. Every seed's value is reported; nothing is
selected. The same boxes measured on CT-ViT decodings of the cohort's own token grids, grouped by label, show
what the data itself holds (the ceiling the model could reach through this decoder).
"""

from __future__ import annotations

import logging
import math
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from generatect_kedro.models.maskgit_sampling import gumbel_noise

LOG = logging.getLogger(__name__)

__all__ = ["Probe", "Region", "compare", "conditioning_report", "measure", "montage_figure", "nearest_rmse",
           "probes_from_params", "regions_from_params", "seeded_gumbel"]

Range = tuple[float, float]


@dataclass(frozen=True)
class Region:
    """A box in fractions of the grid: D and H ranges, one or more W ranges (e.g. both lungs)."""

    name: str
    d: Range
    h: Range
    w: tuple[Range, ...]

    @classmethod
    def from_params(cls, name: str, params: Mapping[str, Any]) -> Region:
        w = params["w"]
        w_ranges = (tuple(w),) if not isinstance(w[0], (list, tuple)) else tuple(tuple(r) for r in w)
        region = cls(name, _range(params["d"]), _range(params["h"]), tuple(_range(r) for r in w_ranges))
        for lo, hi in (region.d, region.h, *region.w):
            if not 0.0 <= lo < hi <= 1.0:
                raise ValueError(f"conditioning region {name!r}: ranges must satisfy 0 <= lo < hi <= 1")
        return region

    def mask(self, shape: Sequence[int]) -> np.ndarray:
        """Boolean (D, H, W) mask; every range keeps at least one index."""
        out = np.zeros(tuple(shape), dtype=bool)
        (d0, d1), (h0, h1) = _indices(self.d, shape[0]), _indices(self.h, shape[1])
        for w in self.w:
            w0, w1 = _indices(w, shape[2])
            out[d0:d1, h0:h1, w0:w1] = True
        return out


@dataclass(frozen=True)
class Probe:
    """Two prompts differing by one abnormality, the region where it shows and the expected change."""

    name: str
    label: str  # the cohort's label column (for the data reference)
    positive: str
    negative: str
    region: str
    direction: int  # +1: mean HU in the region should rise with the finding, −1: fall


def _range(value: Sequence[float]) -> Range:
    lo, hi = (float(v) for v in value)
    return lo, hi


def _indices(fraction: Range, size: int) -> tuple[int, int]:
    lo = min(int(math.floor(fraction[0] * size)), size - 1)
    return lo, max(lo + 1, int(math.ceil(fraction[1] * size)))


def regions_from_params(params: Mapping[str, Any]) -> dict[str, Region]:
    return {name: Region.from_params(name, spec) for name, spec in dict(params).items()}


def probes_from_params(params: Mapping[str, Any], regions: Mapping[str, Region]) -> list[Probe]:
    probes = []
    for name, spec in dict(params).items():
        spec = dict(spec)
        direction = {"increase": 1, "decrease": -1}.get(str(spec.get("direction", "increase")))
        if direction is None:
            raise ValueError(f"conditioning probe {name!r}: direction must be increase or decrease")
        if spec["region"] not in regions:
            raise ValueError(f"conditioning probe {name!r}: unknown region {spec['region']!r}; "
                             f"known: {', '.join(sorted(regions))}")
        if spec["positive"] == spec["negative"]:
            raise ValueError(f"conditioning probe {name!r}: the two prompts are identical")
        probes.append(Probe(name, str(spec.get("label", name)), str(spec["positive"]), str(spec["negative"]),
                            str(spec["region"]), direction))
    return probes


# ---- sampling noise ---------------------------------------------------------------------------------------

def seeded_gumbel(seeds: Sequence[int]) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """A sampler ``noise_fn`` giving row i the Gumbel noise of ``torch.Generator().manual_seed(seeds[i])``.

    Row i is then exactly what ``sample_tokens`` draws for a batch of one with that seed, whatever the batch,
    and two prompts sampled with the same seeds share their noise (common random numbers).
    """
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

    def noise_fn(step: int, logits: torch.Tensor) -> torch.Tensor:  # noqa: ARG001 - the sampler's signature
        if logits.shape[0] != len(generators):
            raise ValueError(f"{logits.shape[0]} rows but {len(generators)} seeds")
        rows = [gumbel_noise(tuple(logits.shape[1:]), generator=g, dtype=torch.float32) for g in generators]
        return torch.stack(rows).to(device=logits.device, dtype=logits.dtype)

    return noise_fn


# ---- measurements and statistics -------------------------------------------------------------------------

def measure(hu_dhw: np.ndarray, regions: Mapping[str, Region], spacing_dhw: Sequence[float]) -> dict[str, float]:
    """Mean HU in every region plus the cardiothoracic ratio (NaN where no lungs are found)."""
    from generatect_kedro.phantom.measure import cardiothoracic_ratio

    hu = np.asarray(hu_dhw, dtype=np.float32)
    values = {f"{name}_mean_hu": float(hu[region.mask(hu.shape)].mean()) for name, region in regions.items()}
    try:
        values["cardiothoracic_ratio"] = float(cardiothoracic_ratio(hu, spacing_dhw))
    except (ValueError, IndexError):  # a sample without recognisable lungs
        values["cardiothoracic_ratio"] = float("nan")
    return values


def compare(positive: Sequence[float], negative: Sequence[float], direction: int = 1,
            paired: bool = True) -> dict[str, Any]:
    """Difference of means in the expected direction, seed-to-seed SDs, Cohen's d, Welch's t (one-sided p),
    the probability that a positive sample exceeds a negative one (AUC) and, for shared seeds, paired figures."""
    from scipy import stats

    a = np.asarray(positive, dtype=np.float64)
    b = np.asarray(negative, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    out: dict[str, Any] = {"n_positive": int(a.size), "n_negative": int(b.size)}
    if a.size < 2 or b.size < 2:
        return {**out, "difference": None, "cohens_d": None, "welch_t": None, "p_value": None, "auc": None}
    diff = direction * (a.mean() - b.mean())
    pooled = math.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2))
    welch = stats.ttest_ind(a, b, equal_var=False, alternative="greater" if direction > 0 else "less")
    wins = (direction * (a[:, None] - b[None, :]) > 0).mean() + 0.5 * (a[:, None] == b[None, :]).mean()
    out.update({
        "positive_mean": float(a.mean()), "negative_mean": float(b.mean()),
        "positive_sd": float(a.std(ddof=1)), "negative_sd": float(b.std(ddof=1)),
        "difference": float(diff), "pooled_sd": float(pooled),
        "cohens_d": float(diff / pooled) if pooled > 0 else (math.inf if diff > 0 else 0.0),
        "welch_t": float(direction * welch.statistic) if np.isfinite(welch.statistic) else None,
        "p_value": float(welch.pvalue) if np.isfinite(welch.pvalue) else None,
        "auc": float(wins),
    })
    if paired and a.size == b.size == len(positive) == len(negative):
        pair = direction * (a - b)
        out["paired_mean"] = float(pair.mean())
        out["paired_sd"] = float(pair.std(ddof=1))
        out["paired_positive_fraction"] = float((pair > 0).mean())
    return out


# ---- montage ----------------------------------------------------------------------------------------------

def montage_figure(panels: Sequence[Mapping[str, Any]], regions: Mapping[str, Region], columns: int = 4,
                   window: str = "lung", spacing_dhw: Sequence[float] = (1.0, 1.0, 1.0)):
    """One block per probe: rows positive / negative, ``columns`` seeds then the mean over all seeds, as the
    axial slice through the middle of the probe's region, with the region outlined."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from generatect_kedro.visualize import apply_window

    figure = Figure(figsize=(1.6 * (columns + 1) + 1.2, 3.9 * len(panels) + 0.4), dpi=100,
                    layout="constrained")
    FigureCanvasAgg(figure)
    blocks = figure.subfigures(len(panels), 1, squeeze=False)[:, 0]
    aspect = float(spacing_dhw[1]) / float(spacing_dhw[2])
    for block, panel in zip(blocks, panels):
        region = regions[panel["region"]]
        axes = block.subplots(2, columns + 1, squeeze=False)
        for r, key in enumerate(("positive", "negative")):
            volumes = np.asarray(panel[f"{key}_volumes"])
            d0, d1 = _indices(region.d, volumes.shape[1])
            d = (d0 + d1 - 1) // 2
            images = [volumes[i, d] for i in range(min(columns, len(volumes)))] + [volumes.mean(axis=0)[d]]
            titles = [f"seed {s}" for s in panel["seeds"][:columns]] + [f"mean of {len(volumes)} seeds"]
            for c, (image, title) in enumerate(zip(images, titles)):
                ax = axes[r, c]
                ax.imshow(apply_window(image, window), cmap="gray", vmin=0, vmax=1, aspect=aspect,
                          interpolation="nearest")
                h0, h1 = _indices(region.h, image.shape[0])
                for w in region.w:
                    w0, w1 = _indices(w, image.shape[1])
                    ax.add_patch(Rectangle((w0 - 0.5, h0 - 0.5), w1 - w0, h1 - h0, fill=False, ec="tab:orange",
                                           lw=0.8))
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(title, fontsize=7)
            axes[r, 0].set_ylabel("\n".join(textwrap.wrap(panel[key], 24)), fontsize=7)
        stats = panel["stats"]
        block.suptitle(f"{panel['name']}: {panel['metric']} {_fmt(stats.get('positive_mean'))} vs "
                       f"{_fmt(stats.get('negative_mean'))} HU (SD {_fmt(stats.get('positive_sd'))} / "
                       f"{_fmt(stats.get('negative_sd'))}), Cohen's d {_fmt(stats.get('cohens_d'))}, "
                       f"p {_fmt(stats.get('p_value'))}", fontsize=8)
    figure.suptitle(f"Prompt control of the low-res output: axial slice, {window} window, region outlined",
                    fontsize=9)
    return figure


# ---- the node ---------------------------------------------------------------------------------------------

def conditioning_report(transformer_model_version: Mapping[str, Any], ctvit_token_index: Any, ctvit_tokens: Any,
                        cohort: Any, params: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """Sample every probe's two prompts with the same fixed seeds from the *registered* transformer, decode
    with the registered CT-ViT its tokens came from, measure, compare; JSON report + montage figure.

    A region mean also moves when samples are garbage, so each prompt's samples are checked for
    plausibility too: their RMSE (HU) to the nearest CT-ViT-decoded training volume must stay within
    ``plausibility_max_ratio`` × that of the real validation volumes. The probe prompts are new text, encoded
    here with the configured encoder, which must be the one the model was trained with.
    """
    from generatect_kedro import registry
    from generatect_kedro.models.maskgit_sampling import MaskGITSamplerConfig, sample_tokens
    from generatect_kedro.models.text_encoder import TextEncoder
    from generatect_kedro.pipelines.transformer.nodes import load_ctvit, sampler_config
    from generatect_kedro.pipelines.transformer.task import decode_hu
    from generatect_kedro.text.prompt_cache import PromptCacheSettings, pad_embeddings
    from generatect_kedro.training.tracking import active_mlflow

    started = time.perf_counter()
    settings = dict(params.get("conditioning") or {})
    if not settings.get("enabled", True):
        return {"enabled": False}, _empty_figure("conditioning report disabled")
    regions = regions_from_params(settings["regions"])
    probes = probes_from_params(settings["probes"], regions)
    seeds = [int(settings.get("first_seed", 0)) + i for i in range(int(settings.get("num_seeds", 16)))]
    spacing = tuple(float(v) for v in (params.get("preview") or {}).get("spacing_dhw", (1.0, 1.0, 1.0)))
    alpha, max_ratio = float(settings.get("alpha", 0.05)), float(settings.get("plausibility_max_ratio", 2.5))

    ref = registry.resolve(transformer_model_version["name"], transformer_model_version["version"])
    maskgit, config = registry.load_module(ref)
    sampler = MaskGITSamplerConfig(**{**sampler_config({"sampler": config["sampler"]}).__dict__,
                                      **dict(settings.get("sampler") or {})})
    ctvit, ctvit_config = load_ctvit(config["ctvit"])
    hu_window = tuple(float(v) for v in ctvit_config.get("hu_window", (-1000, 1000)))
    encoder = TextEncoder(PromptCacheSettings.from_params(params).encoder)
    if encoder.fingerprint != config["text_encoder"]["fingerprint"]:
        raise ValueError(f"transformer.text_encoder ({encoder.fingerprint[:12]}…) is not the encoder "
                         f"{ref.uri} was trained with ({config['text_encoder']['fingerprint'][:12]}…)")
    prompts = sorted({p for probe in probes for p in (probe.positive, probe.negative)})
    embeds, mask = encoder.encode(prompts)
    volumes: dict[str, np.ndarray] = {}
    for i, prompt in enumerate(prompts):
        batch_text, batch_mask = pad_embeddings([embeds[i, : int(mask[i].sum())]] * len(seeds))
        ids = sample_tokens(maskgit, batch_text, batch_mask, tuple(config["grid_shape"]), config=sampler,
                            critic=getattr(maskgit, "critic", None), noise_fn=seeded_gumbel(seeds),
                            generator=torch.Generator().manual_seed(seeds[0]))
        volumes[prompt] = decode_hu(ctvit, ids, hu_window)
    measured = {p: [measure(v, regions, spacing) for v in volumes[p]] for p in prompts}

    real = _real_volumes(ctvit, ctvit_token_index, ctvit_tokens, cohort, probes, settings, hu_window)
    train_pool = np.stack([_pooled(v) for v in real["train"].values()])
    real_nn = nearest_rmse(np.stack([_pooled(v) for v in real["valid"].values()]), train_pool) \
        if real["valid"] else np.array([])
    real_median = float(np.median(real_nn)) if real_nn.size else float("nan")
    labels = cohort.set_index(cohort["volume_id"].astype(str))
    train_measured = {v: measure(hu, regions, spacing) for v, hu in real["train"].items()}

    report: dict[str, Any] = {
        "enabled": True, "model": {"name": ref.name, "version": ref.version, "weights_sha256": ref.weights_sha256},
        "ctvit": {k: config["ctvit"][k] for k in ("name", "version", "weights_sha256")}, "seeds": seeds,
        "sampler": dict(sampler.__dict__), "grid_shape": list(config["grid_shape"]),
        "regions": {n: {"d": r.d, "h": r.h, "w": r.w} for n, r in regions.items()},
        "plausibility_reference": {"valid_volumes": int(real_nn.size), "valid_nn_rmse_hu_median": real_median,
                                   "train_volumes": len(train_pool), "max_ratio": max_ratio},
        "method": ("each probe's positive and negative prompt sampled with the same seeds (shared Gumbel noise), "
                   "decoded by the registered CT-ViT, mean HU measured in the probe's region; all seeds reported; "
                   "p = Welch's one-sided t-test in the expected direction; data_reference = the same measurement "
                   "on CT-ViT decodings of training token grids grouped by the label; plausibility = median RMSE "
                   "(HU) of samples to their nearest decoded training volume over that of real validation volumes; "
                   "controls_output = p < alpha, difference > 0 and both prompts' ratios <= max_ratio"),
        "probes": {},
    }
    panels = []
    for probe in probes:
        metric = f"{probe.region}_mean_hu"
        pos, neg = ([m[metric] for m in measured[p]] for p in (probe.positive, probe.negative))
        stats = compare(pos, neg, probe.direction)
        ratios = {k: float(np.median(nearest_rmse(np.stack([_pooled(v) for v in volumes[p]]), train_pool)))
                  / (real_median if real_median > 0 else math.nan)
                  for k, p in (("positive", probe.positive), ("negative", probe.negative))}
        plausible = all(r <= max_ratio for r in ratios.values())  # NaN (no validation volumes) fails
        significant = (stats["difference"] or 0) > 0 and stats["p_value"] is not None and stats["p_value"] < alpha
        groups = {flag: [v for v in train_measured if v in labels.index and int(labels.at[v, probe.label]) == flag]
                  for flag in (1, 0)} if probe.label in labels.columns else {1: [], 0: []}
        report["probes"][probe.name] = {
            "label": probe.label, "positive_prompt": probe.positive, "negative_prompt": probe.negative,
            "region": probe.region, "metric": metric, "direction": "increase" if probe.direction > 0 else "decrease",
            "stats": stats, "alpha": alpha, "plausibility_ratio": ratios, "plausible": plausible,
            "controls_output": bool(significant and plausible),
            "cardiothoracic_ratio": compare(*([m["cardiothoracic_ratio"] for m in measured[p]]
                                              for p in (probe.positive, probe.negative)), probe.direction),
            "positive_values": [round(v, 2) for v in pos], "negative_values": [round(v, 2) for v in neg],
            "data_reference": compare(*([train_measured[v][metric] for v in groups[f]] for f in (1, 0)),
                                      probe.direction, paired=False),
        }
        panels.append({"name": probe.name, "region": probe.region, "metric": metric, "seeds": seeds,
                       "positive": probe.positive, "negative": probe.negative, "stats": stats,
                       "positive_volumes": volumes[probe.positive], "negative_volumes": volumes[probe.negative]})
        LOG.info("conditioning %s: %s %s vs %s HU (SD %s / %s, %d seeds), d = %s, p = %s, plausibility ratios "
                 "%s / %s (max %s): controls the output = %s", probe.name, metric, _fmt(stats.get("positive_mean")),
                 _fmt(stats.get("negative_mean")), _fmt(stats.get("positive_sd")), _fmt(stats.get("negative_sd")),
                 len(seeds), _fmt(stats.get("cohens_d")), _fmt(stats.get("p_value")), _fmt(ratios["positive"]),
                 _fmt(ratios["negative"]), max_ratio, report["probes"][probe.name]["controls_output"])
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    figure = montage_figure(panels, regions, columns=int(settings.get("montage_columns", 4)), spacing_dhw=spacing)
    _track(report, ref, active_mlflow())
    return report, figure


def nearest_rmse(volumes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """RMSE of each volume to its nearest reference volume (same shapes), in the volumes' units."""
    flat, ref = volumes.reshape(len(volumes), -1), reference.reshape(len(reference), -1)
    squared = (flat ** 2).sum(1)[:, None] + (ref ** 2).sum(1)[None] - 2 * flat @ ref.T
    return np.sqrt(np.clip(squared, 0, None).min(axis=1) / flat.shape[1])


def _pooled(hu: np.ndarray, size: int = 32) -> np.ndarray:
    """Average-pooled to at most ``size`` per axis (paper-scale volumes stay small in memory)."""
    tensor = torch.from_numpy(np.asarray(hu, dtype=np.float32))[None, None]
    target = tuple(min(s, size) for s in tensor.shape[2:])
    return torch.nn.functional.adaptive_avg_pool3d(tensor, target)[0, 0].numpy().astype(np.float64)


def _real_volumes(ctvit, token_index, tokens, cohort, probes, settings, hu_window) -> dict[str, dict[str, Any]]:
    """CT-ViT decodings of real token grids: training volumes (up to ``reference_max_volumes`` with and
    without each probe's label) and validation volumes (up to ``plausibility_max_volumes``)."""
    from generatect_kedro.pipelines.transformer.task import decode_hu

    split = token_index.set_index(token_index["volume_id"].astype(str))["split"].astype(str)
    train_splits = set(settings.get("reference_splits", ["train"]))
    ids = sorted(v for v in split.index if split[v] in train_splits and v in tokens)
    labels = cohort.set_index(cohort["volume_id"].astype(str))
    limit = int(settings.get("reference_max_volumes", 64))
    chosen: list[str] = []
    for probe in probes:
        flags = {v: int(labels.at[v, probe.label]) if probe.label in labels.columns and v in labels.index else -1
                 for v in ids}
        for flag in (1, 0):
            chosen += [v for v in ids if flags[v] == flag][:limit]
    valid = sorted(v for v in split.index if split[v] == str(settings.get("plausibility_split", "valid"))
                   and v in tokens)[: int(settings.get("plausibility_max_volumes", 64))]
    out: dict[str, dict[str, Any]] = {}
    for name, volume_ids in (("train", sorted(set(chosen))), ("valid", valid)):
        grids = [torch.from_numpy(tokens[v]().ids.astype("int64")) for v in volume_ids]
        decoded = decode_hu(ctvit, torch.stack(grids), hu_window) if grids else []
        out[name] = dict(zip(volume_ids, decoded))
    if not out["train"]:
        raise ValueError("no training token grids to compare samples with (conditioning.reference_splits)")
    return out


def _track(report: Mapping[str, Any], ref: Any, mlflow: Any) -> None:
    """Probe statistics as MLflow metrics of this run and as tags of the registered version."""
    if mlflow is None:
        return
    metrics, tags = {}, {}
    for name, probe in report["probes"].items():
        values = {**probe["stats"], "data_cohens_d": (probe.get("data_reference") or {}).get("cohens_d"),
                  **{f"plausibility_ratio_{k}": v for k, v in probe["plausibility_ratio"].items()}}
        for key in ("difference", "cohens_d", "p_value", "auc", "positive_sd", "negative_sd", "data_cohens_d",
                    "plausibility_ratio_positive", "plausibility_ratio_negative"):
            if values.get(key) is not None and math.isfinite(values[key]):
                metrics[f"transformer/conditioning/{name}/{key}"] = float(values[key])
        tags[f"conditioning_{name}_cohens_d"] = _fmt(probe["stats"].get("cohens_d"))
        tags[f"conditioning_{name}_p_value"] = _fmt(probe["stats"].get("p_value"))
        tags[f"conditioning_{name}_controls"] = str(probe["controls_output"]).lower()
    try:
        mlflow.log_metrics(metrics)
        client = mlflow.MlflowClient()
        for key, value in tags.items():
            client.set_model_version_tag(ref.name, ref.version, key, value)
    except Exception as error:  # tracking trouble must not lose the report itself
        LOG.warning("could not log the conditioning report to MLflow: %s", error)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _empty_figure(text: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4, 1), dpi=100)
    FigureCanvasAgg(figure)
    figure.text(0.5, 0.5, text, ha="center", va="center")
    return figure
