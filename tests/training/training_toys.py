"""Toy tasks for the trainer tests: a small regression MLP and a two-part GAN-like autoencoder.

Also runnable as a script (`python training_toys.py --help`), so tests can train in a subprocess: under
torchrun, under DeepSpeed with its environment variables, or killed with SIGKILL in the middle of a step.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from generatect_kedro.training import Part, StepSchedule, Trainer, TrainerConfig, TrainingTask

IN_FEATURES = 4


class LinearData:
    """y = x·w + 0.5 with a fixed w; deterministic per index, as the trainer asks of datasets."""

    def __init__(self, size: int = 24, seed: int = 1) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, IN_FEATURES, generator=generator)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.5

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index].unsqueeze(0)


class SimulatedCrash(RuntimeError):
    pass


class Regression(TrainingTask):
    """One part. `dropout` and `rng_noise` make the loss draw from torch, numpy and python RNGs, so an exact
    resume must restore all three."""

    def __init__(self, *, hidden: int = 16, dropout: float = 0.0, rng_noise: bool = False, linear: bool = False,
                 lr: float = 0.05, optimizer: str = "adamw", scheduler: bool = True,
                 kill_at_step: int | None = None, raise_at_step: int | None = None) -> None:
        super().__init__()
        if linear:
            self.net: nn.Module = nn.Linear(IN_FEATURES, 1)
        else:
            self.net = nn.Sequential(nn.Linear(IN_FEATURES, hidden), nn.Tanh(), nn.Dropout(dropout),
                                     nn.Linear(hidden, 1))
        self.rng_noise = rng_noise
        self.lr = lr
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.kill_at_step = kill_at_step
        self.raise_at_step = raise_at_step

    def parts(self) -> list[Part]:
        def make_optimizer(module: nn.Module) -> torch.optim.Optimizer:
            if self.optimizer == "sgd":
                return torch.optim.SGD(module.parameters(), lr=self.lr)
            return torch.optim.AdamW(module.parameters(), lr=self.lr)

        def make_scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
            return torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.7)

        return [Part("net", self.net, make_optimizer, make_scheduler if self.scheduler else None)]

    def loss(self, part_name, batch, step, cache):
        if self.kill_at_step is not None and step == self.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)  # a hard kill in the middle of a step, after its checkpoint
        if self.raise_at_step is not None and step == self.raise_at_step:
            raise SimulatedCrash(f"crash at step {step}")
        x, y = batch
        loss = nn.functional.mse_loss(self.forward_module("net")(x), y)
        if self.rng_noise:
            loss = loss * (1.0 + 0.01 * random.random()) * (1.0 + 0.01 * float(np.random.rand()))
        return loss, {"mse": loss.detach()}


class Autoencoder(TrainingTask):
    """Two parts: `generator` reconstructs x (MSE + a small adversarial term), `discriminator` tells real
    from the reconstruction the generator left in the cache, on its own schedule."""

    def __init__(self, schedule: StepSchedule = StepSchedule(every=2, start=1)) -> None:
        super().__init__()
        self.generator = nn.Sequential(nn.Linear(IN_FEATURES, 2), nn.Linear(2, IN_FEATURES))
        self.discriminator = nn.Sequential(nn.Linear(IN_FEATURES, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
        self.schedule = schedule
        self.discriminator_steps: list[int] = []
        self.validated_at: list[int] = []

    def parts(self) -> list[Part]:
        return [
            Part("generator", self.generator, lambda m: torch.optim.Adam(m.parameters(), lr=0.02)),
            Part("discriminator", self.discriminator, lambda m: torch.optim.Adam(m.parameters(), lr=0.01),
                 schedule=self.schedule),
        ]

    def loss(self, part_name, batch, step, cache):
        x, _ = batch
        if part_name == "generator":
            reconstruction = self.forward_module("generator")(x)
            cache["reconstruction"] = reconstruction.detach()
            adversarial = -self.forward_module("discriminator")(reconstruction).mean()
            mse = nn.functional.mse_loss(reconstruction, x)
            return mse + 0.01 * adversarial, {"mse": mse.detach()}
        self.discriminator_steps.append(step)
        discriminator = self.forward_module("discriminator")
        real = nn.functional.relu(1 - discriminator(x)).mean()
        fake = nn.functional.relu(1 + discriminator(cache["reconstruction"])).mean()
        return real + fake, {}

    def validate(self, step):
        self.validated_at.append(step)
        x = torch.stack([LinearData()[i][0] for i in range(8)])
        return {"mse": nn.functional.mse_loss(self.generator(x), x)}


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().float().clone().contiguous() for k, v in module.state_dict().items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="single")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accumulation", type=int, default=1)
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--rng-noise", action="store_true")
    parser.add_argument("--deepspeed-config", help="JSON text of a DeepSpeed config")
    parser.add_argument("--out", required=True, help="folder for weights-rank<r>.safetensors and result-rank<r>.json")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    task = Regression(dropout=args.dropout, rng_noise=args.rng_noise, kill_at_step=args.kill_at_step)
    config = TrainerConfig.from_params({
        "backend": args.backend, "max_steps": args.steps, "batch_size": args.batch_size,
        "grad_accumulation": args.grad_accumulation, "checkpoint_dir": args.checkpoint_dir,
        "checkpoint_every": args.checkpoint_every, "log_every": 1, "show_progress": False, "seed": 7,
        "deepspeed": json.loads(args.deepspeed_config) if args.deepspeed_config else None})
    result = Trainer(config, name="toy").fit(task, LinearData())
    rank = int(os.environ.get("RANK", 0))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights(task.net), str(out / f"weights-rank{rank}.safetensors"))
    (out / f"result-rank{rank}.json").write_text(json.dumps({"step": result.step, "history": result.history}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
