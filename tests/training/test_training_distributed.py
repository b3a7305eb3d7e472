"""Multi-process backends on CPU, each in a subprocess so that no distributed state leaks into this one:
DDP with two ranks under torchrun (gloo), and DeepSpeed as a one-process world with the zero-compile recipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from generatect_kedro.training import Trainer, TrainerConfig
from generatect_kedro.training.deepspeed_utils import free_port, single_process_env
from training_toys import LinearData, Regression, weights

HERE = Path(__file__).resolve().parent
DIST_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARIABLES}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]), **extra)
    return env


def test_ddp_two_ranks_match_one_process_with_the_doubled_batch(tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(HERE / "training_toys.py"), "--backend", "ddp", "--steps", "3",
               "--batch-size", "2", "--checkpoint-dir", str(tmp_path / "checkpoints"), "--checkpoint-every", "3",
               "--out", str(out)]
    completed = subprocess.run(command, env=clean_env(), capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rank0 = load_file(str(out / "weights-rank0.safetensors"))
    rank1 = load_file(str(out / "weights-rank1.safetensors"))

    torch.manual_seed(0)
    task = Regression()
    config = TrainerConfig.from_params({"max_steps": 3, "batch_size": 4, "seed": 7, "log_every": 1,
                                        "show_progress": False})
    Trainer(config).fit(task, LinearData())
    single = weights(task.net)
    for key in single:
        assert torch.equal(rank0[key], rank1[key]), f"ranks out of sync in {key}"
        torch.testing.assert_close(rank0[key], single[key], atol=1e-6, rtol=0)
    saved = sorted(p.name for p in (tmp_path / "checkpoints" / "step-00000003").iterdir())
    assert "rng-rank1.pt" in saved and "trainer_state.pt" in saved
    assert json.loads((tmp_path / "checkpoints" / "step-00000003" / "meta.json").read_text())["world_size"] == 2


def test_deepspeed_matches_the_single_backend_and_resumes_exactly(tmp_path):
    pytest.importorskip("deepspeed")
    extensions = tmp_path / "torch_extensions"
    env = clean_env(**single_process_env(), TORCH_EXTENSIONS_DIR=str(extensions), DS_ACCELERATOR="cpu")
    completed = subprocess.run([sys.executable, str(HERE / "run_deepspeed_suite.py"), str(tmp_path / "out")],
                               env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, (completed.stdout[-2000:], completed.stderr[-3000:])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())

    # Same batch, seed and dropout draws: the same losses, and the same weights (ZeRO-2 + torch AdamW).
    assert summary["deepspeed"]["losses"] == pytest.approx(summary["single"]["losses"], rel=1e-6)
    single = load_file(str(tmp_path / "out" / "single.safetensors"))
    deepspeed_run = load_file(str(tmp_path / "out" / "deepspeed.safetensors"))
    resumed = load_file(str(tmp_path / "out" / "resumed.safetensors"))
    for key in single:
        torch.testing.assert_close(deepspeed_run[key], single[key], atol=1e-6, rtol=0)
        assert torch.equal(resumed[key], deepspeed_run[key]), key

    # Crashed after its step-2 checkpoint; the rerun resumed there and finished the last step only.
    assert summary["crashed"]["crashed"] is True
    assert summary["resumed"]["resumed_from"].endswith("step-00000002")
    assert len(summary["resumed"]["losses"]) == 1
    expected_files = {"deepspeed-net", "model-net.safetensors", "trainer_state.pt", "meta.json"}
    assert expected_files <= set(summary["checkpoint_files"])
    # Two parts, each its own engine: the discriminator called inside the generator's loss stays a plain module.
    gan_single = load_file(str(tmp_path / "out" / "gan-single.safetensors"))
    gan_deepspeed = load_file(str(tmp_path / "out" / "gan-deepspeed.safetensors"))
    for key in gan_single:
        torch.testing.assert_close(gan_deepspeed[key], gan_single[key], atol=1e-6, rtol=0)
    # The zero-compile recipe: no C++ op was built.
    assert not extensions.exists() or not any(extensions.rglob("*.so"))
