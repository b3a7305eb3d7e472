"""`TrainerConfig`: the trainer's knobs as one typed object, built from a plain dict of Kedro parameters.

Every training stage (CT-ViT, MaskGIT, super-resolution) reads the same block, e.g. in
`conf/base/parameters_superres.yml`:

    superres:
      trainer:
        backend: deepspeed
        max_steps: 100000
        batch_size: 4
        deepspeed: conf/base/deepspeed.yml   # a path, or the DeepSpeed config inline as a mapping

Unknown keys are errors (a misspelled `grad_acumulation` must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from generatect_kedro.utils.plain import plain

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16"]
BackendName = Literal["single", "ddp", "deepspeed"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "device": ("auto", "cpu", "cuda"),
    "precision": ("auto", "fp32", "bf16"),
    "backend": ("single", "ddp", "deepspeed"),
}

# Fields that change the optimisation trajectory. A checkpoint written under other values is not resumed
# (see `config_hash`); the rest (max_steps, logging, paths, workers) may change between runs.
# The backend itself is not among them: single → ddp is a legitimate resume (the world size is checked apart).
_TRAJECTORY_FIELDS = ("precision", "batch_size", "grad_accumulation", "grad_clip", "seed")


@dataclass(frozen=True)
class TrainerConfig:
    """What the shared trainer needs to know; the model's own hyper-parameters live in the task.

    `batch_size` is per rank and per micro-batch: one optimizer step sees
    `batch_size * grad_accumulation * world_size` samples.
    """

    max_steps: int  # optimizer steps in total (a resumed run continues up to it)
    batch_size: int  # samples per micro-batch per rank
    device: Device = "auto"  # auto: cuda:LOCAL_RANK when CUDA is available, else cpu
    precision: Precision = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; bf16 on CPU only when explicit
    backend: BackendName = "single"
    grad_accumulation: int = 1  # micro-batches per optimizer step (the loss is their mean)
    grad_clip: float | None = None  # max global gradient norm; null = no clipping
    seed: int = 0  # data order and RNG streams (rank r uses seed + r)
    checkpoint_dir: str | None = None  # null = no checkpoints
    checkpoint_every: int = 0  # steps between checkpoints; 0 = only the final one
    keep_last_checkpoints: int = 3  # 0 = keep all
    resume: bool = True  # continue from the newest complete checkpoint; false deletes old ones and starts over
    log_every: int = 10  # steps between metric logs (MLflow, progress bar); metrics are averaged in between
    validate_every: int = 0  # steps between task.validate calls (and at the end); 0 = never
    num_workers: int = 0  # DataLoader worker processes; 0 = load in the training process
    show_progress: bool = True
    deepspeed: Mapping[str, Any] | str | None = None  # config mapping or a YAML/JSON path (relative to the cwd)

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                problems.append(f"{name}={getattr(self, name)!r} (expected one of {', '.join(choices)})")
        for name in ("max_steps", "batch_size", "grad_accumulation", "log_every"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                problems.append(f"{name}={value!r} (expected an integer >= 1)")
        for name in ("checkpoint_every", "keep_last_checkpoints", "validate_every", "num_workers", "seed"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                problems.append(f"{name}={value!r} (expected an integer >= 0)")
        if self.grad_clip is not None and (isinstance(self.grad_clip, bool) or
                                           not isinstance(self.grad_clip, (int, float)) or self.grad_clip <= 0):
            problems.append(f"grad_clip={self.grad_clip!r} (expected a positive number, or null for no clipping)")
        for name in ("resume", "show_progress"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name}={getattr(self, name)!r} (expected true or false)")
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, str):
            problems.append(f"checkpoint_dir={self.checkpoint_dir!r} (expected a path string or null)")
        if self.checkpoint_every and self.checkpoint_dir is None:
            problems.append("checkpoint_every is set but checkpoint_dir is null (where should checkpoints go?)")
        if self.backend == "deepspeed" and self.deepspeed is None:
            problems.append("backend=deepspeed needs `deepspeed`: a config mapping or a path to a YAML/JSON file")
        if self.deepspeed is not None and not isinstance(self.deepspeed, (str, Mapping)):
            problems.append(f"deepspeed={self.deepspeed!r} (expected a mapping or a file path)")
        if problems:
            raise ValueError("invalid trainer parameters: " + "; ".join(problems))

    @classmethod
    def from_params(cls, params: Mapping[str, Any], *, source: str = "trainer parameters") -> TrainerConfig:
        """Build from a Kedro parameters dict; unknown or missing keys raise `ValueError` naming them."""
        if not isinstance(params, Mapping):
            raise ValueError(f"{source}: expected a mapping of trainer settings, got {type(params).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), sorted(known), n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"{source}: unknown key(s) {', '.join(hints)}; known keys: {', '.join(sorted(known))}")
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(params))
        if missing:
            raise ValueError(f"{source}: missing required key(s) {', '.join(missing)}")
        values = dict(params)
        if isinstance(values.get("grad_clip"), int) and not isinstance(values["grad_clip"], bool):
            values["grad_clip"] = float(values["grad_clip"])
        if isinstance(values.get("deepspeed"), Mapping):
            values["deepspeed"] = plain(values["deepspeed"])  # OmegaConf/DictConfig → dict, hashable by json
        try:
            return cls(**values)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def config_hash(self, deepspeed_config: Mapping[str, Any] | None = None) -> str:
        """A short digest of the fields that shape the trajectory; stored with every checkpoint.

        Under DeepSpeed pass the loaded config, so that the file's content counts, not its path.
        """
        payload = {name: plain(getattr(self, name)) for name in _TRAJECTORY_FIELDS}
        if self.backend == "deepspeed":
            payload["deepspeed"] = plain(deepspeed_config if deepspeed_config is not None else self.deepspeed)
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def with_overrides(self, **changes: Any) -> TrainerConfig:
        return dataclasses.replace(self, **changes)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


__all__ = ["TrainerConfig"]
