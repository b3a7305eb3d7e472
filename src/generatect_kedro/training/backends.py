"""Execution backends: how a part's gradients become an optimizer step, on one process or many.

- `single`: one process, CPU or one GPU.
- `ddp`: one process per GPU (or CPU rank) under `torchrun`; RANK / WORLD_SIZE / LOCAL_RANK from the
  environment; gloo on CPU, nccl on GPU. Gradients are averaged with one bucketed all-reduce per part after
  the last micro-batch, instead of wrapping modules in `DistributedDataParallel`: the same arithmetic, but it
  also works with what GAN training needs and DDP does not support (a discriminator called in the generator's
  loss, `torch.autograd.grad` for the gradient penalty and the adaptive GAN weight, parts that skip steps).
  Buffers (e.g. EMA codebooks) are broadcast from rank 0 after every step, as DDP does before every forward.
- `deepspeed`: one `deepspeed.initialize` engine per part; `engine.backward` / `engine.step` own loss
  scaling, gradient accumulation, clipping and ZeRO partitioning (see `deepspeed_utils` for launching).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from generatect_kedro.training.config import TrainerConfig
from generatect_kedro.training.task import Part

LOG = logging.getLogger(__name__)
_BUCKET_ELEMENTS = 1 << 24  # 16 M elements per all-reduce call (64 MB in fp32)


@dataclass
class PartRuntime:
    """A part once placed on its backend: what the trainer steps."""

    part: Part
    forward: Callable[..., Any]  # the module, or its DeepSpeed engine
    optimizer: Any = None
    scheduler: Any = None
    engine: Any = None
    trainable: list[nn.Parameter] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.part.name

    @property
    def module(self) -> nn.Module:
        return self.part.module

    def learning_rate(self) -> float | None:
        if self.engine is not None:
            rates = self.engine.get_lr()
            return float(rates[0]) if rates else None
        return float(self.optimizer.param_groups[0]["lr"]) if self.optimizer is not None else None


def resolve_device(config: TrainerConfig, local_rank: int = 0) -> torch.device:
    wants_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if not wants_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("trainer device=cuda, but no CUDA device is available (use device: auto or cpu)")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def resolve_precision(config: TrainerConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. `auto` is bf16 on CUDA and fp32 on CPU."""
    if config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) as set by torchrun or the deepspeed launcher; (0, 1, 0) otherwise."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


class Backend:
    """Single process. The others override the distributed and stepping parts."""

    name = "single"

    def __init__(self, config: TrainerConfig) -> None:
        self.config = config
        self.rank, self.world_size, self.local_rank = env_world()
        self.device = resolve_device(config, self.local_rank)
        self.autocast_dtype = resolve_precision(config, self.device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def setup(self, parts: Sequence[Part]) -> list[PartRuntime]:
        runtimes = []
        for part in parts:
            part.module.to(self.device)
            if part.make_optimizer is None:
                raise ValueError(f"part {part.name!r} has no optimizer factory (only DeepSpeed can supply one)")
            optimizer = part.make_optimizer(part.module)
            scheduler = part.make_scheduler(optimizer) if part.make_scheduler else None
            trainable = [p for p in part.module.parameters() if p.requires_grad]
            runtimes.append(PartRuntime(part, part.module, optimizer, scheduler, None, trainable))
        self._sync_initial_state(runtimes)
        return runtimes

    def zero_grad(self, runtime: PartRuntime) -> None:
        runtime.optimizer.zero_grad(set_to_none=True)

    def backward(self, runtime: PartRuntime, loss: torch.Tensor) -> None:
        """Mean over micro-batches: each contributes loss / grad_accumulation."""
        (loss / self.config.grad_accumulation).backward()

    def after_micro_batch(self, runtime: PartRuntime) -> None:
        return None

    def optimizer_step(self, runtime: PartRuntime, *, want_grad_norm: bool) -> torch.Tensor | None:
        self._reduce_gradients(runtime)
        grads = [p.grad for p in runtime.trainable if p.grad is not None]
        norm = None
        if self.config.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(runtime.trainable, self.config.grad_clip)
        elif want_grad_norm and grads:
            norm = torch.nn.utils.get_total_norm(grads)
        runtime.optimizer.step()
        if runtime.scheduler is not None:
            runtime.scheduler.step()
        return norm

    def after_step(self, runtimes: Sequence[PartRuntime]) -> None:
        return None

    # --- collectives (no-ops on one process) ---------------------------------------------------------
    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def broadcast_object(self, value: Any) -> Any:
        if not self.is_distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, value: Any) -> list[Any]:
        if not self.is_distributed:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def close(self) -> None:
        """The process group stays up for the life of the process: the next stage's trainer in the same
        `kedro run` reuses it (tearing it down and re-creating it on the same port is fragile)."""
        return None

    def _reduce_gradients(self, runtime: PartRuntime) -> None:
        return None

    def _sync_initial_state(self, runtimes: Sequence[PartRuntime]) -> None:
        return None


class DDPBackend(Backend):
    name = "ddp"

    def __init__(self, config: TrainerConfig) -> None:
        super().__init__(config)
        if self.world_size == 1:
            LOG.info("backend ddp with WORLD_SIZE=1: running as a single process")
            return
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        LOG.info("ddp: rank %d of %d on %s (%s)", self.rank, self.world_size, self.device, dist.get_backend())

    def _sync_initial_state(self, runtimes: Sequence[PartRuntime]) -> None:
        """Rank 0's initial weights and buffers everywhere, whatever seed each rank built its model with."""
        if not self.is_distributed:
            return
        with torch.no_grad():
            for runtime in runtimes:
                for tensor in _tensors(runtime.module):
                    dist.broadcast(tensor, src=0)

    def _reduce_gradients(self, runtime: PartRuntime) -> None:
        if not self.is_distributed:
            return
        params = runtime.trainable
        # A parameter without a gradient on every rank stays without one (the optimizer then skips it, as on
        # one process); one with a gradient somewhere gets zeros where it has none, so buckets line up.
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=self.device)
        dist.all_reduce(present)
        grads = []
        for param, count in zip(params, present.tolist()):
            if count > 0:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                grads.append(param.grad)
        for bucket in _buckets(grads):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            flat.div_(self.world_size)
            offset = 0
            for grad in bucket:
                grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
                offset += grad.numel()

    def after_step(self, runtimes: Sequence[PartRuntime]) -> None:
        if not self.is_distributed:
            return
        with torch.no_grad():
            for runtime in runtimes:
                for buffer in runtime.module.buffers():
                    dist.broadcast(buffer, src=0)


def _tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    yield from (p.data for p in module.parameters())
    yield from module.buffers()


def _buckets(grads: Sequence[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Group gradients by dtype and device into lists of at most `_BUCKET_ELEMENTS` elements."""
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for grad in grads:
        groups.setdefault((grad.dtype, grad.device), []).append(grad)
    for group in groups.values():
        bucket: list[torch.Tensor] = []
        size = 0
        for grad in group:
            if bucket and size + grad.numel() > _BUCKET_ELEMENTS:
                yield bucket
                bucket, size = [], 0
            bucket.append(grad)
            size += grad.numel()
        if bucket:
            yield bucket


def make_backend(config: TrainerConfig) -> Backend:
    if config.backend == "single":
        backend = Backend(config)
        if backend.world_size > 1:
            raise ValueError(f"backend single was launched with WORLD_SIZE={backend.world_size}: every rank would "
                             "train alone; use backend ddp or deepspeed under a launcher")
        return backend
    if config.backend == "ddp":
        return DDPBackend(config)
    from generatect_kedro.training.deepspeed_backend import DeepSpeedBackend

    return DeepSpeedBackend(config)
