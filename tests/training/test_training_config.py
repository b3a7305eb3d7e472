"""TrainerConfig parsing, step schedules, and DeepSpeed config validation (in this process: no engine built)."""

from __future__ import annotations

from pathlib import Path

import pytest

from generatect_kedro.training import StepSchedule, TrainerConfig
from generatect_kedro.training.deepspeed_utils import (
    enable_zero_compile,
    load_deepspeed_config,
    validate_deepspeed_config,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_from_params_builds_a_typed_config_with_defaults():
    config = TrainerConfig.from_params({"max_steps": 10, "batch_size": 2, "grad_clip": 1, "backend": "ddp"})
    assert config.max_steps == 10 and config.backend == "ddp"
    assert config.grad_clip == 1.0 and isinstance(config.grad_clip, float)
    assert config.precision == "auto" and config.device == "auto" and config.resume is True


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'grad_acumulation' \(did you mean 'grad_accumulation'\?\)"):
        TrainerConfig.from_params({"max_steps": 1, "batch_size": 1, "grad_acumulation": 2},
                                  source="parameters_superres.yml: superres.trainer")


def test_invalid_values_are_all_listed():
    with pytest.raises(ValueError) as error:
        TrainerConfig.from_params({"max_steps": 0, "batch_size": 2, "device": "gpu", "grad_clip": -1.0,
                                   "precision": "fp16"})
    message = str(error.value)
    for fragment in ("max_steps=0", "device='gpu'", "grad_clip=-1.0", "precision='fp16'"):
        assert fragment in message


def test_missing_required_and_inconsistent_settings():
    with pytest.raises(ValueError, match="missing required key"):
        TrainerConfig.from_params({"batch_size": 2})
    with pytest.raises(ValueError, match="checkpoint_dir is null"):
        TrainerConfig.from_params({"max_steps": 1, "batch_size": 1, "checkpoint_every": 5})
    with pytest.raises(ValueError, match="backend=deepspeed needs"):
        TrainerConfig.from_params({"max_steps": 1, "batch_size": 1, "backend": "deepspeed"})


def test_config_hash_tracks_the_trajectory_not_the_run_length():
    base = TrainerConfig.from_params({"max_steps": 10, "batch_size": 2})
    assert base.config_hash() == base.with_overrides(max_steps=20, log_every=1, num_workers=2).config_hash()
    assert base.config_hash() != base.with_overrides(batch_size=4).config_hash()
    assert base.config_hash() != base.with_overrides(seed=1).config_hash()


def test_step_schedule():
    every_third_from_two = StepSchedule(every=3, start=2)
    assert [s for s in range(10) if every_third_from_two.is_active(s)] == [2, 5, 8]
    assert StepSchedule.from_params({"every": 2}).is_active(4)
    with pytest.raises(ValueError, match="unknown key"):
        StepSchedule.from_params({"evry": 2})


# --- DeepSpeed config validation -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def validate():
    pytest.importorskip("deepspeed")

    def run(config, **overrides):
        settings = dict(source="conf/demo/deepspeed.yml", world_size=1, micro_batch=2, grad_accumulation=2,
                        grad_clip=None, on_gpu=False, bf16_requested=False)
        settings.update(overrides)
        return validate_deepspeed_config(config, **settings)

    return run


OPTIMIZER = {"type": "AdamW", "params": {"lr": 1e-4}}


def test_validation_fills_batch_keys_and_turns_off_deepspeeds_default_clipping(validate):
    resolved = validate({"optimizer": OPTIMIZER, "zero_optimization": {"stage": 2}}, world_size=4)
    assert resolved["train_micro_batch_size_per_gpu"] == 2 and resolved["gradient_accumulation_steps"] == 2
    assert resolved["train_batch_size"] == 16
    assert resolved["gradient_clipping"] == 0.0  # DeepSpeed 0.19 would clip at 1.0 otherwise


def test_validation_rejects_a_batch_size_mismatch(validate):
    with pytest.raises(ValueError, match=r"conf/demo/deepspeed.yml: key 'train_batch_size': 12 != micro-batch 2 x "
                                         r"gradient accumulation 2 x world size 2 = 8"):
        validate({"optimizer": OPTIMIZER, "train_batch_size": 12}, world_size=2)
    with pytest.raises(ValueError,
                       match="key 'train_micro_batch_size_per_gpu': 8 disagrees with the trainer's batch_size=2"):
        validate({"optimizer": OPTIMIZER, "train_micro_batch_size_per_gpu": 8})


def test_validation_rejects_a_bad_zero_stage(validate):
    with pytest.raises(ValueError, match=r"key 'zero_optimization.stage': 4 is not a ZeRO stage \(0, 1, 2 or 3\)"):
        validate({"optimizer": OPTIMIZER, "zero_optimization": {"stage": 4}})


def test_validation_rejects_misspelled_keys(validate):
    with pytest.raises(ValueError, match=r"key 'zero_optimisation': unknown DeepSpeed setting \(did you mean "
                                         r"'zero_optimization'\?\)"):
        validate({"optimizer": OPTIMIZER, "zero_optimisation": {"stage": 2}})
    with pytest.raises(ValueError, match=r"rejected by DeepSpeed .*key 'zero_optimization.overlap_com'.*Extra inputs"):
        validate({"optimizer": OPTIMIZER, "zero_optimization": {"stage": 2, "overlap_com": True}})


def test_validation_of_precision_optimizer_and_clipping(validate):
    with pytest.raises(ValueError, match=r"key 'bf16.enabled': bf16 weights requested on CPU"):
        validate({"optimizer": OPTIMIZER, "bf16": {"enabled": True}})
    assert validate({"optimizer": OPTIMIZER, "bf16": {"enabled": True}}, bf16_requested=True)["bf16"]["enabled"]
    with pytest.raises(ValueError, match="key 'fp16.enabled'"):
        validate({"optimizer": OPTIMIZER, "fp16": {"enabled": True}}, on_gpu=True)
    with pytest.raises(ValueError, match="key 'optimizer': missing"):
        validate({"zero_optimization": {"stage": 1}})
    assert "optimizer" not in validate({"zero_optimization": {"stage": 1}}, has_client_optimizers=True)
    with pytest.raises(ValueError, match="key 'gradient_clipping': 1.0 disagrees with the trainer's grad_clip=None"):
        validate({"optimizer": OPTIMIZER, "gradient_clipping": 1.0})


def test_shipped_configs_validate():
    pytest.importorskip("deepspeed")
    paper, paper_source = load_deepspeed_config(PROJECT_ROOT / "conf/base/deepspeed.yml")
    resolved = validate_deepspeed_config(
        paper, source=paper_source, world_size=8, micro_batch=paper["train_micro_batch_size_per_gpu"],
        grad_accumulation=paper["gradient_accumulation_steps"], grad_clip=paper.get("gradient_clipping") or None,
        on_gpu=True, bf16_requested=True)
    assert resolved["zero_optimization"]["stage"] == 2 and resolved["bf16"]["enabled"]
    demo, demo_source = load_deepspeed_config(PROJECT_ROOT / "conf/demo/deepspeed.yml")
    assert not demo.get("bf16", {}).get("enabled", False)
    validate_deepspeed_config(
        demo, source=demo_source, world_size=1, micro_batch=demo["train_micro_batch_size_per_gpu"],
        grad_accumulation=demo["gradient_accumulation_steps"], grad_clip=demo.get("gradient_clipping") or None,
        on_gpu=False, bf16_requested=False)


def test_zero_compile_recipe_marks_the_shm_op_and_uses_torch_adam():
    deepspeed_ops = pytest.importorskip("deepspeed.ops")
    original = {"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}, "zero_optimization": {"stage": 2}}
    patched = enable_zero_compile(original)
    assert deepspeed_ops.__compatible_ops__["deepspeed_shm_comm"] is False
    assert patched["optimizer"]["params"] == {"lr": 1e-3, "torch_adam": True}
    assert "torch_adam" not in original["optimizer"]["params"]  # the caller's config is left alone
    assert enable_zero_compile({"zero_optimization": {"stage": 0}}) == {"zero_optimization": {"stage": 0}}
