"""The `deepspeed` backend: one engine per part; DeepSpeed owns accumulation, clipping, ZeRO and bf16 weights.

Launch it with the `deepspeed` or `torchrun` launcher (see `deepspeed_utils`). Started without a launcher
(no WORLD_SIZE in the environment) it runs as a one-process world on 127.0.0.1 and a free port, which is how
the CPU demo and the tests run it. On CPU the zero-compile recipe is applied (no C++ op is built).

Per micro-batch the trainer calls `engine.backward(loss)` then `engine.step()`; the engine divides the loss
by `gradient_accumulation_steps` and only updates at the accumulation boundary. Under bf16 the engine holds
bf16 module weights with fp32 master copies in the optimizer; the trainer still runs the loss under
`torch.autocast(bfloat16)`, which lets fp32 inputs meet bf16 weights.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from generatect_kedro.training.backends import Backend, PartRuntime
from generatect_kedro.training.config import TrainerConfig
from generatect_kedro.training.deepspeed_utils import (
    enable_zero_compile,
    load_deepspeed_config,
    single_process_env,
    validate_deepspeed_config,
)
from generatect_kedro.training.task import Part

LOG = logging.getLogger(__name__)


class DeepSpeedBackend(Backend):
    name = "deepspeed"

    def __init__(self, config: TrainerConfig) -> None:
        if "WORLD_SIZE" not in os.environ:
            env = single_process_env()
            LOG.info("deepspeed without a launcher: one-process world on %s:%s", env["MASTER_ADDR"], env["MASTER_PORT"])
            for key, value in env.items():
                os.environ.setdefault(key, value)
        super().__init__(config)
        if self.device.type == "cpu":
            # DeepSpeed picks its accelerator once, at first use; on a GPU machine asked for CPU, say so first.
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        self.ds_config, self.ds_source = load_deepspeed_config(config.deepspeed)
        self._run_config = enable_zero_compile(self.ds_config) if self.device.type == "cpu" else self.ds_config
        import deepspeed

        deepspeed.init_distributed()  # after the recipe: the shm op would be JIT-built here otherwise

    def setup(self, parts: Sequence[Part]) -> list[PartRuntime]:
        import deepspeed

        config = validate_deepspeed_config(
            self._run_config, source=self.ds_source, world_size=self.world_size, micro_batch=self.config.batch_size,
            grad_accumulation=self.config.grad_accumulation, grad_clip=self.config.grad_clip,
            on_gpu=self.device.type == "cuda", bf16_requested=self.autocast_dtype == torch.bfloat16,
            has_client_optimizers=all(p.make_optimizer is not None for p in parts),
            has_client_schedulers=any(p.make_scheduler is not None for p in parts))
        config.setdefault("steps_per_print", 1 << 30)  # the trainer logs; keep DeepSpeed's own step lines quiet
        uses_config_optimizer = config.get("optimizer") is not None
        if uses_config_optimizer and any(p.make_optimizer is not None for p in parts):
            LOG.info("%s: the optimizer block is used for every part; the parts' optimizer factories are not",
                     self.ds_source)
        runtimes = []
        for part in parts:
            part.module.to(self.device)
            trainable = [p for p in part.module.parameters() if p.requires_grad]
            optimizer = None if uses_config_optimizer else part.make_optimizer(part.module)
            engine, optimizer, _, scheduler = deepspeed.initialize(
                model=part.module, optimizer=optimizer, model_parameters=trainable,
                lr_scheduler=part.make_scheduler, config=dict(config))
            runtimes.append(PartRuntime(part, engine, optimizer, scheduler, engine, trainable))
        self.resolved_config = config
        return runtimes

    def zero_grad(self, runtime: PartRuntime) -> None:
        return None  # the engine zeroes after each update

    def backward(self, runtime: PartRuntime, loss: torch.Tensor) -> None:
        runtime.engine.backward(loss)

    def after_micro_batch(self, runtime: PartRuntime) -> None:
        runtime.engine.step()

    def optimizer_step(self, runtime: PartRuntime, *, want_grad_norm: bool) -> torch.Tensor | None:
        norm: Any = runtime.engine.get_global_grad_norm()
        if norm is None:
            return None
        return norm if isinstance(norm, torch.Tensor) else torch.tensor(float(norm))

