"""`generatect generate` against a throwaway Kedro project whose conf points at a temporary registry."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines" / "generation"))
from generation_fixtures import register_tiny_models, use_registry  # noqa: E402

from generatect_kedro.commands.generate import generate  # noqa: E402

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    import mlflow

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("project")
    previous = mlflow.get_tracking_uri()
    use_registry(root)
    infos = register_tiny_models(root)
    (root / "pyproject.toml").write_text('[tool.kedro]\npackage_name = "generatect_kedro"\n')
    (root / "conf" / "base").mkdir(parents=True)
    (root / "conf" / "local").mkdir()
    shutil.copy(CONF / "base" / "parameters_generation.yml", root / "conf" / "base")
    (root / "conf" / "base" / "mlflow.yml").write_text(yaml.safe_dump(
        {"server": {"mlflow_tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}}))
    (root / "conf" / "local" / "parameters_generation.yml").write_text(
        "generation:\n  geometry:\n    spacing_mm: [0.7, 0.8, 2.0]\n  progress: false\n")
    mlflow.set_tracking_uri(previous)  # the command must find the registry through the project's mlflow.yml
    try:
        yield root, infos
    finally:
        mlflow.set_tracking_uri(previous)


def test_generate_one_prompt_then_resume(project, tmp_path):
    root, _ = project
    out = tmp_path / "out"
    args = ["65 years old male: Cardiomegaly.", "--seed", "3", "--count", "2", "--slices", "3", "--out", str(out),
            "--no-preview", "--device", "cpu", "--project-dir", str(root)]
    result = CliRunner().invoke(generate, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "2 volume(s) generated" in result.output and str(out) in result.output
    sidecars = sorted(out.glob("gen-*.json"))
    assert len(sidecars) == 2 and not list(out.glob("*.png"))
    records = [json.loads(p.read_text()) for p in sidecars]
    assert sorted(r["item"]["seed"] for r in records) == [3, 4] and {r["item"]["slice_count"] for r in records} == {3}
    again = CliRunner().invoke(generate, args)
    assert again.exit_code == 0 and "0 volume(s) generated, 2 already there" in again.output


def test_generate_errors_are_clean(project, tmp_path):
    import mlflow

    root, infos = project
    base = ["--out", str(tmp_path), "--device", "cpu", "--project-dir", str(root)]
    bad = CliRunner().invoke(generate, ["a prompt", "--slices", "4", *base])
    assert bad.exit_code == 1 and "slice count 4 is not 1 + 2·k" in bad.output and "Traceback" not in bad.output
    neither = CliRunner().invoke(generate, base)
    assert neither.exit_code == 2 and "either a PROMPT or --prompts" in neither.output
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    client.delete_registered_model_alias("generatect-transformer", "champion")
    try:
        missing = CliRunner().invoke(generate, ["a prompt", *base])
    finally:
        client.set_registered_model_alias("generatect-transformer", "champion", infos["transformer"]["version"])
    assert missing.exit_code == 1 and "generatect promote generatect-transformer" in missing.output
