"""Tracking: training metrics and artifacts to MLflow, and a progress bar, from rank 0 only.

kedro-mlflow opens one MLflow run per `kedro run`; everything here logs into the active run and is a quiet
no-op when there is none (a unit test, a notebook, a rank other than 0). Nothing here opens a run: which
run a model belongs to is the pipeline's decision, not the trainer's.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)
_MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value


def is_main_process() -> bool:
    return int(os.environ.get("RANK", 0)) == 0


def active_mlflow() -> Any | None:
    """The `mlflow` module when a run is active in this process, else None.

    MLflow is not imported here when nobody else did: no module imported it, so no run can be open, and a
    plain trainer run does not pay its import time.
    """
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or not hasattr(mlflow, "active_run"):
        return None
    return mlflow if mlflow.active_run() is not None else None


class MetricsTracker:
    """Logs one training's parameters once and its metrics per logged step, under a name prefix.

    Metric names read `<prefix>/<key>`, e.g. `superres/train/unet/loss`, so that the three stages of one
    `kedro run` (one MLflow run) do not overwrite each other.
    """

    def __init__(self, prefix: str, *, enabled: bool = True) -> None:
        self.prefix = prefix.strip("/")
        self.enabled = enabled and is_main_process()
        self._params_logged = False

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Flattened as `trainer.<prefix>.<key>`; logged at most once per tracker."""
        mlflow = active_mlflow() if self.enabled else None
        if mlflow is None or self._params_logged:
            return
        flat = {f"trainer.{self.prefix}.{key}" if self.prefix else f"trainer.{key}": _param_text(value)
                for key, value in _flatten(params).items()}
        try:
            mlflow.log_params(flat)
        except Exception as error:  # a resumed run re-logging a changed value must not stop training
            LOG.warning("could not log trainer parameters to MLflow: %s", error)
        self._params_logged = True

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        mlflow = active_mlflow() if self.enabled else None
        if mlflow is None or not metrics:
            return
        values = {self._key(name): float(value) for name, value in metrics.items()}
        try:
            mlflow.log_metrics(values, step=step)
        except Exception as error:  # tracking trouble (a busy database) must not kill a week-long run
            LOG.warning("could not log metrics at step %d to MLflow: %s", step, error)


def run_lineage_tags() -> dict[str, str]:
    """Code revision and DVC data version for a registered model: the kedro run's MLflow tags (set by the
    project hooks), else read from the working folder."""
    from pathlib import Path

    from generatect_kedro.hooks import code_revision, data_version

    tags: dict[str, str] = {}
    mlflow = active_mlflow()
    if mlflow is not None:
        run_tags = mlflow.get_run(mlflow.active_run().info.run_id).data.tags
        tags = {k: run_tags[k] for k in ("git_commit", "git_dirty", "dvc_lock_sha256", "kedro_env") if k in run_tags}
    if "git_commit" not in tags:
        tags.update(code_revision(Path.cwd()))
    if "dvc_lock_sha256" not in tags:
        tags.update(data_version(Path.cwd()))
    return tags


def checkpoint_step(path) -> int | None:  # noqa: ANN001 - a path or None
    """The step number in a checkpoint folder's name (``step-00000400`` → 400)."""
    from pathlib import Path

    if path is None:
        return None
    digits = "".join(ch for ch in Path(path).name if ch.isdigit())
    return int(digits) if digits else None


def ensure_experiment(name: str) -> str:
    """The id of MLflow experiment ``name``, created when missing with its artifacts beside a SQLite tracking
    database (``<db folder>/mlartifacts``, as the project's kedro-mlflow experiments), not MLflow's default
    ``./mlruns`` of whatever folder the command happens to run in."""
    from pathlib import Path

    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    uri = mlflow.get_tracking_uri()
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):].split("?", 1)[0]).resolve().parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by another process
        return client.get_experiment_by_name(name).experiment_id


def log_artifact(path: str | os.PathLike, artifact_path: str | None = None) -> bool:
    """Upload a file to the active run (rank 0); returns whether it was logged."""
    mlflow = active_mlflow() if is_main_process() else None
    if mlflow is None:
        return False
    mlflow.log_artifact(str(path), artifact_path=artifact_path)
    return True


def log_figure(figure: Any, artifact_file: str) -> bool:
    """A matplotlib figure as a PNG (or any suffix matplotlib writes) in the active run."""
    mlflow = active_mlflow() if is_main_process() else None
    if mlflow is None:
        return False
    mlflow.log_figure(figure, artifact_file)
    return True


def log_png(image: Any, artifact_file: str) -> bool:
    """A 2-D (grey) or H×W×3 array as a PNG in the active run; floats are taken to lie in [0, 1]."""
    mlflow = active_mlflow() if is_main_process() else None
    if mlflow is None:
        return False
    import numpy as np
    from PIL import Image

    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(np.nan_to_num(array.astype(np.float64)), 0.0, 1.0) * 255).round().astype(np.uint8)
    name = Path(artifact_file)
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(scratch) / name.name
        Image.fromarray(array).save(local, format="PNG")
        mlflow.log_artifact(str(local), artifact_path=str(name.parent) if str(name.parent) != "." else None)
    return True


class ProgressBar:
    """tqdm on rank 0: steps, the latest losses and it/s; nothing elsewhere or when disabled."""

    def __init__(self, *, total: int, initial: int, description: str, enabled: bool) -> None:
        self._bar = None
        if enabled and is_main_process():
            import sys

            from tqdm.auto import tqdm

            # In logs (no terminal) every refresh is a new line: refresh every 30 s there instead of 10 times a second.
            interval = 0.1 if sys.stderr.isatty() else 30.0
            self._bar = tqdm(total=total, initial=initial, desc=description, unit="step", dynamic_ncols=True,
                             mininterval=interval)

    def update(self, metrics: Mapping[str, float] | None = None) -> None:
        if self._bar is None:
            return
        losses = {k[: -len("/loss")]: v for k, v in (metrics or {}).items() if k.endswith("/loss")}
        if losses:
            shown = {"loss": next(iter(losses.values()))} if len(losses) == 1 else losses
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _param_text(value: Any) -> str:
    return ("null" if value is None else str(value))[:_MAX_PARAM_LENGTH]
