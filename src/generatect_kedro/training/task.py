"""The task contract: what a training stage hands the shared trainer so that no stage owns a loop.

A task is a small object with

- `parts()` -> the trainable parts **in the order they step** (CT-ViT: `generator`, then `discriminator`;
  MaskGIT and super-resolution: one part). Each `Part` names its module, an optimizer factory, an optional
  LR-scheduler factory and an optional `StepSchedule` (e.g. "discriminator every 3 steps, from step 1000").
- `loss(part_name, batch, step, cache) -> (loss, metrics)`: the scalar loss for that part on one micro-batch.
  `cache` is a dict shared by all parts for that micro-batch within one step, so the generator can leave its
  reconstruction (detached) for the discriminator. `step` is the number of optimizer steps completed before
  this one (0-based). `metrics` maps names to floats or 0-d tensors (the trainer averages and logs them).

Optional hooks (found by name, so a plain class works too; `TrainingTask` gives defaults, and a plain class
that wants the DeepSpeed engines defines `bind_forward_modules(modules)` as `TrainingTask` does):

- `should_step(part_name, step) -> bool`: skip a part on some steps (default: the part's `schedule`).
- `validate(step) -> metrics`: called every `validate_every` steps and at the end, on every rank.
- `after_step(step)`: after all parts stepped (EMA updates, sample previews). `step` counts completed steps.
- `extra_state()` / `load_extra_state(state)`: task state outside the parts (e.g. EMA weights) saved with
  each checkpoint; tensors, numbers, strings, lists and dicts only (read back with `torch.load(weights_only=True)`).
  (Not `state_dict`: a task that is itself an `nn.Module` has one already, with all the parts' weights in it.)

Inside `loss`, run forward passes through `self.forward_module(name)`, not the raw modules: for the part
being stepped that is its DeepSpeed engine under DeepSpeed (whose forward pass arms ZeRO's gradient hooks),
for every other part the plain module. The other parts' parameters are frozen (`requires_grad=False`) while
a part steps, so calling the discriminator inside the generator loss costs no discriminator gradients; the
trainer restores the flags afterwards. Whatever a part leaves in `cache` for a later part must be detached.

Example (one part):

    class Regression(TrainingTask):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def parts(self):
            return [Part("net", self.net, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3))]

        def loss(self, part_name, batch, step, cache):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.forward_module("net")(x), y)
            return loss, {"mse": loss.detach()}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
LossResult = tuple[torch.Tensor, Mapping[str, Any]]


@dataclass(frozen=True)
class StepSchedule:
    """When a part steps: from step `start` on, every `every`-th step (steps are 0-based).

    `StepSchedule(every=3)` is the released CT-ViT's "one discriminator step per three generator steps";
    `StepSchedule(start=10_000)` is "train the discriminator only after step 10k".
    """

    every: int = 1
    start: int = 0

    def __post_init__(self) -> None:
        if self.every < 1 or self.start < 0:
            raise ValueError(f"StepSchedule needs every >= 1 and start >= 0, got every={self.every}, "
                             f"start={self.start}")

    @classmethod
    def from_params(cls, params: Mapping[str, int] | None) -> StepSchedule:
        params = dict(params or {})
        unknown = sorted(set(params) - {"every", "start"})
        if unknown:
            raise ValueError(f"step schedule: unknown key(s) {', '.join(unknown)}; known keys: every, start")
        return cls(**params)

    def is_active(self, step: int) -> bool:
        return step >= self.start and (step - self.start) % self.every == 0


@dataclass
class Part:
    """One trainable module with its optimizer.

    `make_optimizer(module)` is called after the module is on its device; it may be `None` only under
    DeepSpeed when the DeepSpeed config has an `optimizer` block. `make_scheduler(optimizer)` is stepped
    once per optimizer step.
    """

    name: str
    module: nn.Module
    make_optimizer: OptimizerFactory | None
    make_scheduler: SchedulerFactory | None = None
    schedule: StepSchedule = field(default_factory=StepSchedule)


@runtime_checkable
class TaskProtocol(Protocol):
    def parts(self) -> Sequence[Part]: ...

    def loss(self, part_name: str, batch: Any, step: int, cache: dict[str, Any]) -> LossResult: ...


class TrainingTask:
    """Optional base class: default hooks plus `forward_module`, which the trainer points at its wrappers."""

    def __init__(self) -> None:
        self._forward_modules: dict[str, Callable[..., Any]] = {}

    def parts(self) -> Sequence[Part]:
        raise NotImplementedError

    def loss(self, part_name: str, batch: Any, step: int, cache: dict[str, Any]) -> LossResult:
        raise NotImplementedError

    def should_step(self, part_name: str, step: int) -> bool:
        return self._part(part_name).schedule.is_active(step)

    def validate(self, step: int) -> Mapping[str, Any]:
        return {}

    def after_step(self, step: int) -> None:
        return None

    def bind_forward_modules(self, modules: Mapping[str, Callable[..., Any]]) -> None:
        """Called by the trainer around each part's step with what `forward_module` should return."""
        self._forward_modules = dict(modules)

    def forward_module(self, name: str) -> Callable[..., Any]:
        if name in self._forward_modules:
            return self._forward_modules[name]
        return self._part(name).module

    def _part(self, name: str) -> Part:
        for part in self.parts():
            if part.name == name:
                return part
        raise KeyError(f"task has no part named {name!r}")


def task_parts(task: Any) -> list[Part]:
    """The task's parts, checked: unique names, modules, and optimizer factories where needed."""
    if not callable(getattr(task, "parts", None)) or not callable(getattr(task, "loss", None)):
        raise TypeError(f"{type(task).__name__} is not a training task: it needs parts() and loss(...)")
    parts = list(task.parts())
    if not parts:
        raise ValueError(f"{type(task).__name__}.parts() returned no parts")
    names = [part.name for part in parts]
    if len(set(names)) != len(names):
        raise ValueError(f"{type(task).__name__}.parts() has duplicate part names: {names}")
    seen: dict[int, str] = {}
    for part in parts:
        if not isinstance(part.module, nn.Module):
            raise TypeError(f"part {part.name!r}: module must be a torch.nn.Module, got {type(part.module).__name__}")
        for param in part.module.parameters():
            if id(param) in seen and seen[id(param)] != part.name:
                raise ValueError(f"parts {seen[id(param)]!r} and {part.name!r} share parameters; "
                                 "parts must be disjoint")
            seen[id(param)] = part.name
    return parts


def should_step(task: Any, part: Part, step: int) -> bool:
    """The task's `should_step` hook when it has its own, else the part's schedule."""
    hook = getattr(type(task), "should_step", None)
    if hook is None or hook is TrainingTask.should_step:
        return part.schedule.is_active(step)
    return bool(task.should_step(part.name, step))
