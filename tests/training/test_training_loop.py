"""The shared training loop on one CPU process: learning, GAN parts, accumulation, data order, checkpoints."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from generatect_kedro.training import StepSchedule, Trainer, TrainerConfig
from generatect_kedro.training.backends import Backend
from generatect_kedro.training.checkpoint import CheckpointManager
from generatect_kedro.training.data import ShardedOrder
from training_toys import Autoencoder, LinearData, Regression, weights

HERE = Path(__file__).resolve().parent


def config(**overrides) -> TrainerConfig:
    params = {"max_steps": 8, "batch_size": 4, "log_every": 1, "show_progress": False, "seed": 7}
    params.update(overrides)
    return TrainerConfig.from_params(params)


def train(task, **overrides):
    return Trainer(config(**overrides), name="toy").fit(task, LinearData())


def test_regression_loss_falls():
    torch.manual_seed(0)
    result = train(Regression(scheduler=False, lr=0.02), max_steps=60, log_every=10)
    losses = [metrics["train/net/loss"] for _, metrics in result.history]
    assert result.step == 60 and len(losses) == 6
    assert losses[-1] < 0.2 * losses[0]


def test_two_part_task_follows_its_schedule_and_learns():
    torch.manual_seed(0)
    task = Autoencoder(schedule=StepSchedule(every=2, start=1))
    result = train(task, max_steps=40, log_every=10, validate_every=20)
    assert sorted(set(task.discriminator_steps)) == list(range(1, 40, 2))
    assert task.validated_at == [20, 40]
    mse = [m["train/generator/mse"] for _, m in result.history if "train/generator/mse" in m]
    assert mse[-1] < 0.5 * mse[0]
    assert "train/discriminator/loss" in result.metrics
    # The discriminator was frozen only while the generator stepped.
    assert all(p.requires_grad for p in task.discriminator.parameters())


def test_gradient_accumulation_matches_one_large_batch():
    """Two micro-batches of b with mean loss make the same step as one batch of 2b (linear model, SGD)."""
    outcomes = []
    for batch_size, accumulation in ((3, 2), (6, 1)):
        torch.manual_seed(0)
        task = Regression(linear=True, optimizer="sgd", lr=0.05, scheduler=False)
        train(task, max_steps=3, batch_size=batch_size, grad_accumulation=accumulation)
        outcomes.append(weights(task.net))
    for key in outcomes[0]:
        torch.testing.assert_close(outcomes[0][key], outcomes[1][key], atol=1e-7, rtol=0)


def test_data_order_is_sharded_and_a_function_of_position():
    single = ShardedOrder(10, seed=3)
    ranks = [ShardedOrder(10, seed=3, rank=r, world_size=2) for r in range(2)]
    # One epoch is a permutation; two ranks with batch b see exactly what one rank with batch 2b sees.
    assert sorted(single.indices(0, 10)) == list(range(10))
    for micro in range(4):
        both_ranks = ranks[0].micro_batch(micro, 2) + ranks[1].micro_batch(micro, 2)
        assert sorted(single.micro_batch(micro, 4)) == sorted(both_ranks)
    # Epochs differ, and a fresh object (a resumed run) gives the same samples at the same position.
    assert single.indices(0, 10) != single.indices(10, 10)
    assert ShardedOrder(10, seed=3).micro_batch(7, 3) == single.micro_batch(7, 3)
    # Uneven sizes are padded by wrapping around, like DistributedSampler.
    odd = [ShardedOrder(5, seed=0, rank=r, world_size=2).indices(0, 3) for r in range(2)]
    assert len(set(odd[0] + odd[1])) == 5


def test_kill_and_resume_is_exact(tmp_path):
    """SIGKILL in the middle of step 7 (after the step-6 checkpoint), resume to 8: the same weights, bit for bit,
    as 8 uninterrupted steps. Dropout, a loss drawing from python and numpy RNGs, an LR scheduler and
    multi-epoch data order (24 samples, 8 per step) all have to be restored for that."""
    checkpoints = tmp_path / "checkpoints"
    run = ["--steps", "8", "--batch-size", "4", "--grad-accumulation", "2", "--dropout", "0.2", "--rng-noise"]
    with_checkpoints = [*run, "--checkpoint-dir", str(checkpoints), "--checkpoint-every", "3"]
    killed = subprocess.run([sys.executable, str(HERE / "training_toys.py"), *with_checkpoints, "--kill-at-step", "6",
                             "--out", str(tmp_path / "killed")], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [p.name for p in sorted(checkpoints.iterdir())] == ["step-00000003", "step-00000006"]

    # A crash during the next save would have left a hidden partial folder; it must be ignored.
    partial = checkpoints / ".step-00000009.partial"
    partial.mkdir()
    (partial / "trainer_state.pt").write_bytes(b"half a file")

    from training_toys import main as run_toy
    run_toy([*with_checkpoints, "--out", str(tmp_path / "resumed")])
    resumed = load_file(str(tmp_path / "resumed" / "weights-rank0.safetensors"))
    history = json.loads((tmp_path / "resumed" / "result-rank0.json").read_text())["history"]
    assert [step for step, _ in history] == [7, 8]  # it continued from step 6, not from scratch

    run_toy([*run, "--out", str(tmp_path / "straight")])
    straight = load_file(str(tmp_path / "straight" / "weights-rank0.safetensors"))
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key


def test_leftover_partial_and_incomplete_checkpoints_are_ignored(tmp_path):
    torch.manual_seed(0)
    train(Regression(), max_steps=4, checkpoint_dir=str(tmp_path), checkpoint_every=2)
    (tmp_path / ".step-00000006.partial").mkdir()
    (tmp_path / "step-00000008").mkdir()  # a folder without meta.json is not a checkpoint
    (tmp_path / "step-00000010.tmp").write_text("junk")
    manager = CheckpointManager(tmp_path, Backend(config()), keep_last=3)
    assert manager.latest() == tmp_path / "step-00000004"

    torch.manual_seed(0)
    result = train(Regression(), max_steps=6, checkpoint_dir=str(tmp_path), checkpoint_every=2)
    assert result.resumed_from == tmp_path / "step-00000004" and result.step == 6
    assert not (tmp_path / ".step-00000006.partial").exists()
    assert (tmp_path / "step-00000006" / "meta.json").is_file()


def test_checkpoint_contents_keep_last_and_weights_only_state(tmp_path):
    torch.manual_seed(0)
    train(Regression(), max_steps=7, checkpoint_dir=str(tmp_path), checkpoint_every=2, keep_last_checkpoints=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["step-00000006", "step-00000007"]  # every 2 steps plus the final one, newest two kept
    latest = tmp_path / "step-00000007"
    assert sorted(p.name for p in latest.iterdir()) == ["meta.json", "model-net.safetensors", "trainer_state.pt"]
    state = torch.load(latest / "trainer_state.pt", weights_only=True)
    assert state["step"] == 7 and set(state["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
    assert "optimizer" in state["parts"]["net"] and "scheduler" in state["parts"]["net"]
    meta = json.loads((latest / "meta.json").read_text())
    assert meta["step"] == 7 and meta["config_hash"] == config().config_hash() and meta["parts"] == ["net"]
    assert set(load_file(str(latest / "model-net.safetensors"))) == set(Regression().net.state_dict())


def test_resume_refuses_a_changed_config_and_resume_false_starts_over(tmp_path):
    torch.manual_seed(0)
    train(Regression(), max_steps=2, checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match="written with other trainer settings"):
        train(Regression(), max_steps=4, batch_size=2, checkpoint_dir=str(tmp_path))
    result = train(Regression(), max_steps=3, batch_size=2, checkpoint_dir=str(tmp_path), resume=False)
    assert result.resumed_from is None and sorted(p.name for p in tmp_path.iterdir()) == ["step-00000003"]
    # Resuming a finished run trains nothing and reports where it stands.
    again = train(Regression(), max_steps=3, batch_size=2, checkpoint_dir=str(tmp_path))
    assert again.step == 3 and again.history == []


def test_a_non_finite_loss_stops_training():
    class Exploding(Regression):
        def loss(self, part_name, batch, step, cache):
            loss, metrics = super().loss(part_name, batch, step, cache)
            return loss * float("nan") if step == 2 else loss, metrics

    torch.manual_seed(0)
    with pytest.raises(FloatingPointError, match="non-finite loss at step 3"):
        train(Exploding(), max_steps=5)


def test_single_backend_refuses_a_multi_rank_launch(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="backend single was launched with WORLD_SIZE=2"):
        train(Regression(), max_steps=1)


def test_worker_processes_give_the_same_batches():
    outcomes = []
    for workers in (0, 2):
        torch.manual_seed(0)
        task = Regression(scheduler=False)
        train(task, max_steps=3, num_workers=workers)
        outcomes.append(weights(task.net))
    for key in outcomes[0]:
        assert torch.equal(outcomes[0][key], outcomes[1][key])


def test_task_extra_state_is_checkpointed(tmp_path):
    class Counting(Regression):
        def __init__(self):
            super().__init__()
            self.updates = torch.zeros((), dtype=torch.int64)

        def after_step(self, step):
            self.updates += 1

        def extra_state(self):
            return {"updates": self.updates}

        def load_extra_state(self, state):
            self.updates = state["updates"].clone()

    torch.manual_seed(0)
    train(Counting(), max_steps=3, checkpoint_dir=str(tmp_path))
    task = Counting()
    train(task, max_steps=5, checkpoint_dir=str(tmp_path))
    assert int(task.updates) == 5
