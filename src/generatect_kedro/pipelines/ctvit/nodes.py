"""CT-ViT stage nodes: train (shared trainer), register (MLflow registry, @challenger), cache token ids.

Nodes are functions of data and parameters (``params:ctvit``, see conf/base/parameters_ctvit.yml). The only
I/O outside the catalog is the trainer's checkpoint folder and MLflow logging.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from generatect_kedro.io.safetensors_model import cpu_state_dict, state_dict_bytes
from generatect_kedro.io.token_dataset import TokenGrid
from generatect_kedro.losses import CTViTLoss, CTViTLossConfig
from generatect_kedro.metrics import mean_volume, mean_volume_baseline_psnr
from generatect_kedro.models.ctvit import CTViT, CTViTConfig
from generatect_kedro.models.discriminator import Discriminator, DiscriminatorConfig
from generatect_kedro.pipelines.ctvit.task import CTViTTask, GridTensors, OptimizerSettings, ValidationSet
from generatect_kedro.training import Trainer, TrainerConfig
from generatect_kedro.training.tracking import active_mlflow, checkpoint_step, run_lineage_tags
from generatect_kedro.utils.plain import plain

LOG = logging.getLogger(__name__)

MODEL_NAME = "generatect-ctvit"
TOKEN_INDEX_COLUMNS = ["volume_id", "split", "t", "h", "w", "codebook_size", "ctvit_model", "ctvit_version",
                       "ctvit_weights_sha256"]


# ---- parameters -----------------------------------------------------------------------------------------

def ctvit_config(params: Mapping[str, Any]) -> CTViTConfig:
    return CTViTConfig(**dict(params.get("model") or {}))


def _perceptual_network(params: Mapping[str, Any]) -> tuple[torch.nn.Module | None, str]:
    """The frozen VGG16 (or None) and a one-line status for MLflow and the model's tags."""
    perceptual = dict((params.get("loss") or {}).get("perceptual") or {})
    path = perceptual.get("weights_path")
    if not path:
        return None, "disabled (no weights path)"
    if float(perceptual.get("weight", 1.0)) <= 0:
        return None, "disabled (weight 0)"
    from generatect_kedro.models.perceptual import VGG16Config, load_vgg16_perceptual

    network = VGG16Config(**dict(perceptual.get("network") or {}))  # default: torchvision's VGG16
    return load_vgg16_perceptual(path, network), f"vgg16 fc7 from {Path(path).name}"


def _gan_status(loss: CTViTLossConfig) -> str:
    if not loss.gan or loss.gan_weight <= 0:
        return "disabled"
    s = loss.discriminator_schedule
    return f"hinge, adaptive weight x {loss.gan_weight:g}, discriminator from step {s.start} every {s.every}"


def _log_params(values: Mapping[str, str]) -> None:
    mlflow = active_mlflow()
    if mlflow is None:
        return
    try:
        mlflow.log_params(dict(values))
    except Exception as error:  # the same key with another value in a resumed run
        LOG.warning("could not log %s to MLflow: %s", sorted(values), error)


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _split_ids(grids: Mapping[str, Any], splits: pd.DataFrame, name: str) -> list[str]:
    ids = splits.loc[splits["split"].astype(str) == name, "volume_id"].astype(str)
    missing = sorted(set(ids) - set(grids))
    if missing:
        LOG.warning("%d %s volumes have no low-res grid and are skipped", len(missing), name)
    return sorted(set(ids) & set(grids))


# ---- training -------------------------------------------------------------------------------------------

def train_ctvit(grids_lowres: Mapping[str, Callable[[], Any]], splits: pd.DataFrame,
                params: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the CT-ViT (and its discriminator) on the train split; validate on the valid split.

    Returns the CT-ViT state dict (codebook included; no discriminator, no VGG) and a JSON summary.
    Checkpoints go to ``<trainer.checkpoint_dir>/<digest>``, the digest covering model, loss, optimizer and
    training-set identity, so a re-run resumes only a compatible run.
    """
    started = time.perf_counter()
    model_config = ctvit_config(params)
    loss_config = CTViTLossConfig.from_params(params.get("loss") or {})
    optimizer = OptimizerSettings.from_params(params.get("optimizer"))
    validation_params = dict(params.get("validation") or {})
    hu_window = tuple(float(v) for v in validation_params.get("hu_window", (-1000, 1000)))

    train_ids = _split_ids(grids_lowres, splits, str(params.get("train_split", "train")))
    valid_ids = _split_ids(grids_lowres, splits, str(validation_params.get("split", "valid")))
    if not train_ids:
        raise ValueError("no training volumes: the splits table has no 'train' volume with a low-res grid")
    valid_ids = valid_ids[: int(validation_params.get("max_volumes", 16))]
    train_set = GridTensors([grids_lowres[v] for v in train_ids], cache=bool(params.get("cache_grids", False)))
    grid_shape = tuple(int(s) for s in train_set[0].shape[1:])
    if grid_shape[1:] != (model_config.image_size, model_config.image_size):
        raise ValueError(f"grids are {grid_shape} but ctvit.model.image_size is {model_config.image_size}")
    token_grid = model_config.token_grid(grid_shape[0])

    perceptual, perceptual_status = _perceptual_network(params)
    gan_status = _gan_status(loss_config)
    _log_params({"ctvit.perceptual_loss": perceptual_status, "ctvit.gan_loss": gan_status})
    LOG.info("ctvit: %d train / %d valid volumes of %s -> %s tokens; perceptual %s; GAN %s", len(train_ids),
             len(valid_ids), grid_shape, token_grid, perceptual_status, gan_status)

    gan_params = dict((params.get("loss") or {}).get("gan") or {})
    discriminator_config = DiscriminatorConfig(image_size=model_config.image_size, channels=model_config.channels,
                                               **dict(gan_params.get("discriminator") or {}))
    trainer_params = dict(params["trainer"])
    torch.manual_seed(int(trainer_params.get("seed", 0)))  # module initialisation
    ctvit = CTViT(model_config)
    discriminator = Discriminator(discriminator_config) if loss_config.gan else None

    validation = _validation_set([grids_lowres[v] for v in valid_ids], train_set, validation_params, hu_window)
    task = CTViTTask(ctvit, CTViTLoss(loss_config, perceptual), optimizer, discriminator=discriminator,
                     validation=validation)

    identity = _digest({"model": model_config.to_dict(), "loss": repr(loss_config), "optimizer": repr(optimizer),
                        "discriminator": repr(discriminator_config), "perceptual": perceptual_status,
                        "train_ids": train_ids})
    if trainer_params.get("checkpoint_dir"):
        trainer_params["checkpoint_dir"] = str(Path(trainer_params["checkpoint_dir"]) / identity)
    result = Trainer(TrainerConfig.from_params(trainer_params, source="ctvit.trainer"), name="ctvit").fit(
        task, train_set)
    if task.last_validation is None and validation is not None:  # resumed an already finished run
        task.validate(result.step)

    weights = cpu_state_dict(ctvit)
    run = active_mlflow()
    summary = {
        "model": MODEL_NAME,
        "steps": result.step,
        "resumed_from_step": checkpoint_step(result.resumed_from),
        "checkpoint_dir": trainer_params.get("checkpoint_dir"),
        "train_volumes": len(train_ids),
        "valid_volumes": len(valid_ids),
        "grid_shape": list(grid_shape),
        "token_grid": list(token_grid),
        "hu_window": list(hu_window),
        "model_config": model_config.to_dict(),
        "loss": {"recon_weight": loss_config.recon_weight, "commit_weight": loss_config.commit_weight,
                 "perceptual": perceptual_status, "perceptual_weight": loss_config.perceptual_weight,
                 "gan": gan_status, "gan_weight": loss_config.gan_weight,
                 "discriminator": asdict(discriminator_config) if discriminator is not None else None},
        "optimizer": {"lr": optimizer.lr, "betas": list(optimizer.betas), "weight_decay": optimizer.weight_decay,
                      "discriminator_lr": optimizer.discriminator_lr},
        "final_train_metrics": result.metrics,
        "validation": task.last_validation,
        "parameters": sum(p.numel() for p in ctvit.parameters()),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "mlflow_run_id": run.active_run().info.run_id if run is not None else None,
    }
    summary["loss"]["discriminator"] = plain(summary["loss"]["discriminator"])
    return weights, summary


def _validation_set(loaders: list[Callable[[], Any]], train_set: GridTensors, params: Mapping[str, Any],
                    hu_window: tuple[float, ...]) -> ValidationSet | None:
    """Validation volumes in memory, and the PSNR of predicting the mean training volume for each of them."""
    if not loaders:
        LOG.warning("ctvit: no validation volumes; PSNR/SSIM are not computed")
        return None
    mean_grid = mean_volume(train_set[i][0] for i in range(len(train_set)))  # one pass over the train split
    grids = [load() for load in loaders]
    volumes = torch.stack([torch.from_numpy(np.asarray(g.volume, dtype=np.float32)) for g in grids]).unsqueeze(1)
    return ValidationSet(
        volumes=volumes, hu_window=hu_window,
        baseline_psnr_hu=mean_volume_baseline_psnr(mean_grid, volumes, hu_window),
        spacing_dhw=tuple(getattr(grids[0], "spacing_dhw", (1.0, 1.0, 1.0))),
        ssim_mode=str(params.get("ssim_mode", "slice")), batch_size=int(params.get("batch_size", 4)),
        preview=bool(params.get("preview", True)))


# ---- registration ---------------------------------------------------------------------------------------

def register_ctvit(ctvit_weights: Mapping[str, torch.Tensor], ctvit_training_summary: Mapping[str, Any],
                   params: Mapping[str, Any]) -> dict[str, Any]:
    """Register the weights (safetensors + config JSON) as ``generatect-ctvit`` with alias ``challenger``."""
    from generatect_kedro import registry

    summary = ctvit_training_summary
    registry_params = dict(params.get("registry") or {})
    name = str(registry_params.get("name", MODEL_NAME))
    alias = registry_params.get("alias", registry.CHALLENGER)
    config = {"kind": "ctvit", "format": "safetensors", "model": summary["model_config"],
              "grid_shape": summary["grid_shape"], "token_grid": summary["token_grid"],
              "hu_window": summary["hu_window"], "loss": summary["loss"], "optimizer": summary["optimizer"],
              "steps": summary["steps"]}
    validation = summary.get("validation") or {}
    tags = {
        **run_lineage_tags(),
        "training_run_id": summary.get("mlflow_run_id") or "none (trained outside an MLflow run)",
        "grid_shape": "x".join(str(s) for s in summary["grid_shape"]),
        "token_grid": "x".join(str(s) for s in summary["token_grid"]),
        "perceptual_loss": summary["loss"]["perceptual"],
        "gan_loss": summary["loss"]["gan"],
        "train_steps": summary["steps"],
        "train_volumes": summary["train_volumes"],
        **{f"val_{k}": f"{validation[k]:.4f}" for k in ("psnr_hu", "ssim_hu", "baseline_psnr_hu",
                                                        "codebook_usage") if k in validation},
    }
    with tempfile.TemporaryDirectory(prefix="ctvit-register-") as scratch:
        path = Path(scratch) / "ctvit.safetensors"
        path.write_bytes(state_dict_bytes(ctvit_weights))
        info = registry.register_model(name, path, config, tags, alias=alias, artifact_name="ctvit")
    return {**info, "config": config}


# ---- token cache ----------------------------------------------------------------------------------------

def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def encode_tokens(ctvit_weights: Mapping[str, torch.Tensor], ctvit_model_version: Mapping[str, Any],
                  grids_lowres: Mapping[str, Callable[[], Any]], splits: pd.DataFrame,
                  params: Mapping[str, Any]) -> tuple[dict[str, TokenGrid], pd.DataFrame]:
    """Token ids (t, h, w) of every low-res grid (all splits) under the registered CT-ViT, plus an index.

    The weights must be the registered version's (sha256 check), so cached tokens always name the model
    that made them.
    """
    sha256 = hashlib.sha256(state_dict_bytes(ctvit_weights)).hexdigest()
    if sha256 != ctvit_model_version["weights_sha256"]:
        raise ValueError(f"ctvit weights (sha256 {sha256[:12]}…) are not the registered version "
                         f"{ctvit_model_version['version']} ({ctvit_model_version['weights_sha256'][:12]}…)")
    config = CTViTConfig(**ctvit_model_version["config"]["model"])
    token_params = dict(params.get("tokens") or {})
    device = _device(str(token_params.get("device", "auto")))
    model = CTViT(config)
    model.load_state_dict(dict(ctvit_weights), strict=True)
    model.to(device).eval()
    split_of = dict(zip(splits["volume_id"].astype(str), splits["split"].astype(str)))
    meta = {"ctvit_model": ctvit_model_version["name"], "ctvit_version": str(ctvit_model_version["version"]),
            "ctvit_weights_sha256": sha256, "codebook_size": str(config.codebook_size)}
    volume_ids = sorted(grids_lowres)
    batch_size = int(token_params.get("batch_size", 4))
    tokens: dict[str, TokenGrid] = {}
    rows = []
    for start in range(0, len(volume_ids), batch_size):
        chunk = volume_ids[start:start + batch_size]
        volumes = torch.stack([GridTensors([grids_lowres[v]])[0] for v in chunk])
        ids = model.tokenize(volumes.to(device)).cpu()
        for volume_id, grid in zip(chunk, ids):
            tokens[volume_id] = TokenGrid(grid.numpy().astype(np.int32), dict(meta))
            t, h, w = grid.shape
            rows.append([volume_id, split_of.get(volume_id, ""), t, h, w, config.codebook_size,
                         meta["ctvit_model"], meta["ctvit_version"], sha256])
    LOG.info("ctvit tokens: %d volumes encoded with %s v%s", len(tokens), meta["ctvit_model"],
             meta["ctvit_version"])
    return tokens, pd.DataFrame(rows, columns=TOKEN_INDEX_COLUMNS)
