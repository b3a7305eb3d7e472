"""Tiny inputs for the super-resolution tests: grids, a CT-ViT and its version record, prompt embeddings, params.

Also imported by `run_deepspeed_superres.py` (a subprocess), so nothing here needs pytest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from generatect_kedro.cohort.grids import GridVolume
from generatect_kedro.io.embedding_dataset import PromptEmbedding
from generatect_kedro.io.safetensors_model import state_dict_bytes

DEPTH, LOW, FULL = 5, 8, 32  # two x2 stages: 8 -> 16 -> 32
TEXT_DIM = 12
IDS = [f"vol-{i:02d}" for i in range(6)]
CTVIT_MODEL = dict(dim=16, codebook_size=16, image_size=LOW, patch_size=4, temporal_patch_size=2, spatial_depth=1,
                   temporal_depth=1, dim_head=8, heads=2)
UNET = dict(dim=8, dim_mults=[1, 2], num_resnet_blocks=1, cond_dim=16, attn_heads=2, attn_dim_head=8,
            mid_attn_heads=2, mid_attn_dim_head=8, max_text_len=8, attn_pool_num_latents=4, attn_pool_max_seq_len=16,
            attn_pool_depth=1, resnet_groups=4)


def full_grid(seed: int) -> GridVolume:
    """A bright disc 'body' with a dark 'lung' and a few dense dots, in air: edges, i.e. high frequencies."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(-1, 1, FULL), np.linspace(-1, 1, FULL), indexing="ij")
    body = (y / rng.uniform(0.6, 0.9)) ** 2 + (x / rng.uniform(0.7, 0.95)) ** 2 < 1
    lung = ((y - rng.uniform(-0.2, 0.2)) / 0.35) ** 2 + ((x - 0.3) / 0.25) ** 2 < 1
    slices = []
    for d in range(DEPTH):
        dots = np.zeros((FULL, FULL), dtype=bool)
        for _ in range(3):
            cy, cx = rng.integers(6, FULL - 6, 2)
            dots[cy - 1:cy + 1, cx - 1:cx + 1] = True
        slices.append(np.where(body, 0.05, -1.0) + np.where(lung, -0.8, 0.0) + np.where(dots & body, 0.6, 0.0)
                      + 0.02 * d)
    volume = np.clip(np.stack(slices) + rng.normal(0, 0.01, (DEPTH, FULL, FULL)), -1, 1).astype(np.float32)
    return GridVolume(volume, np.diag([2.0, 2.0, 6.0, 1.0]))


def low_grid(full: GridVolume) -> GridVolume:
    volume = F.interpolate(torch.from_numpy(full.volume)[None], size=(LOW, LOW), mode="area")[0].numpy()
    return GridVolume(volume, np.diag([8.0, 8.0, 6.0, 1.0]))


def grids() -> tuple[dict[str, GridVolume], dict[str, GridVolume]]:
    fulls = {v: full_grid(i) for i, v in enumerate(IDS)}
    return {v: low_grid(g) for v, g in fulls.items()}, fulls


def loaders(values: dict[str, Any]) -> dict[str, Any]:
    """What a PartitionedDataset gives a node: {partition: load function}."""
    return {key: (lambda value=value: value) for key, value in values.items()}


def splits() -> pd.DataFrame:
    return pd.DataFrame({"volume_id": IDS, "patient_key": [f"p{i}" for i in range(6)],
                         "split": ["train"] * 3 + ["valid"] * 2 + ["test"]})


def ctvit() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Random tiny CT-ViT weights and the version record the ctvit pipeline would have written."""
    from generatect_kedro.models.ctvit import CTViT, CTViTConfig

    torch.manual_seed(0)
    weights = CTViT(CTViTConfig(**CTVIT_MODEL)).state_dict()
    sha = hashlib.sha256(state_dict_bytes(weights)).hexdigest()
    return weights, {"name": "generatect-ctvit", "version": "7", "weights_sha256": sha,
                     "config": {"kind": "ctvit", "model": CTVIT_MODEL}}


def prompts() -> tuple[dict[str, Any], pd.DataFrame]:
    """Two prompts (embeddings of different lengths) shared by the volumes, and the prompt index."""
    rng = np.random.default_rng(3)
    meta = {"encoder_kind": "bert", "max_length": "64"}
    embeddings = {"aaaa": PromptEmbedding(rng.normal(size=(5, TEXT_DIM)).astype(np.float32), meta=meta),
                  "bbbb": PromptEmbedding(rng.normal(size=(7, TEXT_DIM)).astype(np.float32), meta=meta)}
    index = pd.DataFrame({"volume_id": IDS, "prompt_key": ["aaaa", "bbbb"] * 3, "n_tokens": [5, 7] * 3,
                          "encoder_fingerprint": "f" * 64})
    return loaders(embeddings), index


def params(tmp_path: Path, **trainer: Any) -> dict[str, Any]:
    return {
        "condition": "ctvit_recon",
        "slices_per_item": 2,
        "pairs": {"splits": ["train", "valid"], "batch_size": 4, "device": "cpu"},
        "unet": UNET,
        "stages": [
            {"scale": 2, "sampler": "dpm++2m", "steps": 2},
            {"scale": 2, "sampler": "ancestral", "steps": 2, "crop": 16},
        ],
        "loss": {"cond_drop_prob": 0.1},
        "optimizer": {"lr": 1e-3},
        "ema": {"beta": 0.9, "update_every": 1},
        "trainer": {"backend": "single", "device": "cpu", "max_steps": 2, "batch_size": 2, "log_every": 1,
                    "validate_every": 2, "show_progress": False, "seed": 1, "grad_clip": 1.0,
                    "checkpoint_dir": str(tmp_path / "checkpoints"), "checkpoint_every": 2, **trainer},
        "validation": {"max_volumes": 2, "slices_per_volume": 1, "preview_slices": 2},
        "evaluation": {"max_volumes": 2, "slice_batch_size": 3, "device": "cpu", "preview_volumes": 2},
        "registry": {"name": "generatect-superres", "alias": "challenger"},
    }
