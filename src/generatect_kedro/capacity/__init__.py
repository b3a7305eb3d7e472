"""Will a configuration fit its GPUs? Every model on the meta device, memory per stage, DeepSpeed checked.

`check_config(project_dir, env)` loads conf/base + conf/<env> as `kedro run --env` does, builds each model with
the pipelines' own parameter functions on ``torch.device("meta")`` (`meta_models`), measures activations and
generation working sets by running the real forward code on meta tensors (`measure`), adds weights, gradients,
optimizer state and ZeRO partitioning (`memory`) and compares each stage with the ``hardware`` block
(`report`). It also counts the FLOPs of every training step and of one generated volume (`flops`, `compute`)
and, with the GPU's bf16 peak, the time they take at it. Used by `generatect check-config`; the benchmarks count
their steps' FLOPs with `flops` for MFU.
"""

from generatect_kedro.capacity.memory import GIB, Hardware, MemoryEstimate, ZeroSettings
from generatect_kedro.capacity.report import CapacityReport, StageResult, check_config, load_parameters, summary

__all__ = ["GIB", "CapacityReport", "Hardware", "MemoryEstimate", "StageResult", "ZeroSettings", "check_config",
           "load_parameters", "summary"]
