"""`generatect check-config`: passes for every shipped environment, fails clearly for a GPU that is too small
and for a DeepSpeed config that disagrees with its trainer block (a temporary conf folder)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from generatect_kedro.cli import main

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_ENVS = ["base", "demo", "gpu_24gb", "gpu_40gb", "gpu_80gb"]


def check(*args: str, project: Path = ROOT):
    return CliRunner().invoke(main, ["check-config", *args, "--project-dir", str(project)])


GPU_GIB = {"base": 80, "gpu_24gb": 24, "gpu_40gb": 40, "gpu_80gb": 80}


@pytest.mark.parametrize("env", SHIPPED_ENVS)
def test_every_shipped_env_fits_its_gpu(env):
    result = check("--env", env)
    assert result.exit_code == 0, result.output
    assert "OK: every GPU stage fits" in result.output
    assert "Target GPU:" in result.output and "Parameters" in result.output
    for stage in ("ctvit", "transformer", "superres stage 1", "transformer sampling", "CT-ViT decode"):
        assert stage in result.output
    assert "TFLOP per optimizer step per GPU" in result.output and "compute per volume:" in result.output
    if env in GPU_GIB:  # paper scale: 201x512x512 through the 3SCM cascade 128 -> 256 -> 512
        assert f"{GPU_GIB[env]} GiB x 8 GPU(s)" in result.output
        assert re.search(r"compute per volume: [\d,.]+ TFLOP; at the GPU's bf16 peak \(\d+ TFLOPS\) >= [\d.]+ m?s; "
                         r"at 40% of peak [\d.]+ m?s", result.output)
        assert "superres stage 2 (256->512)" in result.output and "of 512^2" in result.output
        assert re.search(r"text encoder +external", result.output)  # T5 v1.1 base: a folder on the user's machine
    else:  # the demo's MiniLM is built from its config.json on meta; demo generation runs on the CPU
        assert re.search(r"text encoder +\d+\.\d+ M +bert 384-d \(demo:minilm\)", result.output)
        assert "Generation, GiB on one CPU" in result.output


def test_bf16_peak_override_rescales_the_time_floors():
    """An H100 SXM (989.5 TFLOPS dense bf16) instead of the configured A100 (312): same FLOPs, shorter floors."""
    a100, h100 = check("--env", "gpu_80gb"), check("--env", "gpu_80gb", "--bf16-tflops", "989.5")
    assert a100.exit_code == 0 and h100.exit_code == 0, h100.output
    assert "dense bf16 peak 989.5 TFLOPS" in h100.output

    def volume(output: str) -> tuple[float, float]:
        match = re.search(r"compute per volume: ([\d,.]+) TFLOP; at the GPU's bf16 peak \([\d.]+ TFLOPS\) >= "
                          r"([\d.]+) s", output)
        return float(match.group(1).replace(",", "")), float(match.group(2))

    (tflop_a100, floor_a100), (tflop_h100, floor_h100) = volume(a100.output), volume(h100.output)
    assert tflop_a100 == tflop_h100
    assert floor_h100 == pytest.approx(tflop_h100 / 989.5, rel=0.01)
    assert floor_a100 == pytest.approx(tflop_a100 / 312, rel=0.01)


def test_base_training_does_not_fit_8_gib():
    result = check("--env", "base", "--gpu-memory-gb", "8")
    assert result.exit_code == 1
    message = result.output[result.output.index("Error:"):]
    assert "8 GiB GPU (--gpu-memory-gb)" in message
    superres = next(line for line in message.splitlines() if "training superres stage 2" in line)
    assert re.search(r"needs ~\d+\.\d GiB per GPU, over the 7\.2 GiB limit", superres)
    assert "superres.trainer.batch_size (now 8" in superres and "gradient_checkpointing" in superres
    assert "DOES NOT FIT" in result.output


def _project_copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "conf" / "base", tmp_path / "conf" / "base")
    (tmp_path / "pyproject.toml").write_text('[tool.kedro]\npackage_name = "generatect_kedro"\n')
    return tmp_path


def test_broken_deepspeed_config_fails_naming_file_and_key(tmp_path):
    project = _project_copy(tmp_path)
    broken = tmp_path / "conf" / "broken"
    broken.mkdir()
    config = yaml.safe_load((ROOT / "conf" / "base" / "deepspeed.yml").read_text())
    config["train_micro_batch_size_per_gpu"] = 3  # the trainer says batch_size 8
    (broken / "deepspeed.yml").write_text(yaml.safe_dump(config))
    (broken / "parameters_superres.yml").write_text(
        yaml.safe_dump({"superres": {"trainer": {"deepspeed": "conf/broken/deepspeed.yml"}}}))
    result = check("--env", "broken", project=project)
    assert result.exit_code == 1
    assert ("conf/broken/deepspeed.yml: key 'train_micro_batch_size_per_gpu': 3 disagrees with the trainer's "
            "batch_size=8") in result.output


def test_zero3_is_refused_for_superres(tmp_path):
    project = _project_copy(tmp_path)
    env = tmp_path / "conf" / "zero3"
    env.mkdir()
    config = yaml.safe_load((ROOT / "conf" / "base" / "deepspeed.yml").read_text())
    config["zero_optimization"]["stage"] = 3
    (env / "deepspeed.yml").write_text(yaml.safe_dump(config))
    (env / "parameters_superres.yml").write_text(
        yaml.safe_dump({"superres": {"trainer": {"deepspeed": "conf/zero3/deepspeed.yml"}}}))
    result = check("--env", "zero3", project=project)
    assert result.exit_code == 1 and "'zero_optimization.stage': 3" in result.output


def test_missing_env_is_a_clear_error():
    result = check("--env", "no_such_env")
    assert result.exit_code == 1 and "no configuration environment 'no_such_env'" in result.output
