"""Tiny registered models for the generation tests: CT-ViT (16x16 slices, 2x2 tokens), MaskGIT (MiniLM text),
a one-stage x2 cascade; all in a temporary SQLite MLflow registry. Also a stand-in writer.

Imported by tests/generation/* and by the torchrun worker (a subprocess), so nothing here needs pytest.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from generatect_kedro import registry
from generatect_kedro.io.safetensors_model import state_dict_bytes
from generatect_kedro.models.ctvit import CTViT, CTViTConfig
from generatect_kedro.models.maskgit import MaskGIT, MaskGITConfig
from generatect_kedro.models.text_encoder import DEMO_ENCODER, default_demo_encoder_path, encoder_fingerprint
from generatect_kedro.models.unet import UNet, UNetConfig
from generatect_kedro.utils.atomic import atomic_write_text
from generatect_kedro.volume import HUVolume

CODEBOOK = 32
CTVIT = dict(dim=32, codebook_size=CODEBOOK, image_size=16, patch_size=8, temporal_patch_size=2, spatial_depth=1,
             temporal_depth=1, dim_head=8, heads=2)
MASKGIT = dict(num_tokens=CODEBOOK, dim=32, dim_context=384, depth=1, heads=2, dim_head=16, max_seq_len=20)
UNET = dict(dim=8, dim_mults=[1, 2], num_resnet_blocks=1, text_embed_dim=384, cond_dim=16, attn_heads=2,
            attn_dim_head=8, mid_attn_heads=2, mid_attn_dim_head=8, max_text_len=32, attn_pool_num_latents=4,
            attn_pool_max_seq_len=32, attn_pool_depth=1, resnet_groups=4)
HU_WINDOW = [-1000.0, 1000.0]
MODELS = ("generatect-ctvit", "generatect-transformer", "generatect-superres")


def use_registry(root: Path) -> str:
    """Point MLflow at a SQLite file under ``root`` (artifacts beside it); returns the tracking URI."""
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    name = "generation-test"
    if mlflow.get_experiment_by_name(name) is None:
        mlflow.create_experiment(name, artifact_location=(root / "artifacts").as_uri())
    mlflow.set_experiment(name)
    return uri


def _save(root: Path, name: str, module: torch.nn.Module) -> Path:
    path = root / f"{name}.safetensors"
    path.write_bytes(state_dict_bytes({k: v.contiguous() for k, v in module.state_dict().items()}))
    return path


def register_tiny_models(root: Path, alias: str | None = "champion", critic: bool = False) -> dict[str, Any]:
    """Register the three tiny models (seeded weights) and give each ``alias``; returns the registration infos."""
    torch.manual_seed(0)
    fingerprint = encoder_fingerprint(default_demo_encoder_path())
    ctvit = CTViT(CTViTConfig(**CTVIT))
    c_info = registry.register_model("generatect-ctvit", _save(root, "ctvit", ctvit),
                                     {"kind": "ctvit", "model": CTVIT, "hu_window": HU_WINDOW}, {}, alias=alias)
    maskgit_config = MaskGITConfig(**MASKGIT)
    maskgit = MaskGIT(maskgit_config)
    text = {"fingerprint": fingerprint, "kind": "bert", "path_name": DEMO_ENCODER, "dim": "384", "max_length": "256"}
    ctvit_lineage = {"name": c_info["name"], "version": c_info["version"], "weights_sha256": c_info["weights_sha256"]}
    img, hw = CTVIT["image_size"], CTVIT["image_size"] // CTVIT["patch_size"]
    t_config = {"kind": "maskgit", "model": asdict(maskgit_config), "critic": None, "grid_shape": [3, hw, hw],
                "sampler": {"steps": 3, "temperature": 0.9, "cond_scale": 3.0}, "text_encoder": text,
                "ctvit": ctvit_lineage, "hu_window": HU_WINDOW}
    t_tags = {"ctvit_model": c_info["name"], "ctvit_version": c_info["version"],
              "ctvit_weights_sha256": c_info["weights_sha256"], "text_encoder_fingerprint": fingerprint,
              "text_encoder_kind": "bert", "text_encoder_path": DEMO_ENCODER, "dvc_lock_sha256": "d" * 64}
    t_info = registry.register_model("generatect-transformer", _save(root, "transformer", maskgit), t_config,
                                     t_tags, alias=alias)
    unet = UNet(UNetConfig(**UNET))
    stage = {"unet": UNET, "scale": 2, "sampler": "dpm++2m", "steps": 2, "lowres_noise_level": 0.1, "cond_scale": 1.0,
             "resize_mode": "nearest", "input_hw": [img, img], "output_hw": [2 * img, 2 * img]}
    s_config = {"kind": "superres_cascade", "stages": [stage], "grids": {"lowres": [5, img, img], "fullres": [5, 2 * img, 2 * img]},
                "condition": {"condition": "ctvit_recon", **{f"ctvit_{k}": v for k, v in
                                                             (("model", c_info["name"]), ("version", c_info["version"]),
                                                              ("weights_sha256", c_info["weights_sha256"]))}},
                "text_encoder": {"fingerprint": fingerprint, "kind": "bert", "dim": 384}, "hu_window": HU_WINDOW}
    weights = {f"unets.0.{k}": v.contiguous() for k, v in unet.state_dict().items()}
    path = root / "superres.safetensors"
    path.write_bytes(state_dict_bytes(weights))
    s_info = registry.register_model("generatect-superres", path, s_config, {}, alias=alias)
    return {"ctvit": c_info, "transformer": t_info, "superres": s_info}


def grid_index(n: int = 5) -> Any:
    import pandas as pd

    return pd.DataFrame({"volume_id": [f"v{i}" for i in range(n)], "fullres_spacing_d": [3.0, 2.0, 2.0, 2.5, 2.0],
                         "fullres_spacing_h": [0.8] * n, "fullres_spacing_w": [0.7, 0.7, 0.9, 0.7, 0.8]})


def stand_in_writer(volume: HUVolume, record: dict, out_dir: Path, stem: str, *, dicom: bool = False,
                    preview: bool = True) -> dict[str, str]:
    """The writer contract (generation/outputs.py), minimally: NIfTI then, last, the sidecar; both atomic."""
    import nibabel as nib

    from generatect_kedro.utils.atomic import atomic_path, file_sha256

    out_dir = Path(out_dir)
    nifti = out_dir / f"{stem}.nii.gz"
    with atomic_path(nifti, suffix=".nii.gz") as tmp:
        nib.save(nib.Nifti1Image(np.asarray(volume.data, dtype=np.int16), volume.affine), str(tmp))
    sidecar = out_dir / f"{stem}.json"
    payload = {**record, "volume": {"nifti": nifti.name, "sha256": file_sha256(nifti), "shape": list(volume.shape),
                                    "spacing": list(volume.spacing), "affine": np.asarray(volume.affine).tolist()}}
    atomic_write_text(sidecar, json.dumps(payload, indent=2, sort_keys=True, default=str))
    return {"nifti": str(nifti), "sidecar": str(sidecar)}


def set_threads() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
