"""The project's promotion settings read as Kedro reads them: gates and the MLflow URIs for an env."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generatect_kedro.promotion.gates import Gate, parse_gates

__all__ = ["ProjectPromotionConfig", "load_project_config"]


@dataclass(frozen=True)
class ProjectPromotionConfig:
    """Gates per registered model, and the tracking/registry URIs, of one project + env."""

    gates: dict[str, list[Gate]]
    tracking_uri: str
    registry_uri: str

    def gates_for(self, name: str) -> list[Gate]:
        return self.gates.get(name, [])


def load_project_config(project_dir: str | os.PathLike, env: str | None = None) -> ProjectPromotionConfig:
    """conf/base + conf/<env> (default ``local``) through the project's OmegaConfigLoader settings.

    ``MLFLOW_TRACKING_URI`` (and ``MLFLOW_REGISTRY_URI``), when set, win over ``conf/*/mlflow.yml``.
    """
    from kedro.config import OmegaConfigLoader

    from generatect_kedro.settings import CONFIG_LOADER_ARGS

    project = Path(project_dir).resolve()
    args = {**CONFIG_LOADER_ARGS, "custom_resolvers": {**CONFIG_LOADER_ARGS.get("custom_resolvers", {}),
                                                       "project_dir": lambda: project.as_posix()}}
    loader = OmegaConfigLoader(str(project / "conf"), env=env, **args)
    try:
        raw: dict[str, Any] = dict(((loader["parameters"] or {}).get("promotion") or {}).get("gates") or {})
    except Exception as error:  # MissingConfigException: no parameters at all
        raise ValueError(f"cannot read the parameters in {project / 'conf'} (env {env or 'local'}): {error}") from error
    if not raw:
        raise ValueError(f"no promotion gates in {project / 'conf'} (base or env {env or 'local'}): "
                         "set promotion.gates in conf/base/parameters_promotion.yml")
    gates = {str(name): parse_gates(entries, str(name)) for name, entries in raw.items()}
    server = dict((loader["mlflow"] or {}).get("server") or {})
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or server.get("mlflow_tracking_uri")
    if not tracking:
        raise ValueError(f"no MLflow tracking URI: set MLFLOW_TRACKING_URI or server.mlflow_tracking_uri in "
                         f"{project / 'conf'}/*/mlflow.yml")
    registry = os.environ.get("MLFLOW_REGISTRY_URI") or server.get("mlflow_registry_uri") or tracking
    return ProjectPromotionConfig(gates=gates, tracking_uri=str(tracking), registry_uri=str(registry))
