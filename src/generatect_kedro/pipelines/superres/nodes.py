"""Super-resolution stage nodes: stage-1 conditions, cascade training (DeepSpeed), evaluation, registration.

Nodes are functions of data and parameters (``params:superres``, see conf/base/parameters_superres.yml).
Under a launcher every rank runs every node: the reconstructions are sharded over the ranks, training runs
on all of them, and evaluation/registration work on rank 0 only (the other ranks return placeholders that
`data.RankAwareDataset` keeps in memory instead of writing).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from generatect_kedro import registry
from generatect_kedro.cohort.grids import GridVolume
from generatect_kedro.io.rank_aware import local_rank, process_rank, world_size
from generatect_kedro.io.safetensors_model import state_dict_bytes
from generatect_kedro.metrics import psnr_hu, ssim_hu, to_hu
from generatect_kedro.metrics.frequency import high_frequency_scores, lowres_nyquist
from generatect_kedro.models.unet import UNet
from generatect_kedro.pipelines.superres.data import (
    SlicePairs,
    StageGeometry,
    VolumeSources,
    area_downsample,
    cascade_geometry,
    collate_slice_pairs,
    condition_lineage,
    read_grid_meta,
    read_slices,
    trilinear_upsample,
)
from generatect_kedro.pipelines.superres.task import (
    CASCADE_KIND,
    EMA,
    OptimizerSettings,
    SuperresTask,
    ValidationSlices,
    axial_montage,
    build_cascade,
    check_deepspeed,
    stage_config,
    trainer_config,
)
from generatect_kedro.text.prompt_cache import embedding_loaders
from generatect_kedro.training import Trainer
from generatect_kedro.training.tracking import active_mlflow, run_lineage_tags

LOG = logging.getLogger(__name__)

MODEL_NAME = "generatect-superres"
CONDITIONS = ("ctvit_recon", "downsample")
RECON_INDEX_COLUMNS = ["volume_id", "split", "condition", "ctvit_model", "ctvit_version", "ctvit_weights_sha256",
                       "depth", "height", "width"]
_ALL = 1 << 30  # "every slice" for read_slices


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _ids(splits: pd.DataFrame, names: list[str] | str, *sources: Mapping[str, Any]) -> list[str]:
    names = [names] if isinstance(names, str) else list(names)
    wanted = set(splits.loc[splits["split"].astype(str).isin(names), "volume_id"].astype(str))
    usable = set(wanted).intersection(*(set(s) for s in sources))
    if len(usable) < len(wanted):
        LOG.warning("superres: %d %s volumes lack a grid, reconstruction or prompt embedding and are skipped",
                    len(wanted) - len(usable), "/".join(names))
    return sorted(usable)


def _tensor(loader: Callable[[], Any]) -> torch.Tensor:
    return torch.from_numpy(read_slices(loader, 0, _ALL))


# ---- stage-1 conditions --------------------------------------------------------------------------------

def prepare_superres_pairs(grids_lowres: Mapping[str, Callable[[], Any]],
                           grids_fullres: Mapping[str, Callable[[], Any]], ctvit_weights: Mapping[str, torch.Tensor],
                           ctvit_model_version: Mapping[str, Any], splits: pd.DataFrame, params: Mapping[str, Any]
                           ) -> tuple[dict[str, GridVolume], pd.DataFrame]:
    """The stage-1 input of every volume, computed once: the registered CT-ViT's reconstruction of the
    low-res grid (``condition: ctvit_recon``, the release's choice: generated volumes are CT-ViT-decoded too)
    or the full grid area-downsampled to the low-res size (``downsample``). Each rank computes its shard."""
    condition = str(params.get("condition", "ctvit_recon"))
    if condition not in CONDITIONS:
        raise ValueError(f"superres.condition must be one of {CONDITIONS}, got {condition!r}")
    pairs = dict(params.get("pairs") or {})
    ids = _ids(splits, list(pairs.get("splits", ["train", "valid"])), grids_lowres, grids_fullres)
    split_of = dict(zip(splits["volume_id"].astype(str), splits["split"].astype(str)))
    lineage = {"ctvit_model": "", "ctvit_version": "", "ctvit_weights_sha256": ""}
    model = None
    device = _device(str(pairs.get("device", "auto")))
    if condition == "ctvit_recon":
        from generatect_kedro.models.ctvit import CTViT, CTViTConfig

        sha256 = hashlib.sha256(state_dict_bytes(ctvit_weights)).hexdigest()
        if sha256 != ctvit_model_version["weights_sha256"]:
            raise ValueError(f"ctvit weights (sha256 {sha256[:12]}…) are not the registered version "
                             f"{ctvit_model_version['version']}; re-run the ctvit pipeline")
        lineage = {"ctvit_model": str(ctvit_model_version["name"]),
                   "ctvit_version": str(ctvit_model_version["version"]), "ctvit_weights_sha256": sha256}
        model = CTViT(CTViTConfig(**ctvit_model_version["config"]["model"]))
        model.load_state_dict(dict(ctvit_weights), strict=True)
        model.to(device).eval()
    hu_window = tuple(float(v) for v in params.get("hu_window", (-1000, 1000)))
    shard = ids[process_rank()::world_size()]
    out: dict[str, GridVolume] = {}
    batch_size = int(pairs.get("batch_size", 4))
    for start in range(0, len(shard), batch_size):
        chunk = shard[start:start + batch_size]
        grids = [grids_lowres[v]() for v in chunk]
        lowres = torch.stack([torch.from_numpy(np.asarray(g.volume, dtype=np.float32)) for g in grids])
        if model is not None:
            with torch.no_grad():
                made = model(lowres[:, None].to(device)).recon[:, 0].float().cpu().clamp(-1.0, 1.0)
        else:
            made = torch.stack([area_downsample(_tensor(grids_fullres[v]), lowres.shape[-2:]) for v in chunk])
        quality = psnr_hu(to_hu(made, hu_window), to_hu(lowres, hu_window))
        for volume_id, grid, volume, psnr in zip(chunk, grids, made, quality.tolist()):
            meta = {"superres_condition": condition, **lineage, "split": split_of.get(volume_id, ""),
                    "psnr_hu_vs_lowres": f"{psnr:.3f}"}
            out[volume_id] = GridVolume(volume.numpy().astype(np.float32), grid.affine, meta)
    shape = tuple(out[shard[0]].volume.shape) if shard else (0, 0, 0)
    LOG.info("superres: %s for %d of %d volumes on rank %d (%s)", condition, len(out), len(ids), process_rank(),
             f"{lineage['ctvit_model']} v{lineage['ctvit_version']}" if model is not None else "no CT-ViT")
    index = pd.DataFrame([[v, split_of.get(v, ""), condition, *lineage.values(), *shape] for v in ids],
                         columns=RECON_INDEX_COLUMNS)
    return out, index


# ---- training ------------------------------------------------------------------------------------------

def _validation(sources: list[VolumeSources], geometry: StageGeometry, depth: int, params: Mapping[str, Any],
                hu_window: tuple[float, float]) -> ValidationSlices | None:
    if not sources:
        LOG.warning("superres: no validation volumes; validation losses and previews are skipped")
        return None
    per_volume = int(params.get("slices_per_volume", 2))
    pairs = SlicePairs(sources, geometry, depth=depth, slices_per_item=1)
    middle = [depth // 2 + o for o in range(-(per_volume // 2), per_volume - per_volume // 2)]
    items = [pairs[v * depth + min(max(s, 0), depth - 1)] for v in range(len(sources)) for s in middle]
    return ValidationSlices(batch=collate_slice_pairs(items), hu_window=hu_window,
                            preview_slices=int(params.get("preview_slices", 3)), seed=int(params.get("seed", 0)))


def _training_keys(stage: dict[str, Any]) -> dict[str, Any]:
    """A stage's config without the x̂₀-thresholding keys: they only change sampling, so switching them must
    not move the checkpoint folder (digests from before the keys existed stay valid)."""
    return {k: v for k, v in stage.items() if k not in ("dynamic_thresholding", "threshold_percentile")}


def train_superres(superres_lowres_recon: Mapping[str, Callable[[], Any]],
                   grids_fullres: Mapping[str, Callable[[], Any]], prompt_embeddings: Mapping[str, Callable[[], Any]],
                   prompt_index: pd.DataFrame, splits: pd.DataFrame, params: Mapping[str, Any]
                   ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train every cascade stage in turn on the train split's slices (shared trainer; DeepSpeed by default).

    Returns the cascade's EMA weights (``unets.<i>.*``, the layout `build_cascade` rebuilds) and a summary
    with the stage layout, lineage (condition, CT-ViT version, text encoder) and per-stage results.
    """
    started = time.perf_counter()
    text, fingerprint = embedding_loaders(prompt_index, prompt_embeddings)
    train_ids = _ids(splits, str(params.get("train_split", "train")), superres_lowres_recon, grids_fullres, text)
    validation_params = dict(params.get("validation") or {})
    valid_ids = _ids(splits, str(validation_params.get("split", "valid")), superres_lowres_recon, grids_fullres, text)
    valid_ids = valid_ids[: int(validation_params.get("max_volumes", 8))]
    if not train_ids:
        raise ValueError("no training volumes: no 'train' volume has a full grid, a stage-1 input and a prompt")
    lineage, low_shape = condition_lineage(superres_lowres_recon, train_ids + valid_ids)
    _, full_shape = read_grid_meta(grids_fullres[train_ids[0]])
    if low_shape[0] != full_shape[0]:
        raise ValueError(f"low-res depth {low_shape[0]} differs from the full grid's {full_shape[0]}")
    text_meta = text[train_ids[0]]()
    encoder = {"fingerprint": fingerprint, "kind": str(text_meta.meta.get("encoder_kind", "unknown")),
               "dim": int(text_meta.embeds.shape[1]), "max_length": str(text_meta.meta.get("max_length", ""))}
    geometries = cascade_geometry(params, tuple(low_shape[1:]), tuple(full_shape[1:]))
    stages = [stage_config(params, g, encoder["dim"]) for g in geometries]
    optimizer = OptimizerSettings.from_params(params.get("optimizer"))
    ema_params = dict(params.get("ema") or {})
    loss_params = dict(params.get("loss") or {})
    cond_drop_prob = float(loss_params.pop("cond_drop_prob", 0.1))
    hu_window = tuple(float(v) for v in params.get("hu_window", (-1000, 1000)))
    identity = _digest({"stages": [_training_keys(s.to_config()) for s in stages], "optimizer": repr(optimizer),
                        "ema": ema_params, "loss": [cond_drop_prob, loss_params], "crops": [s.crop for s in stages],
                        "train_ids": train_ids, "condition": lineage, "text": fingerprint})
    configs = [trainer_config(params, stage, identity) for stage in stages]
    for config in configs:  # all stages' DeepSpeed configs, before the first one trains for days
        check_deepspeed(config, optimizer)
    LOG.info("superres: %d train / %d valid volumes, %s → %s in %d stage(s) %s, condition %s, text %s %d-d",
             len(train_ids), len(valid_ids), low_shape, full_shape, len(stages),
             " → ".join(f"{g.output_hw[0]}" for g in geometries), lineage["condition"], encoder["kind"],
             encoder["dim"])

    def sources(ids: list[str]) -> list[VolumeSources]:
        return [VolumeSources(v, superres_lowres_recon[v], grids_fullres[v], text[v]) for v in ids]

    weights: dict[str, torch.Tensor] = {}
    results = []
    for stage, config in zip(stages, configs):
        name = f"superres/stage{stage.geometry.index + 1}"
        stage_started = time.perf_counter()
        torch.manual_seed(config.seed + stage.geometry.index)  # module initialisation
        unet = UNet(stage.unet)
        unet.gradient_checkpointing = bool(params.get("gradient_checkpointing", False))
        task = SuperresTask(unet, stage, optimizer, EMA(unet, **ema_params), cond_drop_prob=cond_drop_prob,
                            loss=loss_params, name=name,
                            validation=_validation(sources(valid_ids), stage.geometry, low_shape[0],
                                                   validation_params, hu_window))
        dataset = SlicePairs(sources(train_ids), stage.geometry, depth=low_shape[0],
                             slices_per_item=int(params.get("slices_per_item", 1)),
                             cache=bool(params.get("cache_data", False)))
        result = Trainer(config, name=name).fit(task, dataset, collate_slice_pairs)
        if task.last_validation is None and task.validation is not None:  # resumed an already finished stage
            with torch.no_grad():
                task.validate(result.step)
        weights.update({f"unets.{stage.geometry.index}.{k}": v.contiguous() for k, v in task.ema_weights().items()})
        results.append({"name": name, "steps": result.step, "train_items": len(dataset),
                        "slices_per_item": dataset.k, "crop": stage.crop,
                        "resumed_from": str(result.resumed_from) if result.resumed_from else None,
                        "checkpoint_dir": config.checkpoint_dir, "backend": config.backend,
                        "final_train_metrics": result.metrics, "validation": task.last_validation,
                        "history": [[step, m["train/unet/loss"]] for step, m in result.history
                                    if "train/unet/loss" in m],
                        "parameters": sum(p.numel() for p in unet.parameters()),
                        "wall_seconds": round(time.perf_counter() - stage_started, 1)})
    run = active_mlflow()
    summary = {
        "model": MODEL_NAME, "kind": CASCADE_KIND, "weights": "ema",
        "cascade": {"stages": [s.to_config() for s in stages]},
        "grids": {"lowres": list(low_shape), "fullres": list(full_shape)},
        "condition": lineage, "text_encoder": encoder, "hu_window": list(hu_window),
        "train_volumes": len(train_ids), "valid_volumes": len(valid_ids),
        "optimizer": {"lr": optimizer.lr, "betas": list(optimizer.betas), "weight_decay": optimizer.weight_decay},
        "ema": ema_params, "loss": {"cond_drop_prob": cond_drop_prob, **loss_params}, "stages": results,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "mlflow_run_id": run.active_run().info.run_id if run is not None else None,
    }
    return weights, summary


# ---- evaluation ----------------------------------------------------------------------------------------

METRIC_DEFINITIONS = {
    "psnr_hu": "PSNR in dB of the HU volume against the full-res ground truth (data range = HU window width)",
    "ssim_hu": "mean 2-D SSIM of the axial slices in HU",
    "hf_power_share": "HF power of the output / HF power of the ground truth; HF = radial frequency above the "
                      "low-res grid's Nyquist (1/(2*scale) cycles per full-res pixel), per axial slice",
    "hf_correlation": "correlation of the output's and the ground truth's HF components (0 = unrelated, e.g. noise)",
    "hf_relative_error": "HF error power / ground-truth HF power (1 = no HF at all; < 1 restores true detail)",
}
POSTERIOR_MEAN = "diffusion_mean_k"
_DRAW_SEED_STRIDE = 1_000_003  # draw k of volume i is seeded seed + i + k·stride (k = 0: the `diffusion` draw)


def posterior_mean(draw: Callable[[int], torch.Tensor], k: int) -> torch.Tensor:
    """The mean of ``k`` samples ``draw(0) … draw(k − 1)``: an estimate of the posterior mean E[x | input].

    Why the evaluation scores it (``diffusion_mean_k``): part of the ground truth's detail above the low-res
    Nyquist is unpredictable from the input (CT noise, structures smaller than a low-res voxel). A perfect
    sampler draws that part afresh, independent of the truth, so one sample's HF correlation with the truth
    is about R² — R being the posterior mean's correlation — and it falls below a smooth method's even when
    the model restores the predictable detail (edges) better. Averaging k samples keeps the shared
    (predicted) part and divides the invented part's power by k: with predicted HF power s² and invented n²,
    one sample correlates 1/sqrt(1 + n²/s²)·R, the k-mean 1/sqrt(1 + n²/(k·s²))·R. The k-mean's HF
    correlation and relative error therefore say how much true detail the model restores; one sample's
    say what a generated volume looks like (detail + texture)."""
    if k < 1:
        raise ValueError(f"posterior_mean needs k >= 1 samples, got {k}")
    total = draw(0).double()
    for i in range(1, k):
        total += draw(i).double()
    return (total / k).float()


def _scores(pred_hu: torch.Tensor, truth_hu: torch.Tensor, scale: int) -> dict[str, float]:
    hf = high_frequency_scores(pred_hu, truth_hu, scale=scale)
    return {"psnr_hu": float(psnr_hu(pred_hu, truth_hu).mean()), "ssim_hu": float(ssim_hu(pred_hu, truth_hu).mean()),
            **{k: float(hf[k].mean()) for k in ("hf_power_share", "hf_correlation", "hf_relative_error")}}


def evaluate_superres(superres_weights: Mapping[str, torch.Tensor], superres_training_summary: Mapping[str, Any],
                      superres_lowres_recon: Mapping[str, Callable[[], Any]],
                      grids_fullres: Mapping[str, Callable[[], Any]],
                      prompt_embeddings: Mapping[str, Callable[[], Any]], prompt_index: pd.DataFrame,
                      splits: pd.DataFrame, params: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """Upsample each validation volume's stage-1 input with the cascade (EMA weights, registered samplers)
    and, for comparison, trilinearly; score both against the full grid: PSNR/SSIM in HU and the share of
    the ground truth's high-frequency power each restores (`metrics.frequency`). With
    ``evaluation.posterior_samples: K`` ≥ 2 the mean of K cascade samples (the first is the ``diffusion``
    one) is scored too, as ``diffusion_mean_k`` (see `posterior_mean` for why). Rank 0 only."""
    if process_rank() != 0:
        return {"skipped": f"rank {process_rank()}: evaluation runs on rank 0"}, None
    summary = superres_training_summary
    eval_params = dict(params.get("evaluation") or {})
    text, _ = embedding_loaders(prompt_index, prompt_embeddings)
    ids = _ids(splits, str(eval_params.get("split", "valid")), superres_lowres_recon, grids_fullres, text)
    ids = ids[: int(eval_params.get("max_volumes", 8))]
    device = _device(str(eval_params.get("device", "auto")))
    cascade = build_cascade(summary["cascade"])
    cascade.load_state_dict(dict(superres_weights), strict=True)
    cascade.to(device).eval()
    hu_window = tuple(summary["hu_window"])
    scale = int(np.prod([s["scale"] for s in summary["cascade"]["stages"]]))
    full_hw = tuple(summary["grids"]["fullres"][1:])
    seed, batch = int(eval_params.get("seed", 0)), int(eval_params.get("slice_batch_size", 16))
    k_samples = int(eval_params.get("posterior_samples") or 0)
    if k_samples < 0:
        raise ValueError(f"superres.evaluation.posterior_samples must be >= 0, got {k_samples}")
    method_names = ["diffusion", "trilinear"] + ([POSTERIOR_MEAN] if k_samples >= 2 else [])
    mean_label = f"mean of {k_samples} samples"
    labels = ["low-res input", "trilinear", "diffusion"] + ([mean_label] if k_samples >= 2 else []) + ["ground truth"]
    rows, previews, seconds = [], {label: [] for label in labels}, []
    for i, volume_id in enumerate(ids):
        condition = _tensor(superres_lowres_recon[volume_id])
        truth = to_hu(_tensor(grids_fullres[volume_id]), hu_window)
        embeds = torch.as_tensor(np.asarray(text[volume_id]().embeds, dtype=np.float32))[None]

        def draw(k: int, condition=condition, embeds=embeds, i=i) -> torch.Tensor:
            generator = torch.Generator().manual_seed(seed + i + k * _DRAW_SEED_STRIDE)
            with torch.no_grad():
                return cascade(condition.to(device), embeds.to(device), slice_batch_size=batch,
                               generator=generator).float().cpu()

        tic = time.perf_counter()
        upsampled = draw(0)
        seconds.append(time.perf_counter() - tic)
        outputs = {"diffusion": to_hu(upsampled, hu_window),
                   "trilinear": to_hu(trilinear_upsample(condition, full_hw), hu_window)}
        if k_samples >= 2:
            mean = posterior_mean(lambda k: upsampled if k == 0 else draw(k), k_samples)
            outputs[POSTERIOR_MEAN] = to_hu(mean, hu_window)
        rows.append({"volume_id": volume_id, **{m: _scores(x, truth, scale) for m, x in outputs.items()}})
        if i < int(eval_params.get("preview_volumes", 3)):
            middle = condition.shape[0] // 2
            images = {"low-res input": to_hu(condition, hu_window), "trilinear": outputs["trilinear"],
                      "diffusion": outputs["diffusion"], mean_label: outputs.get(POSTERIOR_MEAN), "ground truth": truth}
            for label in labels:
                previews[label].append(images[label][middle].numpy())
    methods = {m: {k: float(np.mean([r[m][k] for r in rows])) if rows else None for k in METRIC_DEFINITIONS}
               for m in method_names}
    report = {
        "split": str(eval_params.get("split", "valid")), "volumes": len(rows), "scale": scale,
        "hf_cutoff_cycles_per_pixel": lowres_nyquist(scale), "hu_window": list(hu_window),
        "input": summary["condition"], "definitions": METRIC_DEFINITIONS, "methods": methods,
        **{f"{m}_minus_trilinear": {k: (methods[m][k] - methods["trilinear"][k]) if rows else None
                                    for k in METRIC_DEFINITIONS} for m in method_names if m != "trilinear"},
        "sampling": {"stages": [{**{k: s[k] for k in ("scale", "sampler", "steps", "lowres_noise_level",
                                                       "cond_scale")},
                                 "dynamic_thresholding": bool(s.get("dynamic_thresholding", True)),
                                 "threshold_percentile": float(s.get("threshold_percentile", 0.95))}
                                for s in summary["cascade"]["stages"]],
                     "seed": seed, "slice_batch_size": batch, "device": str(device),
                     "posterior_samples": k_samples if k_samples >= 2 else 0,
                     "seconds_per_volume": round(float(np.mean(seconds)), 2) if seconds else None},
        "per_volume": rows,
    }
    mlflow = active_mlflow()
    if mlflow is not None and rows:
        mlflow.log_metrics({f"superres/eval/{m}/{k}": v for m, values in methods.items() for k, v in values.items()})
    if rows:
        LOG.info("superres evaluation on %d volumes: PSNR %.2f dB (trilinear %.2f), HF share %.2f (trilinear %.2f), "
                 "HF correlation %.3f (trilinear %.3f)", len(rows), methods["diffusion"]["psnr_hu"],
                 methods["trilinear"]["psnr_hu"], methods["diffusion"]["hf_power_share"],
                 methods["trilinear"]["hf_power_share"], methods["diffusion"]["hf_correlation"],
                 methods["trilinear"]["hf_correlation"])
        if POSTERIOR_MEAN in methods:
            LOG.info("superres evaluation, mean of %d samples: PSNR %.2f dB, HF share %.2f, HF correlation %.3f, "
                     "HF relative error %.3f", k_samples, *(methods[POSTERIOR_MEAN][k] for k in
                                                           ("psnr_hu", "hf_power_share", "hf_correlation",
                                                            "hf_relative_error")))
    if not rows:
        LOG.warning("superres evaluation: no %s volumes", report["split"])
        previews = {"no validation volumes": [np.full((8, 8), -1000.0)]}
    figure = axial_montage(previews, title=f"super-resolution x{scale}: middle axial slice of validation volumes")
    return report, figure


# ---- registration --------------------------------------------------------------------------------------

def register_superres(superres_weights: Mapping[str, torch.Tensor], superres_training_summary: Mapping[str, Any],
                      superres_evaluation: Mapping[str, Any], ctvit_model_version: Mapping[str, Any],
                      params: Mapping[str, Any]) -> dict[str, Any]:
    """Register the cascade (one safetensors, ``unets.<i>.*`` per stage + a config listing the stages) as
    ``generatect-superres`` @challenger, tagged with its conditioning CT-ViT, text encoder and code/data
    versions. Rank 0 only. A stage-1 input made by another CT-ViT than the registered one is refused."""
    if process_rank() != 0:
        return {"skipped": f"rank {process_rank()}: registration runs on rank 0"}

    summary = superres_training_summary
    condition = summary["condition"]
    registered_ctvit = ctvit_model_version["weights_sha256"]
    if condition["condition"] == "ctvit_recon" and condition["ctvit_weights_sha256"] != registered_ctvit:
        raise ValueError(f"the cascade was trained on reconstructions by {condition['ctvit_model']} "
                         f"v{condition['ctvit_version']}, not by the registered CT-ViT "
                         f"v{ctvit_model_version['version']}; re-run the superres pipeline")
    registry_params = dict(params.get("registry") or {})
    name = str(registry_params.get("name", MODEL_NAME))
    alias = registry_params.get("alias", registry.CHALLENGER)
    stages = summary["cascade"]["stages"]
    config = {"kind": CASCADE_KIND, "format": "safetensors", "weights": summary["weights"], "stages": stages,
              "grids": summary["grids"], "condition": condition, "text_encoder": summary["text_encoder"],
              "hu_window": summary["hu_window"], "optimizer": summary["optimizer"], "ema": summary["ema"],
              "loss": summary["loss"], "steps": [s["steps"] for s in summary["stages"]]}
    expected = set(build_cascade(config).state_dict())
    if set(superres_weights) != expected:
        raise ValueError(f"superres weights do not match the stage layout ({len(superres_weights)} tensors, "
                         f"{len(expected)} expected)")
    methods = superres_evaluation.get("methods") or {}
    layout = " -> ".join([str(stages[0]["input_hw"][0])] + [str(s["output_hw"][0]) for s in stages])
    tags = {
        **run_lineage_tags(),
        "training_run_id": summary.get("mlflow_run_id") or "none (trained outside an MLflow run)",
        "stage_layout": layout, "stages": len(stages),
        "samplers": ",".join(f"{s['sampler']}:{s['steps']}" for s in stages),
        "condition": condition["condition"], "ctvit_model": condition["ctvit_model"] or "none",
        "ctvit_version": condition["ctvit_version"] or "none",
        "ctvit_weights_sha256": condition["ctvit_weights_sha256"] or "none",
        "text_encoder_fingerprint": summary["text_encoder"]["fingerprint"],
        "text_encoder_kind": summary["text_encoder"]["kind"], "text_encoder_dim": summary["text_encoder"]["dim"],
        "cond_drop_prob": summary["loss"]["cond_drop_prob"], "train_steps": ",".join(str(s) for s in config["steps"]),
        "train_volumes": summary["train_volumes"], "grid_shape": "x".join(str(s) for s in summary["grids"]["fullres"]),
        **{f"eval_{k}_{m}": f"{v:.4f}" for m, values in methods.items() for k, v in values.items() if v is not None},
    }
    with tempfile.TemporaryDirectory(prefix="superres-register-") as scratch:
        path = Path(scratch) / "superres.safetensors"
        path.write_bytes(state_dict_bytes(superres_weights))
        info = registry.register_model(name, path, config, tags, alias=alias, artifact_name="superres")
    return {**info, "config": config}
