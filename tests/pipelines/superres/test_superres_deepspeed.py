"""DeepSpeed for super-resolution as one CPU process (the demo's and the tests' setting), in a subprocess so
that no distributed state leaks into this one: same losses and weights as the plain backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from generatect_kedro.training.deepspeed_utils import single_process_env

HERE = Path(__file__).resolve().parent
DIST_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def test_deepspeed_step_matches_the_single_backend(tmp_path):
    pytest.importorskip("deepspeed")
    extensions = tmp_path / "torch_extensions"
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARIABLES}
    env.update(single_process_env(), OMP_NUM_THREADS="1", TORCH_EXTENSIONS_DIR=str(extensions),
               DS_ACCELERATOR="cpu", PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]))
    completed = subprocess.run([sys.executable, str(HERE / "run_deepspeed_superres.py"), str(tmp_path / "out")],
                               env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, (completed.stdout[-2000:], completed.stderr[-3000:])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())

    assert summary["single"]["backends"] == ["single", "single"]
    assert summary["deepspeed"]["backends"] == ["deepspeed", "deepspeed"]  # two engines in one process
    # Same slices, seed and noise draws: the same loss at every step of both stages (the later steps also
    # check that ZeRO-2 with the config's AdamW made the same update as the plain Adam).
    for single, deepspeed in zip(summary["single"]["losses"], summary["deepspeed"]["losses"]):
        assert len(single) == 3
        assert deepspeed == pytest.approx(single, rel=1e-5)
    single = load_file(str(tmp_path / "out" / "single.safetensors"))
    deepspeed = load_file(str(tmp_path / "out" / "deepspeed.safetensors"))
    assert single.keys() == deepspeed.keys()
    for key in single:  # the EMA weights the cascade is registered with
        torch.testing.assert_close(deepspeed[key], single[key], atol=1e-5, rtol=1e-4)
    assert not extensions.exists() or not any(extensions.rglob("*.so"))  # the zero-compile recipe
