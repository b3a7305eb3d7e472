"""The project's wiring: every downstream pipeline is a DVC stage, evaluation runs before promotion, and
`dvc metrics show` lists the evaluation's headline metrics."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from generatect_kedro.pipeline_registry import DOWNSTREAM

ROOT = Path(__file__).resolve().parents[1]
METRICS = "data/08_reporting/evaluation/metrics.json"


def _dvc() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_every_downstream_pipeline_is_a_dvc_stage_and_evaluation_feeds_promotion():
    stages = _dvc()
    assert set(DOWNSTREAM) <= set(stages)
    assert DOWNSTREAM.index("evaluation") < DOWNSTREAM.index("promotion")
    assert {METRICS: {"cache": False}} in stages["evaluation"]["metrics"]
    assert METRICS in stages["promotion"]["deps"]
    assert {"data/07_model_output/evaluation": {"persist": True}} in stages["evaluation"]["outs"]


def test_default_pipeline_runs_the_evaluation_report_before_promotion():
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(ROOT)
    from generatect_kedro.pipeline_registry import register_pipelines

    order = [node.name for node in register_pipelines()["__default__"].nodes]
    assert order.index("evaluation_report") < order.index("promote_trained_models")
    assert order.index("transformer_conditioning_report") < order.index("evaluation_report")
    assert order.index("evaluate_superres") < order.index("evaluation_report")


def test_dvc_metrics_show_lists_the_headline_metrics(tmp_path):
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    metrics = tmp_path / METRICS
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"evaluation/fvd_3d/classifier": 1.5, "evaluation/text_alignment/auroc_ratio": 0.25}))
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    shown = subprocess.run([dvc, "metrics", "show", "--json"], cwd=tmp_path, check=True, capture_output=True,
                           text=True).stdout
    values = json.loads(shown)
    flat = json.dumps(values)
    assert "evaluation/fvd_3d/classifier" in flat and "1.5" in flat and "auroc_ratio" in flat
