"""The MLflow Model Registry for GenerateCT's three models: safetensors weights + config JSON, never pickles.

Used by the three training stages and by generation:

    info = register_model("generatect-ctvit", "ctvit.safetensors", config, tags)   # alias "challenger"
    ref = resolve("generatect-ctvit", "champion")        # or a version number, "3"
    state_dict, config = load_weights(ref)               # sha256-checked against the version's tag
    module, config = load_module(ref)                    # built from config["kind"], weights loaded, eval

Each version is an MLflow 3 LoggedModel of the project's pyfunc "model from code" wrapper (a three-line
code file, no pickled object) with the weights and config as its artifacts, linked to the active run (one
is opened when none is, e.g. in a notebook). So ``mlflow.pyfunc.load_model("models:/generatect-ctvit@
challenger")`` works too (CT-ViT: volumes → token ids); it needs this package installed. Every version
carries tags: ``weights_sha256`` and ``training_run_id`` (added here) plus the caller's lineage tags.

MLflow is imported lazily: importing this module (e.g. while Kedro discovers pipelines) stays cheap.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from generatect_kedro.utils.atomic import file_sha256

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "MODEL_COMMANDS",
    "ModelRef",
    "RegistryError",
    "build_module",
    "load_module",
    "load_weights",
    "make_pyfunc_model",
    "register_builder",
    "register_model",
    "resolve",
]

LOG = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
# The command that creates a version of each registered model (quoted in "not found" errors).
MODEL_COMMANDS = {
    "generatect-ctvit": "kedro run --pipelines ctvit",
    "generatect-transformer": "kedro run --pipelines transformer",
    "generatect-superres": "kedro run --pipelines superres",
    "generatect-generator": "generatect register-generator (or kedro run --pipelines generation)",
}
_MAX_TAG_LENGTH = 5000
_PYFUNC_CODE = '''"""GenerateCT registered model (MLflow "model from code"): safetensors weights + config JSON, no pickle."""
from mlflow.models import set_model

from generatect_kedro.registry import make_pyfunc_model

set_model(make_pyfunc_model())
'''


class RegistryError(LookupError):
    """A registered model, version or alias that does not exist, or weights that fail their sha256 check."""


@dataclass(frozen=True)
class ModelRef:
    """One registered model version, as resolved from a name and an alias or version number."""

    name: str
    version: str
    source: str  # the LoggedModel URI (models:/m-…) holding weights and config
    run_id: str | None  # the run that logged (registered) it
    requested: str  # the alias or version asked for
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def weights_sha256(self) -> str | None:
        return self.tags.get("weights_sha256")


# ---- building modules from a config --------------------------------------------------------------------

def _build_ctvit(config: Mapping[str, Any]) -> nn.Module:
    from generatect_kedro.models.ctvit import CTViT, CTViTConfig

    return CTViT(CTViTConfig(**dict(config["model"])))


_BUILDERS: dict[str, Callable[[Mapping[str, Any]], nn.Module]] = {"ctvit": _build_ctvit}


def register_builder(kind: str, builder: Callable[[Mapping[str, Any]], nn.Module]) -> None:
    """Teach `build_module` / `load_module` / the pyfunc wrapper a model kind (``config["kind"]``)."""
    _BUILDERS[kind] = builder


def build_module(config: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised module for a registered config (``config["kind"]`` picks the builder)."""
    kind = config.get("kind")
    if kind not in _BUILDERS:
        raise ValueError(f"no module builder for model kind {kind!r}; known kinds: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[kind](config)


# ---- registering ---------------------------------------------------------------------------------------

def _mlflow():
    import mlflow

    return mlflow


def _pip_requirements() -> list[str]:
    pins = []
    for dist in ("torch", "safetensors", "numpy", "einops", "mlflow"):
        try:
            pins.append(f"{dist}=={importlib_metadata.version(dist).split('+')[0]}")
        except importlib_metadata.PackageNotFoundError:
            pass
    return pins


def _tag_text(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        value = json.dumps(value, sort_keys=True, default=str)
    return ("null" if value is None else str(value))[:_MAX_TAG_LENGTH]


def register_model(name: str, weights_path: str | Path, config: Mapping[str, Any], tags: Mapping[str, Any],
                   alias: str | None = CHALLENGER, *, artifact_name: str | None = None,
                   reuse_identical: bool = True) -> dict[str, Any]:
    """Log weights + config as a LoggedModel of the active run (opened if none), register it, set ``alias``.

    Returns ``{name, version, alias, run_id, model_uri, logged_model_uri, weights_sha256, tags, reused}``.
    With ``reuse_identical``, when ``alias`` already points to a version with the same weights sha256 and
    config (a re-run that resumed a finished training), that version is returned instead of a duplicate.
    """
    mlflow = _mlflow()
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise FileNotFoundError(f"no weights file at {weights_path}")
    sha256 = file_sha256(weights_path)
    if alias and reuse_identical and (same := _identical_version(name, alias, sha256, config)) is not None:
        LOG.info("%s@%s (version %s) already holds these weights (sha256 %s…); not registering a duplicate",
                 name, alias, same["version"], sha256[:12])
        return same
    own_run = mlflow.active_run() is None
    run = mlflow.active_run() or mlflow.start_run(run_name=f"register-{name}")
    try:
        run_id = run.info.run_id
        all_tags = {**{str(k): _tag_text(v) for k, v in tags.items()}, "weights_sha256": sha256}
        all_tags.setdefault("training_run_id", run_id)
        all_tags["registered_from_run_id"] = run_id
        with tempfile.TemporaryDirectory(prefix="generatect-register-") as scratch:
            scratch_path = Path(scratch)
            weights_copy = scratch_path / WEIGHTS_FILE
            shutil.copyfile(weights_path, weights_copy)
            if file_sha256(weights_copy) != sha256:
                raise RegistryError(f"{weights_path} changed while it was being registered")
            config_path = scratch_path / CONFIG_FILE
            config_path.write_text(json.dumps(dict(config), indent=2, sort_keys=True, default=str))
            code_path = scratch_path / "generatect_model.py"
            code_path.write_text(_PYFUNC_CODE)
            info = mlflow.pyfunc.log_model(
                name=artifact_name or name.removeprefix("generatect-"), python_model=str(code_path),
                artifacts={"weights": str(weights_copy), "config": str(config_path)},
                pip_requirements=_pip_requirements(), tags={"weights_sha256": sha256},
            )
            mlflow.log_dict(dict(config), f"{artifact_name or name}/config.json")
        version = mlflow.register_model(info.model_uri, name, tags=all_tags)
        client = mlflow.MlflowClient()
        if alias:
            client.set_registered_model_alias(name, alias, version.version)
    finally:
        if own_run:
            mlflow.end_run()
    LOG.info("registered %s version %s%s (weights sha256 %s…)", name, version.version,
             f" as @{alias}" if alias else "", sha256[:12])
    return {"name": name, "version": str(version.version), "alias": alias, "run_id": run_id,
            "model_uri": f"models:/{name}/{version.version}", "logged_model_uri": info.model_uri,
            "weights_sha256": sha256, "tags": all_tags, "reused": False}


def _identical_version(name: str, alias: str, sha256: str, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The registration info of ``name@alias`` when it has these weights and this config, else None."""
    try:
        ref = resolve(name, alias)
    except RegistryError:
        return None
    if ref.weights_sha256 != sha256:
        return None
    with tempfile.TemporaryDirectory(prefix="generatect-config-") as scratch:
        try:
            registered = json.loads(_download(ref, f"artifacts/{CONFIG_FILE}", Path(scratch)).read_text())
        except Exception:  # unreadable artifacts: register afresh
            return None
    if registered != json.loads(json.dumps(dict(config), sort_keys=True, default=str)):
        return None
    return {"name": name, "version": ref.version, "alias": alias, "run_id": ref.run_id, "model_uri": ref.uri,
            "logged_model_uri": ref.source, "weights_sha256": sha256, "tags": ref.tags, "reused": True}


# ---- resolving and loading -----------------------------------------------------------------------------

def _not_found(name: str, requested: str, client: Any) -> RegistryError:
    command = MODEL_COMMANDS.get(name, "the training pipeline of this model")
    try:
        aliases = sorted(client.get_registered_model(name).aliases)
        known = f"; its aliases: {', '.join(aliases)}" if aliases else "; it has no aliases yet"
    except Exception:  # the registered model itself does not exist
        return RegistryError(f"no registered model {name!r} in the MLflow registry "
                             f"({_mlflow().get_registry_uri()}): train and register one with `{command}`")
    if requested.isdigit():
        return RegistryError(f"{name} has no version {requested}{known}")
    if requested == CHAMPION:
        hint = (f"promote a version with `generatect promote {name} VERSION` (new versions are registered as "
                f"@{CHALLENGER} by `{command}`)")
    else:
        hint = f"`{command}` registers a new version as @{CHALLENGER}"
    return RegistryError(f"{name} has no alias {requested!r}{known}: {hint}")


def resolve(name: str, alias_or_version: str | int) -> ModelRef:
    """The registered version an alias (``challenger``, ``champion``…) or a version number points to."""
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    requested = str(alias_or_version)
    try:
        if requested.isdigit():
            version = client.get_model_version(name, requested)
        else:
            version = client.get_model_version_by_alias(name, requested)
    except mlflow.exceptions.MlflowException as error:
        raise _not_found(name, requested, client) from error
    return ModelRef(name=name, version=str(version.version), source=version.source, run_id=version.run_id,
                    requested=requested, aliases=tuple(getattr(version, "aliases", ()) or ()),
                    tags=dict(version.tags or {}))


def _download(ref: ModelRef, relative: str, destination: Path) -> Path:
    """One file of the version's LoggedModel (its store location, not ``models:/m-…/path``, which MLflow
    would read as a registered model name)."""
    mlflow = _mlflow()
    root = mlflow.MlflowClient().get_model_version_download_uri(ref.name, ref.version)
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"{root.rstrip('/')}/{relative}",
                                                dst_path=str(destination))
    return Path(local)


def load_weights(ref: ModelRef) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Download a version's weights and config; the weights must match the version's ``weights_sha256`` tag."""
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory(prefix="generatect-load-") as scratch:
        weights = _download(ref, f"artifacts/{WEIGHTS_FILE}", Path(scratch))
        config = json.loads(_download(ref, f"artifacts/{CONFIG_FILE}", Path(scratch)).read_text())
        actual = file_sha256(weights)
        if ref.weights_sha256 is None:
            raise RegistryError(f"{ref.uri} has no weights_sha256 tag; it was not registered by register_model")
        if actual != ref.weights_sha256:
            raise RegistryError(f"{ref.uri}: downloaded weights have sha256 {actual}, the registry recorded "
                                f"{ref.weights_sha256}; the artifact store was modified")
        state_dict = load_file(str(weights))
    return state_dict, config


def load_module(ref: ModelRef, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The registered module, weights loaded strictly, in eval mode on ``device``."""
    state_dict, config = load_weights(ref)
    module = build_module(config)
    module.load_state_dict(state_dict, strict=True)
    return module.to(device).eval(), config


# ---- the pyfunc wrapper ("model from code") ------------------------------------------------------------

def make_pyfunc_model() -> Any:
    """The `mlflow.pyfunc.PythonModel` that serves a registered GenerateCT model (built here, not pickled)."""
    import mlflow.pyfunc
    import numpy as np

    class GenerateCTModel(mlflow.pyfunc.PythonModel):
        """CT-ViT: predict((b, D, H, W) or (D, H, W) grids in [-1, 1]) → (b, t, h, w) int64 token ids.

        Generator (kind ``generator``, `generatect_kedro.serving`): predict(records with a prompt) → one dict
        per record with the int16 HU volume (base64) and its lineage; the pinned component versions are
        loaded here once, from the registry of ``MLFLOW_TRACKING_URI``.
        """

        def load_context(self, context: Any) -> None:
            from safetensors.torch import load_file

            self.config = json.loads(Path(context.artifacts["config"]).read_text())
            if self.config.get("kind") == "generator":
                from generatect_kedro.serving import GeneratorService

                self.service = GeneratorService(self.config, context.artifacts["weights"])
                return
            self.module = build_module(self.config)
            self.module.load_state_dict(load_file(context.artifacts["weights"]), strict=True)
            self.module.eval()

        def predict(self, context, model_input, params=None):  # noqa: ANN001, ARG002 - hints become a schema
            if self.config.get("kind") == "generator":
                return self.service.predict(model_input)
            if self.config.get("kind") != "ctvit":
                raise NotImplementedError(f"pyfunc predict is not defined for {self.config.get('kind')!r}; "
                                          "use generatect_kedro.registry.load_module")
            volumes = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
            if volumes.ndim == 3:
                volumes = volumes.unsqueeze(0)
            with torch.no_grad():
                return self.module.tokenize(volumes.unsqueeze(1)).cpu().numpy()

    return GenerateCTModel()
