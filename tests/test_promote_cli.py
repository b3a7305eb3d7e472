"""`generatect promote`: the project's gates per --env, MLFLOW_TRACKING_URI honoured, exit codes, rollback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from generatect_kedro import registry
from generatect_kedro.cli import main
from generatect_kedro.promotion import core
from mlflow_helpers import temporary_mlflow

PROJECT = Path(__file__).resolve().parents[1]
NAME = "generatect-ctvit"


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """A SQLite MLflow with three CT-ViT versions: v1 and v3 pass the demo gates, v2 does not."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with temporary_mlflow(uri):
        mlflow.set_experiment(experiment_id=mlflow.create_experiment(
            "cli-test", artifact_location=(root / "artifacts").as_uri()))
        weights = root / "w.safetensors"
        save_file({"w": torch.zeros(4)}, str(weights))
        for gain in (7.0, 1.0, 8.0):
            with mlflow.start_run():
                mlflow.log_metrics({"ctvit/val/psnr_gain_db": gain, "ctvit/val/psnr_hu": 20 + gain})
                registry.register_model(NAME, weights, {"kind": "test"}, {}, reuse_identical=False)
        yield uri


def run(uri: str, *args: str):
    return CliRunner().invoke(main, ["promote", *args, "--project-dir", str(PROJECT)],
                              env={"MLFLOW_TRACKING_URI": uri})


def champion() -> str | None:
    return core._champion(core._mlflow().MlflowClient(), NAME)


def test_cli_promotes_refuses_and_rolls_back(db):
    dry = run(db, "ctvit", "1", "--env", "demo", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "ctvit/val/psnr_gain_db" in dry.output and "dry run" in dry.output and champion() is None

    ok = run(db, "ctvit", "1", "--env", "demo", "--reason", "demo release", "--actor", "carol")
    assert ok.exit_code == 0, ok.output
    assert "promoted generatect-ctvit v1" in ok.output and champion() == "1"
    assert core._mlflow().MlflowClient().get_model_version(NAME, "1").tags["champion.promoted_by"] == "carol"

    refused = run(db, NAME, "2", "--env", "demo", "--reason", "worse")  # the full registered name works too
    assert refused.exit_code == 1 and champion() == "1"
    assert "refused to promote generatect-ctvit v2" in refused.output
    assert "ctvit/val/psnr_gain_db = 1, needs >= 3" in refused.output and "NO" in refused.output

    base = run(db, "ctvit", "3", "--reason", "paper gates")  # default env local = conf/base gates
    assert base.exit_code == 1 and "ctvit/val/ssim_hu" in base.output and "metric.ctvit/val/ssim_hu" in base.output

    assert run(db, "ctvit", "challenger", "--env", "demo", "--reason", "newest").exit_code == 0  # alias → v3
    assert champion() == "3"
    again = run(db, "ctvit", "3", "--env", "demo", "--reason", "again")
    assert again.exit_code == 0 and "already @champion" in again.output

    back = run(db, "ctvit", "--rollback", "--reason", "v3 regressed")
    assert back.exit_code == 0 and "back from v3 to v1" in back.output and champion() == "1"
    nothing = run(db, "ctvit", "--rollback", "--reason", "again")
    assert nothing.exit_code == 1 and "records no previous champion" in nothing.output


def test_cli_usage_errors(db, tmp_path):
    assert run(db, "ctvit", "1").exit_code == 2  # no --reason
    assert "--reason TEXT is required" in run(db, "ctvit", "1").output
    assert run(db, "ctvit", "--reason", "x").exit_code == 2  # neither VERSION nor --rollback
    assert run(db, "ctvit", "1", "--rollback", "--reason", "x").exit_code == 2
    missing = run(db, "ctvit", "42", "--env", "demo", "--reason", "x")
    assert missing.exit_code == 1 and "has no version 42" in missing.output
    nodb = run(f"sqlite:///{tmp_path / 'absent.db'}", "ctvit", "1", "--reason", "x")
    assert nodb.exit_code == 1 and "no MLflow database" in nodb.output and not (tmp_path / "absent.db").exists()
