"""DeepSpeed checks in one process (DeepSpeed's import and setup are paid once): the toy regression trained
by the `single` backend, by DeepSpeed uninterrupted, and by DeepSpeed crashed after a checkpoint then resumed;
and the two-part GAN-like task (the parts' own optimizers, no optimizer block) under both backends.

Run by `test_training_distributed.py` with the torch.distributed variables of a one-process world set.
Writes `<out>/summary.json` and the weights of each run as safetensors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from training_toys import Autoencoder, LinearData, Regression, SimulatedCrash, weights
from generatect_kedro.training import Trainer, TrainerConfig

DEEPSPEED_CONFIG = {
    "optimizer": {"type": "AdamW", "params": {"lr": 0.05}},  # torch_adam is added by the zero-compile recipe
    "zero_optimization": {"stage": 2},
}


def train(backend: str, out: Path, label: str, **overrides) -> dict:
    torch.manual_seed(0)
    task = Regression(dropout=0.1, raise_at_step=overrides.pop("raise_at_step", None))
    params = {"backend": backend, "max_steps": 3, "batch_size": 4, "log_every": 1, "show_progress": False,
              "seed": 7, "deepspeed": DEEPSPEED_CONFIG if backend == "deepspeed" else None, **overrides}
    try:
        result = Trainer(TrainerConfig.from_params(params), name=label).fit(task, LinearData())
    except SimulatedCrash:
        return {"crashed": True}
    save_file(weights(task.net), str(out / f"{label}.safetensors"))
    return {"crashed": False, "losses": [m["train/net/loss"] for _, m in result.history], "step": result.step,
            "resumed_from": str(result.resumed_from) if result.resumed_from else None}


def train_two_parts(backend: str, out: Path) -> None:
    torch.manual_seed(0)
    task = Autoencoder()
    params = {"backend": backend, "max_steps": 4, "batch_size": 4, "grad_accumulation": 2, "show_progress": False,
              "seed": 7, "deepspeed": {"zero_optimization": {"stage": 2}} if backend == "deepspeed" else None}
    Trainer(TrainerConfig.from_params(params), name=f"gan-{backend}").fit(task, LinearData())
    save_file({**{f"generator.{k}": v for k, v in weights(task.generator).items()},
               **{f"discriminator.{k}": v for k, v in weights(task.discriminator).items()}},
              str(out / f"gan-{backend}.safetensors"))


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = str(out / "checkpoints")
    summary = {
        "single": train("single", out, "single"),
        "deepspeed": train("deepspeed", out, "deepspeed"),
        "crashed": train("deepspeed", out, "crashed", checkpoint_dir=checkpoints, checkpoint_every=2,
                         raise_at_step=2),
        "resumed": train("deepspeed", out, "resumed", checkpoint_dir=checkpoints, checkpoint_every=2),
    }
    train_two_parts("single", out)
    train_two_parts("deepspeed", out)
    summary["checkpoint_files"] = sorted(p.name for p in (out / "checkpoints" / "step-00000003").iterdir())
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
