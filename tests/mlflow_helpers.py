"""MLflow test helpers shared by test modules (imported as a plain module: tests/ is on sys.path)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def temporary_mlflow(uri: str):
    """Tracking *and* registry on ``uri``; both restored after (MLflow's registry URI is a process global
    that falls back to a relative ``sqlite:///mlflow.db``: the project's real database, when tests run from
    the repository root)."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils

    saved = (mlflow.get_tracking_uri(), registry_utils._registry_uri, os.environ.get("MLFLOW_REGISTRY_URI"))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(saved[0])
        registry_utils._registry_uri = saved[1]
        if saved[2] is None:
            os.environ.pop("MLFLOW_REGISTRY_URI", None)
        else:
            os.environ["MLFLOW_REGISTRY_URI"] = saved[2]


@contextlib.contextmanager
def sqlite_mlflow(root: Path, experiment: str):
    """A throwaway SQLite tracking + registry under ``root`` with experiment ``experiment`` active (its
    artifacts under ``root/artifacts``); yields ``root``."""
    import mlflow

    with temporary_mlflow(f"sqlite:///{root / 'mlflow.db'}"):
        mlflow.set_experiment(experiment_id=mlflow.create_experiment(
            experiment, artifact_location=(root / "artifacts").as_uri()))
        yield root
