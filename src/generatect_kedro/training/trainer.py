"""The one training loop every stage uses (CT-ViT with its discriminator, MaskGIT, super-resolution).

    config = TrainerConfig.from_params(params["trainer"])
    result = Trainer(config, name="superres").fit(task, dataset, collate_fn)

Per step: draw `grad_accumulation` micro-batches (the trainer owns the data order, see `data`), then for
each part in order whose schedule allows it: zero the gradients, run `task.loss` per micro-batch (under bf16
autocast when the precision asks for it), backward through the backend, clip, step the optimizer and its
scheduler. Then `task.after_step`, logging every `log_every` steps, `task.validate` every `validate_every`
steps, and a checkpoint every `checkpoint_every` steps and at the end. The task contract is in `task`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from generatect_kedro.training.backends import Backend, PartRuntime, make_backend
from generatect_kedro.training.checkpoint import CheckpointManager, seed_everything
from generatect_kedro.training.config import TrainerConfig
from generatect_kedro.training.data import MapDataset, ShardedOrder, micro_batches
from generatect_kedro.training.task import should_step, task_parts
from generatect_kedro.training.tracking import MetricsTracker, ProgressBar

LOG = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    """What a pipeline node needs after training: where it ended and what it logged."""

    step: int
    metrics: dict[str, float] = field(default_factory=dict)  # the last logged training metrics
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # every logged (step, metrics)
    last_checkpoint: Path | None = None
    resumed_from: Path | None = None


class Trainer:
    """Runs a task's parts on the configured backend. `name` prefixes metrics (`<name>/train/<part>/loss`)."""

    def __init__(self, config: TrainerConfig | Mapping[str, Any], *, name: str = "") -> None:
        self.config = config if isinstance(config, TrainerConfig) else TrainerConfig.from_params(config)
        self.name = name

    def fit(self, task: Any, dataset: MapDataset, collate_fn: Callable[[list[Any]], Any] | None = None
            ) -> TrainingResult:
        config = self.config
        parts = task_parts(task)
        backend = make_backend(config)
        progress: ProgressBar | None = None
        try:
            runtimes = backend.setup(parts)
            _bind_forward_modules(task, runtimes, active=None)
            result = TrainingResult(step=0)
            meta = self._meta(backend, runtimes)
            checkpoints = (CheckpointManager(config.checkpoint_dir, backend, keep_last=config.keep_last_checkpoints)
                           if config.checkpoint_dir else None)
            seed_everything(config.seed + backend.rank)
            if checkpoints is not None:
                if not config.resume:
                    checkpoints.remove_all()
                elif (latest := checkpoints.latest()) is not None:
                    result.step = int(checkpoints.load(latest, runtimes, expected_meta=meta, task=task)["step"])
                    result.resumed_from = result.last_checkpoint = latest
            tracker = MetricsTracker(self.name, enabled=backend.is_main)
            tracker.log_params({**config.to_dict(), "world_size": backend.world_size,
                                "resolved_device": str(backend.device),
                                "resolved_precision": "bf16" if backend.autocast_dtype else "fp32"})
            LOG.info("%s: training %s from step %d to %d | backend %s, world size %d, device %s, %s | "
                     "global batch %d", self.name or "trainer", [p.name for p in parts], result.step,
                     config.max_steps, backend.name, backend.world_size, backend.device,
                     "bf16 autocast" if backend.autocast_dtype else "fp32",
                     config.batch_size * config.grad_accumulation * backend.world_size)
            if result.step >= config.max_steps:
                return result
            progress = ProgressBar(total=config.max_steps, initial=result.step, description=self.name or "train",
                                   enabled=config.show_progress)
            order = ShardedOrder(len(dataset), seed=config.seed, rank=backend.rank, world_size=backend.world_size)
            batches = micro_batches(dataset, order, batch_size=config.batch_size,
                                    first_micro=result.step * config.grad_accumulation, collate_fn=collate_fn,
                                    num_workers=config.num_workers, pin_memory=backend.device.type == "cuda")
            self._loop(task, runtimes, backend, batches, checkpoints, tracker, progress, meta, result)
            return result
        finally:
            if progress is not None:
                progress.close()
            backend.close()

    def _loop(self, task: Any, runtimes: Sequence[PartRuntime], backend: Backend, batches: Iterator[Any],
              checkpoints: CheckpointManager | None, tracker: MetricsTracker, progress: ProgressBar,
              meta: dict[str, Any], result: TrainingResult) -> None:
        config = self.config
        modes = [(module, module.training) for runtime in runtimes for module in runtime.module.modules()]
        averages = _RunningMeans()
        for step in range(result.step, config.max_steps):
            done = step + 1
            log_now = done % config.log_every == 0 or done == config.max_steps
            micro = [move_to_device(next(batches), backend.device) for _ in range(config.grad_accumulation)]
            caches: list[dict[str, Any]] = [{} for _ in micro]
            for runtime in runtimes:
                if not should_step(task, runtime.part, step):
                    continue
                with _only_trainable(runtime, runtimes), _forward_through(task, runtime, runtimes):
                    backend.zero_grad(runtime)
                    for batch, cache in zip(micro, caches):
                        with backend.autocast():
                            loss, metrics = task.loss(runtime.name, batch, step, cache)
                        backend.backward(runtime, loss)
                        backend.after_micro_batch(runtime)
                        averages.add(f"{runtime.name}/loss", loss.detach())
                        for key, value in metrics.items():
                            averages.add(f"{runtime.name}/{key}", value)
                    norm = backend.optimizer_step(runtime, want_grad_norm=log_now)
                if log_now and norm is not None:  # the logged step's own norm and rate, not interval means
                    averages.add(f"{runtime.name}/grad_norm", norm)
                if log_now and (rate := runtime.learning_rate()) is not None:
                    averages.add(f"{runtime.name}/lr", rate)
            backend.after_step(runtimes)
            if callable(getattr(task, "after_step", None)):
                task.after_step(done)

            logged = None
            if log_now:
                logged = _mean_over_ranks(backend, averages.pop())
                _check_finite(logged, done, self.name)
                result.metrics = {f"train/{k}": v for k, v in logged.items()}
                tracker.log_metrics(result.metrics, done)
                result.history.append((done, result.metrics))
            progress.update(logged)

            if config.validate_every and callable(getattr(task, "validate", None)) and (
                    done % config.validate_every == 0 or done == config.max_steps):
                with torch.no_grad(), backend.autocast():
                    values = dict(task.validate(done) or {})
                for module, training in modes:
                    module.train(training)
                val = {f"val/{k}": v for k, v in _mean_over_ranks(backend, _floats(values)).items()}
                tracker.log_metrics(val, done)
                result.history.append((done, val))

            result.step = done
            if checkpoints is not None and ((config.checkpoint_every and done % config.checkpoint_every == 0)
                                            or done == config.max_steps):
                state = task.extra_state() if callable(getattr(task, "extra_state", None)) else None
                result.last_checkpoint = checkpoints.save(done, runtimes, meta=meta, task_state=state)

    def _meta(self, backend: Backend, runtimes: Sequence[PartRuntime]) -> dict[str, Any]:
        ds_config = getattr(backend, "ds_config", None)
        return {"name": self.name, "parts": [runtime.name for runtime in runtimes], "backend": backend.name,
                "backend_family": "deepspeed" if backend.name == "deepspeed" else "torch",
                "world_size": backend.world_size, "config_hash": self.config.config_hash(ds_config),
                "config": self.config.to_dict()}


class _RunningMeans:
    """Means of the values added since the last `pop`; tensors stay on their device until then."""

    def __init__(self) -> None:
        self._sums: dict[str, Any] = {}
        self._counts: dict[str, int] = {}

    def add(self, key: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().float()
        self._sums[key] = self._sums[key] + value if key in self._sums else value
        self._counts[key] = self._counts.get(key, 0) + 1

    def pop(self) -> dict[str, float]:
        means = {key: float(total) / self._counts[key] for key, total in self._sums.items()}
        self._sums, self._counts = {}, {}
        return means


def _floats(values: Mapping[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in values.items()}


def _mean_over_ranks(backend: Backend, values: dict[str, float]) -> dict[str, float]:
    """Average each metric over the ranks that report it (collective: every rank calls it on the same step)."""
    if not backend.is_distributed:
        return values
    gathered = backend.gather_objects(values)
    keys = sorted({key for item in gathered for key in item})
    return {key: sum(item[key] for item in gathered if key in item) / sum(key in item for item in gathered)
            for key in keys}


def _check_finite(metrics: Mapping[str, float], step: int, name: str) -> None:
    bad = {key: value for key, value in metrics.items() if key.endswith("loss") and not math.isfinite(value)}
    if bad:
        raise FloatingPointError(f"{name or 'trainer'}: non-finite loss at step {step}: {bad}")


@contextlib.contextmanager
def _only_trainable(active: PartRuntime, runtimes: Sequence[PartRuntime]) -> Iterator[None]:
    """Freeze the other parts while one steps: a discriminator called inside the generator loss then
    accumulates no gradients (and, under DeepSpeed, fires no ZeRO hooks)."""
    others = [param for runtime in runtimes if runtime is not active for param in runtime.trainable]
    for param in others:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param in others:
            param.requires_grad_(True)


def _bind_forward_modules(task: Any, runtimes: Sequence[PartRuntime], active: PartRuntime | None) -> None:
    """The active part runs through its wrapper (a DeepSpeed engine); every other part as its plain module.

    A DeepSpeed engine's forward pass arms hooks for its own backward pass; a frozen discriminator called
    through its engine inside the generator's loss would fire them during the generator's backward.
    """
    if callable(getattr(task, "bind_forward_modules", None)):
        task.bind_forward_modules({runtime.name: runtime.forward if runtime is active else runtime.module
                                   for runtime in runtimes})


@contextlib.contextmanager
def _forward_through(task: Any, active: PartRuntime, runtimes: Sequence[PartRuntime]) -> Iterator[None]:
    _bind_forward_modules(task, runtimes, active)
    try:
        yield
    finally:
        _bind_forward_modules(task, runtimes, None)


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors anywhere in nested dicts, lists and tuples (named tuples too) onto `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, Mapping):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_to_device(value, device) for value in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(value, device) for value in batch)
    return batch
