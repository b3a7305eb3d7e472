"""Project hooks: offline environment for every session, and provenance tags on every MLflow run."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from pathlib import Path

from kedro.framework.hooks import hook_impl

LOG = logging.getLogger(__name__)


def code_revision(project_path: Path) -> dict[str, str]:
    """The git commit of the code that ran, and whether the tree had uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=project_path, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()

    try:
        return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": str(bool(git("status", "--porcelain")))}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}


def data_version(project_path: Path) -> dict[str, str]:
    """The DVC lock state: its sha256 pins every tracked input and output of the pipeline stages."""
    lock = project_path / "dvc.lock"
    if not lock.is_file():
        return {"dvc_lock_sha256": "absent"}
    return {"dvc_lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest()}


# Tables whose content pins what a run trained on; their sha256 goes on the run as `data.<name>_sha256`.
LINEAGE_TABLES = {"volume_manifest": "manifest", "cohort": "cohort", "splits": "splits"}


def table_sha256(table) -> str:  # noqa: ANN001 - a pandas DataFrame
    """Content hash of a table, independent of the file format it was read from."""
    return hashlib.sha256(table.to_csv(index=False, lineterminator="\n").encode("utf-8")).hexdigest()


class ProjectHooks:
    def __init__(self) -> None:
        self._project_path = Path.cwd()
        self._env = "local"

    @hook_impl
    def after_context_created(self, context) -> None:  # noqa: ANN001 - kedro passes its context
        # Nothing is downloaded at run time: encoders and weights come from local paths.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("DO_NOT_TRACK", "true")
        self._project_path = Path(context.project_path)
        self._env = context.env or "local"

    @hook_impl
    def before_pipeline_run(self, run_params: dict) -> None:
        # kedro-mlflow (a plugin, so called before project hooks) has opened the run by now.
        try:
            import mlflow
        except ImportError:  # pragma: no cover - mlflow is a hard dependency
            return
        if mlflow.active_run() is None:
            return
        tags = {
            "kedro_env": self._env,
            "kedro_pipelines": ",".join(run_params.get("pipeline_names") or ["__default__"]),
            **code_revision(self._project_path),
            **data_version(self._project_path),
        }
        mlflow.set_tags(tags)

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data) -> None:  # noqa: ANN001 - any dataset value
        self._tag_table(dataset_name, data)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data) -> None:  # noqa: ANN001 - any dataset value
        self._tag_table(dataset_name, data)

    @staticmethod
    def _tag_table(dataset_name: str, data) -> None:  # noqa: ANN001
        if dataset_name not in LINEAGE_TABLES or not hasattr(data, "to_csv"):
            return
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.set_tag(f"data.{LINEAGE_TABLES[dataset_name]}_sha256", table_sha256(data))
