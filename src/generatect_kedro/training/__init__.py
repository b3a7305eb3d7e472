"""Shared training utilities for the three GenerateCT stages: one loop, one task contract, three backends.

Public API:
    TrainerConfig            typed trainer settings, `TrainerConfig.from_params(params["trainer"])`
    Trainer, TrainingResult  `Trainer(config, name="ctvit").fit(task, dataset, collate_fn)`
    Part, StepSchedule, TrainingTask   the task contract (see `training.task`)
    validate_deepspeed_config, load_deepspeed_config, enable_zero_compile, single_process_env
    MetricsTracker, log_artifact, log_figure, log_png   MLflow helpers (rank 0, no-op without a run)
    load_part_weights        a part's safetensors weights from a checkpoint folder

Modules import torch but neither DeepSpeed nor MLflow: those load only when a run needs them.
"""

from generatect_kedro.training.checkpoint import CheckpointManager, load_part_weights
from generatect_kedro.training.config import TrainerConfig
from generatect_kedro.training.deepspeed_utils import (
    enable_zero_compile,
    load_deepspeed_config,
    single_process_env,
    validate_deepspeed_config,
)
from generatect_kedro.training.task import Part, StepSchedule, TrainingTask
from generatect_kedro.training.tracking import MetricsTracker, log_artifact, log_figure, log_png
from generatect_kedro.training.trainer import Trainer, TrainingResult

__all__ = [
    "CheckpointManager",
    "MetricsTracker",
    "Part",
    "StepSchedule",
    "Trainer",
    "TrainerConfig",
    "TrainingResult",
    "TrainingTask",
    "enable_zero_compile",
    "load_deepspeed_config",
    "load_part_weights",
    "log_artifact",
    "log_figure",
    "log_png",
    "single_process_env",
    "validate_deepspeed_config",
]
