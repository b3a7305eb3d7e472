"""DeepSpeed helpers: load and validate a config from `conf/`, and the one place with the CPU zero-compile recipe.

Launching (the trainer reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set by the launcher;
run the data pipelines once beforehand, so that only training runs on every rank):

    # 8 GPUs on one machine, DeepSpeed launcher (`--module` runs `python -m kedro` on every rank):
    deepspeed --num_gpus 8 --module kedro run --pipelines superres
    # the same with torchrun:
    torchrun --nproc_per_node 8 -m kedro run --pipelines superres
    # several machines: add --hostfile (deepspeed) or --nnodes/--node_rank/--rdzv_endpoint (torchrun).

Every rank runs the whole `kedro run`: keep other pipelines out of it, and expect kedro-mlflow to open a run
per rank unless the project's hooks switch it off where RANK != 0 (the trainer itself logs from rank 0 only).

with `backend: deepspeed` and `deepspeed: conf/base/deepspeed.yml` in the stage's trainer parameters.
`backend: ddp` is launched the same way with torchrun. Without a launcher, a single process works too:
`single_process_env()` gives the variables DeepSpeed insists on (tests and the CPU demo use it).

Validation happens when the run starts, before `deepspeed.initialize`: our checks (batch sizes against the
trainer config and the real world size, ZeRO stage, bf16 only on GPU unless `precision: bf16` is set
explicitly, fp16 refused, an optimizer present, misspelled top-level keys), then DeepSpeed's own
`DeepSpeedConfig` (pydantic: misspelled nested keys, bad enum values). Every failure is a `ValueError`
naming the file, the key and the reason.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import json
import logging
import os
import socket
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

# Top-level keys DeepSpeed reads that are not string constants in the modules scanned below.
_EXTRA_TOP_LEVEL_KEYS = {
    "compile", "pipeline", "hybrid_engine", "weight_quantization", "tensor_parallel", "tensorboard", "wandb",
    "csv_monitor", "comet", "aio", "torch_autocast", "zero_optimization", "data_efficiency", "autotuning",
    "flops_profiler", "activation_checkpointing", "comms_logger", "checkpoint", "data_types",
    "sequence_parallel_size", "expert_parallel", "zenflow", "dist_backend",
}
# DeepSpeed's pydantic models name themselves in errors; users know the config section instead.
_SECTION_OF_MODEL = {
    "DeepSpeedZeroConfig": "zero_optimization",
    "DeepSpeedZeroOffloadOptimizerConfig": "zero_optimization.offload_optimizer",
    "DeepSpeedZeroOffloadParamConfig": "zero_optimization.offload_param",
    "DeepSpeedBF16Config": "bf16",
    "DeepSpeedFP16Config": "fp16",
    "CompileConfig": "compile",
}
_CONSTANT_MODULES = (
    "deepspeed.runtime.constants", "deepspeed.runtime.zero.config", "deepspeed.profiling.constants",
    "deepspeed.autotuning.constants", "deepspeed.runtime.data_pipeline.constants", "deepspeed.checkpoint.constants",
    "deepspeed.runtime.activation_checkpointing.config", "deepspeed.comm.constants",
    "deepspeed.runtime.swap_tensor.constants", "deepspeed.monitor.config", "deepspeed.runtime.precision_config",
)


def enable_zero_compile(config: Mapping[str, Any]) -> dict[str, Any]:
    """CPU only: make DeepSpeed build no C++ op, and return the config with plain torch Adam(W).

    Two JIT builds happen otherwise on first use (~75 s, and a compiler is needed): the shared-memory
    allreduce (`deepspeed_shm_comm`) and `fused_adam`. `deepspeed.ops.__compatible_ops__` is a lazily built,
    cached dict that DeepSpeed consults before building the shm op, so marking it incompatible makes
    communication fall back to plain gloo; `torch_adam: true` makes the Adam/AdamW optimizer block use
    `torch.optim`. This leans on a DeepSpeed internal, which is why it lives here alone and has a test.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    config = copy.deepcopy(dict(config))
    optimizer = config.get("optimizer")
    if isinstance(optimizer, Mapping) and str(optimizer.get("type", "")).lower() in {"adam", "adamw"}:
        params = dict(optimizer.get("params") or {})
        if params.get("torch_adam") is False:
            LOG.warning("deepspeed optimizer.params.torch_adam is false: DeepSpeed will JIT-compile fused_adam")
        else:
            params["torch_adam"] = True
        config["optimizer"] = {**optimizer, "params": params}
    return config


def load_deepspeed_config(source: Mapping[str, Any] | str | os.PathLike) -> tuple[dict[str, Any], str]:
    """The config as a plain dict, and a label for error messages (the file path, or 'inline config')."""
    if isinstance(source, Mapping):
        return json.loads(json.dumps(dict(source))), "inline deepspeed config"
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"deepspeed config file {path} does not exist")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: a DeepSpeed config must be a mapping at the top level")
    return dict(data), str(path)


def validate_deepspeed_config(config: Mapping[str, Any], *, source: str, world_size: int, micro_batch: int,
                              grad_accumulation: int, grad_clip: float | None, on_gpu: bool,
                              bf16_requested: bool, has_client_optimizers: bool = False,
                              has_client_schedulers: bool = False) -> dict[str, Any]:
    """Check `config` against the trainer settings and DeepSpeed's schema; return it completed.

    `bf16_requested` is true when the trainer's precision is `bf16`, explicitly or by `auto` on a GPU.
    Missing batch and clipping keys are filled from the trainer config; present ones must agree with it.
    """
    config = copy.deepcopy(dict(config))

    def fail(key: str, reason: str) -> ValueError:
        return ValueError(f"{source}: key '{key}': {reason}")

    _check_top_level_keys(config, source)
    for key, value in (("train_micro_batch_size_per_gpu", micro_batch),
                       ("gradient_accumulation_steps", grad_accumulation)):
        if key in config and config[key] != value:
            trainer_key = "batch_size" if key.startswith("train_micro") else "grad_accumulation"
            raise fail(key, f"{config[key]!r} disagrees with the trainer's {trainer_key}={value}")
        config[key] = value
    expected_total = micro_batch * grad_accumulation * world_size
    if "train_batch_size" in config and config["train_batch_size"] != expected_total:
        raise fail("train_batch_size", f"{config['train_batch_size']!r} != micro-batch {micro_batch} x gradient "
                   f"accumulation {grad_accumulation} x world size {world_size} = {expected_total}")
    config["train_batch_size"] = expected_total

    zero = config.get("zero_optimization", {})
    if not isinstance(zero, Mapping):
        raise fail("zero_optimization", "expected a mapping such as {stage: 2}")
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise fail("zero_optimization.stage", f"{stage!r} is not a ZeRO stage (0, 1, 2 or 3)")

    if _enabled(config.get("fp16")):
        raise fail("fp16.enabled", "fp16 is not supported by this trainer (no loss scaling path); use bf16 on GPU")
    if _enabled(config.get("bf16")):
        if not bf16_requested:
            where = "on CPU (set the trainer's precision: bf16 explicitly to allow it)" if not on_gpu else \
                "while the trainer's precision is fp32"
            raise fail("bf16.enabled", f"bf16 weights requested {where}")
    # DeepSpeed 0.19 clips at 1.0 when the key is absent; the trainer's grad_clip (null = off) is the truth.
    wanted_clip = float(grad_clip) if grad_clip is not None else 0.0
    if "gradient_clipping" in config and float(config["gradient_clipping"] or 0.0) != wanted_clip:
        raise fail("gradient_clipping", f"{config['gradient_clipping']!r} disagrees with the trainer's "
                   f"grad_clip={grad_clip} (null means no clipping, i.e. gradient_clipping: 0)")
    config["gradient_clipping"] = wanted_clip

    optimizer = config.get("optimizer")
    if optimizer is None and not has_client_optimizers:
        raise fail("optimizer", "missing: add an optimizer block (e.g. AdamW with torch_adam) or give every "
                   "part an optimizer factory")
    if optimizer is not None and (not isinstance(optimizer, Mapping) or "type" not in optimizer):
        raise fail("optimizer", "expected a mapping with 'type' and 'params'")
    if config.get("scheduler") is not None and has_client_schedulers:
        raise fail("scheduler", "both this block and the task's scheduler factory are set; keep one")

    _check_with_deepspeed(config, source)
    return config


def _enabled(block: Any) -> bool:
    return isinstance(block, Mapping) and bool(block.get("enabled", False))


def _check_top_level_keys(config: Mapping[str, Any], source: str) -> None:
    """DeepSpeed ignores unknown top-level keys; a near-miss of a known key is almost surely a typo."""
    known = _known_top_level_keys()
    for key in config:
        if key in known:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.8)
        if close:
            raise ValueError(f"{source}: key '{key}': unknown DeepSpeed setting (did you mean '{close[0]}'?)")
        LOG.warning("%s: key '%s' is not a DeepSpeed setting this check knows; DeepSpeed may ignore it", source, key)


@lru_cache(maxsize=1)
def _known_top_level_keys() -> frozenset[str]:
    keys = set(_EXTRA_TOP_LEVEL_KEYS)
    for name in _CONSTANT_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        keys.update(v for k, v in vars(module).items() if k.isupper() and isinstance(v, str) and v)
    return frozenset(keys)


def _check_with_deepspeed(config: dict[str, Any], source: str) -> None:
    """DeepSpeed's own schema. `train_batch_size` is left out: we checked it against the real world size,
    while `DeepSpeedConfig` assumes the world of an uninitialised process (1)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    probe = {k: v for k, v in config.items() if k != "train_batch_size"}
    try:
        DeepSpeedConfig(probe)
    except Exception as error:  # pydantic ValidationError, AssertionError, DeepSpeedConfigError, ValueError
        errors = getattr(error, "errors", None)
        if callable(errors):
            model = getattr(error, "title", "")
            prefix = [_SECTION_OF_MODEL[model]] if model in _SECTION_OF_MODEL else []
            reasons = [f"key '{'.'.join(str(p) for p in [*prefix, *e.get('loc', ())])}': {e.get('msg')}"
                       for e in errors()]
            raise ValueError(f"{source}: rejected by DeepSpeed ({model or 'config'}): " + "; ".join(reasons)) from None
        raise ValueError(f"{source}: rejected by DeepSpeed: {error}") from None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def single_process_env(port: int | None = None) -> dict[str, str]:
    """The torch.distributed variables for a one-process "world" (DeepSpeed needs them even then)."""
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port or free_port()),
            "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
