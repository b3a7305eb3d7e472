"""MLflow tracking from the trainer: step metrics and parameters into a SQLite store; no-op without a run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generatect_kedro.training import Trainer, TrainerConfig, log_artifact, log_png
from generatect_kedro.training.tracking import MetricsTracker
from training_toys import LinearData, Regression


def test_trainer_logs_throttled_step_metrics_and_params_to_mlflow(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("trainer-test", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            torch.manual_seed(0)
            config = TrainerConfig.from_params({"max_steps": 6, "batch_size": 4, "log_every": 2,
                                                "show_progress": False})
            Trainer(config, name="toy").fit(Regression(), LinearData())
            note = tmp_path / "note.txt"
            note.write_text("hello")
            assert log_artifact(note, "reports")
            assert log_png(np.linspace(0, 1, 64).reshape(8, 8), "previews/ramp.png")
        client = mlflow.tracking.MlflowClient()
        history = client.get_metric_history(run.info.run_id, "toy/train/net/loss")
        assert [m.step for m in history] == [2, 4, 6]
        logged = client.get_run(run.info.run_id).data
        assert logged.params["trainer.toy.batch_size"] == "4"
        assert logged.params["trainer.toy.resolved_precision"] == "fp32"
        assert "toy/train/net/grad_norm" in logged.metrics
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"reports", "previews"} <= artifacts
    finally:
        mlflow.set_tracking_uri(previous_uri)


def test_tracking_is_a_no_op_without_an_active_run(tmp_path):
    tracker = MetricsTracker("toy")
    tracker.log_params({"a": 1})
    tracker.log_metrics({"loss": 1.0}, step=1)
    assert log_artifact(tmp_path) is False
    assert log_png(np.zeros((2, 2)), "x.png") is False


def test_only_rank_zero_logs(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert MetricsTracker("toy").enabled is False
