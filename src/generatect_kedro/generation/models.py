"""The three registered models generation needs, resolved and loaded with their lineage checked.

    models = load_models(ModelRequest(transformer="champion"), text_encoder={"path": "demo:minilm"})

* the transformer is resolved by alias (default ``champion``) or version;
* the CT-ViT that decodes must be the one whose tokens the transformer learnt: by default exactly the version its
  tags name (``ctvit_model``/``ctvit_version``); an explicitly requested CT-ViT with other weights is refused;
* the text encoder must be the one the transformer was trained with (fingerprint of its files), and so must
  the cascade's;
* the cascade (kind ``superres_cascade``) is rebuilt by the registry builder of the superres pipeline.

A missing alias surfaces as the registry's `RegistryError` (it names ``generatect promote``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from generatect_kedro import registry
from generatect_kedro.registry import ModelRef, RegistryError

LOG = logging.getLogger(__name__)

__all__ = ["GenerationError", "LoadedModels", "ModelRequest", "load_models", "model_record", "resolve_device"]

TRANSFORMER = "generatect-transformer"
SUPERRES = "generatect-superres"


class GenerationError(ValueError):
    """Generation cannot run as asked (the message says what to change)."""


@dataclass(frozen=True)
class ModelRequest:
    """Alias or version per model; ``ctvit=None`` means "the CT-ViT the transformer's tokens came from"."""

    transformer: str = registry.CHAMPION
    superres: str = registry.CHAMPION
    ctvit: str | None = None
    transformer_name: str = TRANSFORMER
    superres_name: str = SUPERRES

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> ModelRequest:
        """``generation.models``: ``{transformer: champion, superres: 3, ctvit: null, *_name: …}``."""
        p = {k: v for k, v in dict(params or {}).items() if v is not None}
        unknown = sorted(set(p) - {"transformer", "superres", "ctvit", "transformer_name", "superres_name"})
        if unknown:
            raise GenerationError(f"generation.models: unknown key(s) {', '.join(unknown)}")
        return cls(**{k: str(v) for k, v in p.items()})


@dataclass
class LoadedModels:
    """Modules in eval mode on ``device`` plus the refs and registered configs they came from."""

    ctvit: nn.Module
    transformer: nn.Module
    cascade: nn.Module
    refs: dict[str, ModelRef]  # "ctvit" | "transformer" | "superres"
    configs: dict[str, dict[str, Any]]
    text_encoder: Any  # models.text_encoder.TextEncoder
    text_encoder_info: dict[str, str]
    device: torch.device
    warnings: list[str] = field(default_factory=list)

    @property
    def hu_window(self) -> tuple[float, float]:
        """The window the full-res grids were scaled with (recorded in the cascade's registered config)."""
        return hu_window(self.configs)

    def record(self) -> dict[str, dict[str, Any]]:
        """The sidecar's ``models`` section."""
        return {key: model_record(ref) for key, ref in self.refs.items()}


def model_record(ref: ModelRef) -> dict[str, Any]:
    return {"name": ref.name, "version": ref.version, "requested": ref.requested, "run_id": ref.run_id,
            "training_run_id": ref.tags.get("training_run_id"), "weights_sha256": ref.weights_sha256,
            "model_uri": ref.uri}


def hu_window(configs: Mapping[str, Mapping[str, Any]]) -> tuple[float, float]:
    """The cascade's recorded window; the CT-ViT's and transformer's, where recorded, must agree with it."""
    windows = {key: tuple(float(v) for v in configs[key]["hu_window"]) for key in ("superres", "ctvit", "transformer")
               if configs.get(key, {}).get("hu_window") is not None}
    if not windows:
        LOG.warning("no registered model records its HU window; using (-1000, 1000)")
        return (-1000.0, 1000.0)
    if len(set(windows.values())) > 1:
        raise GenerationError(f"the registered models were trained on grids with different HU windows {windows}; "
                              "re-train them on one preprocessing")
    return windows.get("superres") or next(iter(windows.values()))


def resolve_device(name: str | None) -> torch.device:
    """``auto``: this rank's GPU (``LOCAL_RANK``) when CUDA is available, else the CPU."""
    import os

    name = str(name or "auto")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    if name == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def _register_builders() -> None:
    """Importing the stage pipelines teaches the registry the ``maskgit`` and ``superres_cascade`` kinds."""
    import generatect_kedro.pipelines.superres  # noqa: F401
    import generatect_kedro.pipelines.transformer  # noqa: F401


def _ctvit_ref(transformer: ModelRef, config: Mapping[str, Any], requested: str | None) -> ModelRef:
    recorded = dict(config.get("ctvit") or {})
    name = transformer.tags.get("ctvit_model") or recorded.get("name")
    version = transformer.tags.get("ctvit_version") or recorded.get("version")
    sha256 = transformer.tags.get("ctvit_weights_sha256") or recorded.get("weights_sha256")
    if not (name and version and sha256):
        raise GenerationError(f"{transformer.uri} records no CT-ViT (tags ctvit_model/ctvit_version/"
                              "ctvit_weights_sha256); it was not registered by the transformer pipeline")
    ref = registry.resolve(name, requested if requested is not None else version)
    if ref.weights_sha256 != sha256:
        raise GenerationError(f"{ref.name} {ref.requested!r} (version {ref.version}) has weights "
                              f"{str(ref.weights_sha256)[:12]}…, but {transformer.uri} was trained on tokens of "
                              f"version {version} ({sha256[:12]}…); decoding with another CT-ViT gives garbage. "
                              "Leave the CT-ViT unset to use the transformer's own")
    return ref


def _text_encoder(transformer: ModelRef, config: Mapping[str, Any], settings: Mapping[str, Any] | None):
    """The configured encoder (default: the recorded ``demo:`` path); its fingerprint must be the recorded one."""
    from generatect_kedro.models.text_encoder import TextEncoder, TextEncoderConfig

    recorded = dict(config.get("text_encoder") or {})
    info = {"path": transformer.tags.get("text_encoder_path") or recorded.get("path_name", ""),
            "kind": transformer.tags.get("text_encoder_kind") or recorded.get("kind", ""),
            "fingerprint": transformer.tags.get("text_encoder_fingerprint") or recorded.get("fingerprint", "")}
    values = {k: v for k, v in dict(settings or {}).items() if k in ("path", "kind", "max_length", "device", "dtype")}
    if not values.get("path"):
        if not str(info["path"]).startswith("demo:"):
            raise GenerationError(f"{transformer.uri} was trained with the text encoder folder {info['path']!r}; "
                                  "set generation.text_encoder.path (or transformer.text_encoder.path) to where that "
                                  "folder is on this machine")
        values["path"] = info["path"]
    if recorded.get("max_length") and "max_length" not in values:
        values["max_length"] = int(recorded["max_length"])
    encoder = TextEncoder(TextEncoderConfig.from_params(values))
    if encoder.fingerprint != info["fingerprint"]:
        raise GenerationError(f"the text encoder at {values['path']!r} (fingerprint {encoder.fingerprint[:12]}…) is "
                              f"not the one {transformer.uri} was trained with ({str(info['fingerprint'])[:12]}…)")
    return encoder, info


def load_models(request: ModelRequest | None = None, *, text_encoder: Mapping[str, Any] | None = None,
                device: str | torch.device | None = "cpu") -> LoadedModels:
    """Resolve, check and load CT-ViT, transformer, cascade and text encoder (see the module docstring)."""
    _register_builders()
    request = request or ModelRequest()
    device = device if isinstance(device, torch.device) else resolve_device(device)
    t_ref = registry.resolve(request.transformer_name, request.transformer)
    s_ref = registry.resolve(request.superres_name, request.superres)  # both resolved before any download
    transformer, t_config = registry.load_module(t_ref, device)
    if t_config.get("kind") != "maskgit":
        raise GenerationError(f"{t_ref.uri} is a {t_config.get('kind')!r}, not a maskgit transformer")
    c_ref = _ctvit_ref(t_ref, t_config, request.ctvit)
    ctvit, c_config = registry.load_module(c_ref, device)
    cascade, s_config = registry.load_module(s_ref, device)
    if s_config.get("kind") != "superres_cascade":
        raise GenerationError(f"{s_ref.uri} is a {s_config.get('kind')!r}, not a superres_cascade")
    encoder, info = _text_encoder(t_ref, t_config, text_encoder)
    warnings = []
    s_fingerprint = (s_config.get("text_encoder") or {}).get("fingerprint")
    if s_fingerprint and s_fingerprint != info["fingerprint"]:
        raise GenerationError(f"{s_ref.uri} was trained with another text encoder ({s_fingerprint[:12]}…) than "
                              f"{t_ref.uri} ({info['fingerprint'][:12]}…); register a cascade trained on the same "
                              "prompt embeddings")
    condition = dict(s_config.get("condition") or {})
    if condition.get("condition") == "ctvit_recon" and condition.get("ctvit_weights_sha256") not in (
            None, "", c_ref.weights_sha256):
        warnings.append(f"{s_ref.uri} was trained on reconstructions by {condition.get('ctvit_model')} "
                        f"v{condition.get('ctvit_version')}, not by the decoding {c_ref.name} v{c_ref.version}")
        LOG.warning("%s", warnings[-1])
    low = (s_config.get("grids") or {}).get("lowres")
    image = int(c_config["model"].get("image_size", 0))
    if low and tuple(int(v) for v in low[1:]) != (image, image):
        raise GenerationError(f"{s_ref.uri} upsamples {low[1]}x{low[2]} slices but {c_ref.uri} decodes "
                              f"{image}x{image}")
    configs = {"ctvit": c_config, "transformer": t_config, "superres": s_config}
    hu_window(configs)  # refuse mismatched windows now, not after the first volume
    LOG.info("generation models: %s v%s, %s v%s (CT-ViT), %s v%s (cascade), text encoder %s… on %s",
             t_ref.name, t_ref.version, c_ref.name, c_ref.version, s_ref.name, s_ref.version,
             info["fingerprint"][:12], device)
    return LoadedModels(ctvit=ctvit, transformer=transformer, cascade=cascade,
                        refs={"ctvit": c_ref, "transformer": t_ref, "superres": s_ref}, configs=configs,
                        text_encoder=encoder, text_encoder_info=info, device=torch.device(device), warnings=warnings)


__all__ += ["RegistryError", "hu_window"]
