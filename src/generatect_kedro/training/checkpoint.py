"""Checkpoints that survive a kill: each one appears whole, in one rename, or not at all.

Layout of `checkpoint_dir/step-00001000/` (steps are counts of completed optimizer steps):

    model-<part>.safetensors   weights, one file per part (fp32 under DeepSpeed ZeRO, see below)
    trainer_state.pt           step, optimizer and scheduler states, rank 0's RNG states (torch, CUDA, numpy,
                               python `random`), the task's `extra_state()`; loads with torch.load(weights_only=True)
    rng-rank<r>.pt             the RNG states of rank r > 0
    deepspeed-<part>/          DeepSpeed only: `engine.save_checkpoint` output (module, ZeRO optimizer shards,
                               scheduler); resuming uses `engine.load_checkpoint` on it
    meta.json                  step, config hash, world size, backend, parts; written last

`checkpoint_dir` must be on a filesystem every rank sees (several machines: a shared one). Everything is
written into `.step-00001000.partial/` first (all ranks write their share there), then rank 0
renames it to its final name with `os.replace`. A run killed midway leaves only the hidden partial folder,
which resume ignores and the next save of that step replaces. Only the newest `keep_last` are kept.

Under DeepSpeed the resumable state is DeepSpeed's own checkpoint (its ZeRO partitions need its loader); the
safetensors files are the fp32 weights gathered from it with `deepspeed.utils.zero_to_fp32` (ZeRO 1-3) or
the module's state dict (stage 0), so the rest of the project reads every stage's weights the same way.
DeepSpeed's own files are pickles it writes and reads itself; they never come from outside.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from generatect_kedro.training.backends import Backend, PartRuntime

LOG = logging.getLogger(__name__)
FORMAT_VERSION = 1
_FINAL_NAME = re.compile(r"^step-(\d{8,})$")
TRAINER_STATE = "trainer_state.pt"
META = "meta.json"


def capture_rng() -> dict[str, Any]:
    """Every RNG a training step may draw from, in types `torch.load(weights_only=True)` accepts."""
    version, python_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["state"]), py_state["gauss"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class CheckpointManager:
    """Save, find and load the trainer's checkpoints in one folder; every rank calls every method."""

    def __init__(self, directory: str | os.PathLike, backend: Backend, *, keep_last: int) -> None:
        self.directory = Path(directory)
        self.backend = backend
        self.keep_last = keep_last

    # --- finding ---------------------------------------------------------------------------------------
    def complete_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of finished checkpoints, oldest first; partial folders and stray files are skipped."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            match = _FINAL_NAME.match(entry.name)
            if match and entry.is_dir() and (entry / META).is_file():
                found.append((int(match.group(1)), entry))
        return sorted(found)

    def latest(self) -> Path | None:
        """The newest complete checkpoint, as rank 0 sees it (all ranks must load the same one)."""
        found = self.complete_checkpoints() if self.backend.is_main else []
        path = str(found[-1][1]) if found else None
        path = self.backend.broadcast_object(path)
        return Path(path) if path else None

    def remove_all(self) -> None:
        """Start over in this folder: stale checkpoints from another run would otherwise be resumed later."""
        if self.backend.is_main and self.directory.is_dir():
            for entry in self.directory.iterdir():
                if _FINAL_NAME.match(entry.name) or _is_partial(entry.name):
                    LOG.warning("resume is off: removing old checkpoint %s", entry)
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        self.backend.barrier()

    # --- saving ----------------------------------------------------------------------------------------
    def save(self, step: int, runtimes: Sequence[PartRuntime], *, meta: dict[str, Any],
             task_state: Any = None) -> Path:
        final = self.directory / f"step-{step:08d}"
        partial = self.directory / f".step-{step:08d}.partial"
        rank = self.backend.rank
        if self.backend.is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir()
        self.backend.barrier()

        part_states: dict[str, Any] = {}
        for runtime in runtimes:
            if runtime.engine is not None:
                runtime.engine.save_checkpoint(str(partial), tag=f"deepspeed-{runtime.name}", save_latest=False)
        self.backend.barrier()
        if self.backend.is_main:
            for runtime in runtimes:
                weights = partial / f"model-{runtime.name}.safetensors"
                if runtime.engine is not None:
                    save_file(_deepspeed_fp32_state(runtime, partial), str(weights))
                else:
                    save_model(runtime.module, str(weights), force_contiguous=True)
                    part_states[runtime.name] = {
                        "optimizer": runtime.optimizer.state_dict(),
                        "scheduler": runtime.scheduler.state_dict() if runtime.scheduler is not None else None,
                    }
            state = {"step": step, "parts": part_states, "rng": capture_rng(), "task": task_state}
            torch.save(state, partial / TRAINER_STATE)
        else:
            torch.save(capture_rng(), partial / f"rng-rank{rank}.pt")
        self.backend.barrier()

        if self.backend.is_main:
            record = {"format_version": FORMAT_VERSION, "step": step, **meta}
            _write_synced(partial / META, json.dumps(record, indent=2, sort_keys=True))
            if final.exists():
                shutil.rmtree(final)
            os.replace(partial, final)
            _fsync_directory(self.directory)
            self._prune()
            LOG.info("checkpoint saved: %s", final)
        self.backend.barrier()
        return final

    def _prune(self) -> None:
        found = self.complete_checkpoints()
        for _, path in found[: max(0, len(found) - self.keep_last)] if self.keep_last else []:
            shutil.rmtree(path, ignore_errors=True)

    # --- loading ---------------------------------------------------------------------------------------
    def load(self, path: Path, runtimes: Sequence[PartRuntime], *, expected_meta: dict[str, Any],
             task: Any = None) -> dict[str, Any]:
        """Restore parts, optimizers, schedulers, task state and this rank's RNG; return the meta record."""
        meta = json.loads((path / META).read_text())
        _check_meta(path, meta, expected_meta)
        state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)
        for runtime in runtimes:
            if runtime.engine is not None:
                loaded, _ = runtime.engine.load_checkpoint(str(path), tag=f"deepspeed-{runtime.name}",
                                                           load_optimizer_states=True, load_lr_scheduler_states=True)
                if loaded is None:
                    raise RuntimeError(f"{path}: DeepSpeed could not load deepspeed-{runtime.name}")
                continue
            load_model(runtime.module, str(path / f"model-{runtime.name}.safetensors"), strict=True,
                       device=str(next(iter(runtime.module.parameters())).device))
            runtime.optimizer.load_state_dict(state["parts"][runtime.name]["optimizer"])
            if runtime.scheduler is not None:
                runtime.scheduler.load_state_dict(state["parts"][runtime.name]["scheduler"])
        if task is not None and callable(getattr(task, "load_extra_state", None)) and state.get("task") is not None:
            task.load_extra_state(state["task"])
        rank = self.backend.rank
        rng_file = path / f"rng-rank{rank}.pt"
        if rank == 0:
            restore_rng(state["rng"])
        elif rng_file.is_file():
            restore_rng(torch.load(rng_file, map_location="cpu", weights_only=True))
        else:
            LOG.warning("%s has no RNG state for rank %d (world size changed?); its random stream starts afresh",
                        path, rank)
        self.backend.barrier()
        LOG.info("resumed from %s (step %d)", path, meta["step"])
        return meta


def _check_meta(path: Path, meta: dict[str, Any], expected: dict[str, Any]) -> None:
    if meta.get("parts") != expected.get("parts"):
        raise ValueError(f"{path}: checkpoint has parts {meta.get('parts')}, the task has {expected.get('parts')}")
    if meta.get("backend_family") != expected.get("backend_family"):
        raise ValueError(f"{path}: written by backend {meta.get('backend')}, cannot resume under "
                         f"{expected.get('backend')} (DeepSpeed and plain checkpoints hold optimizer state "
                         "differently)")
    if meta.get("config_hash") != expected.get("config_hash"):
        raise ValueError(f"{path}: written with other trainer settings (config hash {meta.get('config_hash')} vs "
                         f"{expected.get('config_hash')}: batch size, accumulation, clipping, seed, precision, backend "
                         "or DeepSpeed config changed). Use a new checkpoint_dir, or set resume: false to start over.")
    if meta.get("world_size") != expected.get("world_size"):
        LOG.warning("%s: written by %s ranks, resuming on %s: the data order and per-rank RNG streams differ from an "
                    "uninterrupted run", path, meta.get("world_size"), expected.get("world_size"))


def _deepspeed_fp32_state(runtime: PartRuntime, saved_dir: Path) -> dict[str, torch.Tensor]:
    """fp32 weights of a DeepSpeed part: gathered from its ZeRO files, or the module's own for stage 0."""
    if runtime.engine.zero_optimization_stage() > 0:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(saved_dir), tag=f"deepspeed-{runtime.name}")
    else:
        state = runtime.module.state_dict()
    # safetensors refuses shared storage (tied weights): store independent contiguous copies.
    return {key: value.detach().to("cpu", torch.float32 if value.is_floating_point() else value.dtype)
            .contiguous().clone() for key, value in state.items()}


def load_part_weights(path: str | os.PathLike, part: str) -> dict[str, torch.Tensor]:
    """A part's weights from a checkpoint folder, for the stages' `export` nodes."""
    return load_file(str(Path(path) / f"model-{part}.safetensors"))


def _is_partial(name: str) -> bool:
    return name.startswith(".step-") and name.endswith(".partial")


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
