"""Transformer stage nodes: train MaskGIT on cached tokens + prompt embeddings, register it, prove conditioning.

Nodes are functions of data and parameters (``params:transformer``, see conf/base/parameters_transformer.yml).
Prompt embeddings come from `generatect_kedro.text.embed_prompts` (wired in pipeline.py); nothing here runs
the CT-ViT encoder or the text encoder on training data. The CT-ViT that decodes previews and probe samples
is the registered version the cached tokens name (`registry.resolve` + `load_module`), so lineage is real.
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

import pandas as pd
import torch

from generatect_kedro import registry
from generatect_kedro.io.safetensors_model import cpu_state_dict, state_dict_bytes
from generatect_kedro.models.maskgit import MaskGIT, MaskGITConfig
from generatect_kedro.models.maskgit_sampling import MaskGITSamplerConfig
from generatect_kedro.models.token_critic import TokenCritic, critic_config
from generatect_kedro.pipelines.transformer.task import (
    MaskGITTask,
    OptimizerSettings,
    Preview,
    TokenTextDataset,
    collate_token_text,
)
from generatect_kedro.text.prompt_cache import embedding_loaders, pad_embeddings
from generatect_kedro.training import Trainer, TrainerConfig
from generatect_kedro.training.tracking import active_mlflow, checkpoint_step, run_lineage_tags
from generatect_kedro.utils.plain import plain

LOG = logging.getLogger(__name__)

MODEL_NAME = "generatect-transformer"


# ---- inputs and parameters --------------------------------------------------------------------------------

def ctvit_lineage(token_index: pd.DataFrame) -> dict[str, str]:
    """The one registered CT-ViT (name, version, weights sha256, codebook size) all cached tokens came from."""
    columns = ["ctvit_model", "ctvit_version", "ctvit_weights_sha256", "codebook_size"]
    sources = token_index[columns].astype(str).drop_duplicates()
    if len(sources) != 1:
        raise ValueError(f"cached tokens come from {len(sources)} CT-ViT versions; re-run `kedro run --pipelines "
                         "ctvit` so that every volume is encoded by the same registered model")
    row = sources.iloc[0]
    return {"name": row["ctvit_model"], "version": row["ctvit_version"], "weights_sha256":
            row["ctvit_weights_sha256"], "codebook_size": row["codebook_size"]}


def grid_shape(token_index: pd.DataFrame) -> tuple[int, int, int]:
    shapes = token_index[["t", "h", "w"]].drop_duplicates()
    if len(shapes) != 1:
        raise ValueError(f"cached token grids have {len(shapes)} different shapes; MaskGIT trains on one grid")
    return tuple(int(v) for v in shapes.iloc[0])  # type: ignore[return-value]


def maskgit_config(params: Mapping[str, Any], codebook_size: int) -> MaskGITConfig:
    """``transformer.model`` with ``num_tokens`` taken from the CT-ViT codebook (a set value must agree)."""
    model = dict(params.get("model") or {})
    if model.setdefault("num_tokens", codebook_size) != codebook_size:
        raise ValueError(f"transformer.model.num_tokens {model['num_tokens']} differs from the CT-ViT codebook "
                         f"size {codebook_size}; leave it unset")
    return MaskGITConfig(**model)


def sampler_config(params: Mapping[str, Any]) -> MaskGITSamplerConfig:
    return MaskGITSamplerConfig(**dict(params.get("sampler") or {}))


def text_encoder_info(params: Mapping[str, Any], fingerprint: str, meta: Mapping[str, str]) -> dict[str, str]:
    """What the registry records of the text encoder: fingerprint, kind, dimension and the folder's *name*
    (never the full path, which may name a user)."""
    path = str((params.get("text_encoder") or {}).get("path") or "")
    return {"fingerprint": fingerprint, "kind": str(meta.get("encoder_kind", "unknown")),
            "path_name": path if path.startswith("demo:") else Path(path).name,
            "dim": str(meta.get("dim", "")), "max_length": str(meta.get("max_length", ""))}


def _split_ids(token_index: pd.DataFrame, text: Mapping[str, Any], splits: pd.DataFrame, name: str) -> list[str]:
    wanted = set(splits.loc[splits["split"].astype(str) == name, "volume_id"].astype(str))
    usable = wanted & set(token_index["volume_id"].astype(str)) & set(text)
    if len(usable) < len(wanted):
        LOG.warning("%d %s volumes have no cached tokens or prompt embedding and are skipped",
                    len(wanted) - len(usable), name)
    return sorted(usable)


def load_ctvit(lineage: Mapping[str, str], device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """The registered CT-ViT the tokens came from; its weights must be the ones the tokens name."""
    ref = registry.resolve(lineage["name"], lineage["version"])
    if ref.weights_sha256 != lineage["weights_sha256"]:
        raise registry.RegistryError(f"{ref.uri} has weights {ref.weights_sha256}, but the cached tokens were "
                                     f"made by {lineage['weights_sha256']}; re-run the ctvit pipeline")
    return registry.load_module(ref, device)


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _run_id() -> str | None:
    mlflow = active_mlflow()
    return mlflow.active_run().info.run_id if mlflow is not None else None


# ---- training ---------------------------------------------------------------------------------------------

def train_transformer(ctvit_tokens: Mapping[str, Callable[[], Any]], ctvit_token_index: pd.DataFrame,
                      prompt_embeddings: Mapping[str, Callable[[], Any]], prompt_index: pd.DataFrame,
                      splits: pd.DataFrame, cohort: pd.DataFrame, params: Mapping[str, Any],
                      ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train MaskGIT (and optionally its token critic) on the train split's cached tokens and embeddings.

    Returns the state dict (critic under ``critic.*``) and a JSON summary. Checkpoints go to
    ``<trainer.checkpoint_dir>/<digest>``, the digest covering model, objective, optimizer, training set and
    the CT-ViT/text-encoder versions, so a re-run resumes only a compatible run.
    """
    started = time.perf_counter()
    lineage = ctvit_lineage(ctvit_token_index)
    grid = grid_shape(ctvit_token_index)
    text_loaders, fingerprint = embedding_loaders(prompt_index, prompt_embeddings)
    config = maskgit_config(params, int(lineage["codebook_size"]))
    if grid[0] * grid[1] * grid[2] > config.max_seq_len:
        raise ValueError(f"token grid {grid} exceeds transformer.model.max_seq_len {config.max_seq_len}")
    optimizer = OptimizerSettings.from_params(params.get("optimizer"))
    objective = dict(params.get("objective") or {})
    cond_drop_prob = float(objective.get("cond_drop_prob", 0.1))
    levels, schedule = int(objective.get("levels", 18)), str(objective.get("mask_schedule", "discrete"))
    sampler = sampler_config(params)
    critic_params = dict(params.get("critic") or {})
    critic_cfg = (critic_config(config, **dict(critic_params.get("model") or {"depth": 2}))
                  if critic_params.get("enabled") else None)

    train_ids = _split_ids(ctvit_token_index, text_loaders, splits, str(params.get("train_split", "train")))
    validation_params = dict(params.get("validation") or {})
    valid_ids = _split_ids(ctvit_token_index, text_loaders, splits, str(validation_params.get("split", "valid")))
    valid_ids = valid_ids[: int(validation_params.get("max_volumes", 64))]
    if not train_ids:
        raise ValueError("no training volumes: no 'train' volume has both cached tokens and a prompt embedding")
    cache = bool(params.get("cache_data", False))
    train_set = TokenTextDataset([ctvit_tokens[v] for v in train_ids], [text_loaders[v] for v in train_ids], cache)
    encoder = text_encoder_info(params, fingerprint, text_loaders[train_ids[0]]().meta)
    LOG.info("transformer: %d train / %d valid volumes, token grid %s, codebook %s (%s v%s), text %s %s-d, "
             "cond_drop_prob %.2f, critic %s", len(train_ids), len(valid_ids), grid, lineage["codebook_size"],
             lineage["name"], lineage["version"], encoder["kind"], encoder["dim"], cond_drop_prob,
             "on" if critic_cfg else "off")

    trainer_params = dict(params["trainer"])
    torch.manual_seed(int(trainer_params.get("seed", 0)))  # module initialisation
    maskgit = MaskGIT(config)
    critic = TokenCritic(critic_cfg) if critic_cfg is not None else None
    valid_set = TokenTextDataset([ctvit_tokens[v] for v in valid_ids], [text_loaders[v] for v in valid_ids], False)
    validation = collate_token_text([valid_set[i] for i in range(len(valid_set))]) if valid_ids else None
    preview = _preview(params, lineage, valid_ids, ctvit_tokens, text_loaders, cohort, sampler)
    task = MaskGITTask(maskgit, optimizer, int(trainer_params["max_steps"]), cond_drop_prob=cond_drop_prob,
                       levels=levels, schedule=schedule, critic=critic, validation=validation,
                       validation_seed=int(validation_params.get("seed", 0)),
                       validation_repeats=int(validation_params.get("repeats", 4)), preview=preview,
                       preview_every=int((params.get("preview") or {}).get("every", 0)))

    identity = _digest({"model": config.to_dict(), "critic": critic_cfg and critic_cfg.to_dict(),
                        "optimizer": repr(optimizer), "objective": [cond_drop_prob, levels, schedule],
                        "train_ids": train_ids, "ctvit": lineage, "text_encoder": fingerprint,
                        # a cosine schedule's horizon shapes the whole trajectory
                        "horizon": trainer_params["max_steps"] if optimizer.decay == "cosine" else None})
    if trainer_params.get("checkpoint_dir"):
        trainer_params["checkpoint_dir"] = str(Path(trainer_params["checkpoint_dir"]) / identity)
    trainer_config = TrainerConfig.from_params(trainer_params, source="transformer.trainer")
    result = Trainer(trainer_config, name="transformer").fit(task, train_set, collate_token_text)
    if task.last_validation is None and validation is not None:  # resumed an already finished run
        task.validate(result.step)
    task.log_previews(result.step)  # no-op when the last step already logged them

    weights = cpu_state_dict(maskgit)
    if critic is not None:
        weights.update(cpu_state_dict(critic, prefix="critic."))
    summary = {
        "model": MODEL_NAME,
        "steps": result.step,
        "resumed_from_step": checkpoint_step(result.resumed_from),
        "checkpoint_dir": trainer_params.get("checkpoint_dir"),
        "train_volumes": len(train_ids),
        "valid_volumes": len(valid_ids),
        "grid_shape": list(grid),
        "model_config": config.to_dict(),
        "critic_config": critic_cfg.to_dict() if critic_cfg is not None else None,
        "objective": {"cond_drop_prob": cond_drop_prob, "levels": levels, "mask_schedule": schedule},
        "optimizer": {"lr": optimizer.lr, "betas": list(optimizer.betas), "weight_decay": optimizer.weight_decay,
                      "warmup_steps": optimizer.warmup_steps, "decay": optimizer.decay,
                      "final_lr_ratio": optimizer.final_lr_ratio, "grad_clip": trainer_config.grad_clip,
                      "batch_size": trainer_config.batch_size},
        "sampler": plain(sampler.__dict__),
        "ctvit": lineage,
        "text_encoder": encoder,
        "hu_window": list(preview.hu_window) if preview is not None else None,
        "final_train_metrics": result.metrics,
        "validation": task.last_validation,
        "previews": list(preview.logged) if preview is not None else [],
        "parameters": sum(p.numel() for p in maskgit.parameters()),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "mlflow_run_id": _run_id(),
    }
    return weights, summary


def _preview(params: Mapping[str, Any], lineage: Mapping[str, str], valid_ids: list[str],
             tokens: Mapping[str, Callable[[], Any]], text: Mapping[str, Callable[[], Any]],
             cohort: pd.DataFrame, sampler: MaskGITSamplerConfig) -> Preview | None:
    """Distinct validation prompts to sample during training, decoded by the registered CT-ViT (or None)."""
    preview_params = dict(params.get("preview") or {})
    count = int(preview_params.get("num_prompts", 2))
    if count <= 0 or not valid_ids:
        return None
    prompts = dict(zip(cohort["volume_id"].astype(str), cohort["prompt"].astype(str)))
    chosen, seen = [], set()
    for volume_id in valid_ids:
        if volume_id in prompts and prompts[volume_id] not in seen and len(chosen) < count:
            chosen.append(volume_id)
            seen.add(prompts[volume_id])
    if not chosen:
        return None
    try:
        ctvit, ctvit_config = load_ctvit(lineage)
    except Exception as error:  # previews are optional; training is not
        LOG.warning("transformer previews disabled: cannot load the CT-ViT %s v%s (%s)", lineage["name"],
                    lineage["version"], error)
        return None
    embeds, mask = pad_embeddings([text[v]() for v in chosen])
    reference = torch.stack([torch.from_numpy(tokens[v]().ids.astype("int64")) for v in chosen])
    return Preview(ctvit=ctvit, prompts=[prompts[v] for v in chosen], text=embeds, text_mask=mask,
                   reference_ids=reference, sampler=sampler, seed=int(preview_params.get("seed", 0)),
                   hu_window=tuple(float(v) for v in ctvit_config.get("hu_window", (-1000, 1000))),
                   spacing_dhw=tuple(float(v) for v in preview_params.get("spacing_dhw", (1.0, 1.0, 1.0))))


# ---- registration -----------------------------------------------------------------------------------------

def register_transformer(transformer_weights: Mapping[str, torch.Tensor],
                         transformer_training_summary: Mapping[str, Any], ctvit_model_version: Mapping[str, Any],
                         prompt_index: pd.DataFrame, params: Mapping[str, Any]) -> dict[str, Any]:
    """Register the weights (safetensors + config JSON) as ``generatect-transformer`` with alias ``challenger``.

    The tokens must come from the CT-ViT version the ctvit stage registered, and the prompt index from the
    encoder the model was trained with; otherwise the lineage would be false and this raises.
    """
    summary = transformer_training_summary
    ctvit = summary["ctvit"]
    for key in ("name", "version", "weights_sha256"):
        if str(ctvit_model_version[key]) != str(ctvit[key]):
            raise ValueError(f"the transformer was trained on tokens of {ctvit['name']} v{ctvit['version']}, but the "
                             f"registered CT-ViT is {ctvit_model_version['name']} v{ctvit_model_version['version']}"
                             "; re-run the ctvit pipeline (it re-encodes the tokens) and then this one")
    encoder = summary["text_encoder"]
    if set(prompt_index["encoder_fingerprint"].astype(str)) != {encoder["fingerprint"]}:
        raise ValueError("the prompt index was made by another text encoder than the one the transformer was "
                         "trained with; re-run the transformer pipeline")
    registry_params = dict(params.get("registry") or {})
    name = str(registry_params.get("name", MODEL_NAME))
    alias = registry_params.get("alias", registry.CHALLENGER)
    config = {"kind": "maskgit", "format": "safetensors", "model": summary["model_config"],
              "critic": summary.get("critic_config"), "grid_shape": summary["grid_shape"],
              "sampler": summary["sampler"], "objective": summary["objective"], "text_encoder": encoder,
              "ctvit": {k: ctvit[k] for k in ("name", "version", "weights_sha256")},
              "hu_window": summary.get("hu_window"), "optimizer": summary["optimizer"], "steps": summary["steps"]}
    validation = summary.get("validation") or {}
    sampler = summary["sampler"]
    tags = {
        **run_lineage_tags(),
        "training_run_id": summary.get("mlflow_run_id") or "none (trained outside an MLflow run)",
        "ctvit_model": ctvit["name"], "ctvit_version": ctvit["version"],
        "ctvit_weights_sha256": ctvit["weights_sha256"],
        "text_encoder_fingerprint": encoder["fingerprint"], "text_encoder_kind": encoder["kind"],
        "text_encoder_path": encoder["path_name"], "text_encoder_dim": encoder["dim"],
        "cond_drop_prob": summary["objective"]["cond_drop_prob"],
        "sampler_steps": sampler["steps"], "sampler_cond_scale": sampler["cond_scale"],
        "sampler_temperature": sampler["temperature"],
        "token_critic": "on" if summary.get("critic_config") else "off",
        "grid_shape": "x".join(str(s) for s in summary["grid_shape"]),
        "train_steps": summary["steps"], "train_volumes": summary["train_volumes"],
        **{f"val_{k}": f"{validation[k]:.4f}" for k in ("loss", "masked_accuracy", "null_loss", "text_gain")
           if k in validation},
    }
    with tempfile.TemporaryDirectory(prefix="transformer-register-") as scratch:
        path = Path(scratch) / "transformer.safetensors"
        path.write_bytes(state_dict_bytes(transformer_weights))
        info = registry.register_model(name, path, config, tags, alias=alias, artifact_name="transformer")
    return {**info, "config": config}
