"""Prompt + seed + slice count → HU volume: text → MaskGIT tokens → CT-ViT decode → cascade → HU.

**Determinism.** Every item owns one CPU ``torch.Generator`` seeded with its seed. It draws, in this order,
the item's Gumbel noise for every MaskGIT step (one (N, K) draw per step, as ``sample_tokens`` would for a
batch of one), then the cascade's stage seeds (which seed one stream per slice, `diffusion.upsample`).
Nothing random is shared between items, and nothing is padded: prompts are encoded one at a time and items
are batched only with items of the same slice count *and* token count, so a (prompt, seed, slice_count)
gives the same voxels alone or in any batch, on any rank. With a token critic (its noise comes from one
generator per call) items are sampled one by one.

**Precision.** ``precision`` (auto | fp32 | bf16; auto = bf16 on CUDA, fp32 elsewhere, as in training) runs the
transformer, the CT-ViT decode and each U-Net call under ``torch.autocast(bfloat16)``. Sampling arithmetic stays
fp32: MaskGIT logits are cast back before noise and re-masking, and the diffusion schedule and x_t updates never
run under autocast (only the U-Net call does, and its output is cast back). bf16 changes the voxels slightly,
so the precision that ran is recorded with every volume.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import numpy as np
import torch
from torch import nn

from generatect_kedro.diffusion.upsample import Cascade
from generatect_kedro.generation.geometry import OutputGeometry
from generatect_kedro.generation.models import GenerationError, LoadedModels
from generatect_kedro.models.maskgit_sampling import MaskGITSamplerConfig, gumbel_noise, sample_tokens
from generatect_kedro.volume import HUVolume, from_dhw, hu_to_int16

LOG = logging.getLogger(__name__)

__all__ = ["GenerationItem", "SamplerSettings", "VolumeSampler", "resolve_precision"]

_STAGE_KEYS = ("sampler", "steps", "cond_scale", "lowres_noise_level", "dynamic_thresholding", "threshold_percentile")
_STAGE_DEFAULTS = {"dynamic_thresholding": True, "threshold_percentile": 0.95}  # models registered before the switch
PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """'auto' → 'bf16' on CUDA, else 'fp32' (the trainer's rule); 'fp32' / 'bf16' are kept as asked."""
    if precision not in PRECISIONS:
        raise GenerationError(f"generation.sampler.precision must be one of {', '.join(PRECISIONS)}, "
                              f"got {precision!r}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def _switch(value: Any, stage_index: int) -> bool:
    if not isinstance(value, bool):
        raise GenerationError(f"generation.sampler.superres stage {stage_index + 1}: dynamic_thresholding must be "
                              f"true or false, got {value!r}")
    return value


class _Autocast(nn.Module):
    """Runs the wrapped U-Net under bf16 autocast and hands back float32, so the sampler's arithmetic is fp32."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        device_type = next(self.module.parameters()).device.type
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return self.module(*args, **kwargs).float()


@dataclass(frozen=True)
class GenerationItem:
    """One volume to generate; ``item_id`` names its files (never the prompt)."""

    item_id: str
    prompt: str
    seed: int
    slice_count: int
    row: int = 0
    index_in_row: int = 0

    def record(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "row": self.row, "index_in_row": self.index_in_row,
                "prompt": self.prompt, "seed": self.seed, "slice_count": self.slice_count}


@dataclass(frozen=True)
class SamplerSettings:
    """Effective sampler settings: the registered ones, overridden by ``generation.sampler``."""

    transformer: MaskGITSamplerConfig
    stages: tuple[dict[str, Any], ...]  # per cascade stage: the _STAGE_KEYS
    batch_size: int = 4  # items the transformer samples together
    slice_batch_size: int = 8  # axial slices per U-Net call
    precision: str = "auto"  # auto | fp32 | bf16; from_params resolves auto when the models have a device
    compile: bool = False  # torch.compile the super-resolution U-Nets (see VolumeSampler)

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None, models: LoadedModels) -> SamplerSettings:
        """``generation.sampler``: ``transformer: {steps, temperature, cond_scale, …}``, ``superres``: one mapping
        for every stage or a list (one per stage), ``batch_size``, ``slice_batch_size``, ``precision``; nulls keep
        the registered value (precision: auto). "auto" is resolved on ``models.device`` when there is one, so the
        record says what ran."""
        p = dict(params or {})
        registered = dict(models.configs["transformer"].get("sampler") or {})
        overrides = {k: v for k, v in dict(p.get("transformer") or {}).items() if v is not None}
        transformer = MaskGITSamplerConfig(**{**registered, **overrides})
        stages = list(models.configs["superres"]["stages"])
        superres = p.get("superres") or {}
        per_stage = list(superres) if isinstance(superres, Sequence) else [superres] * len(stages)
        if len(per_stage) > len(stages):
            raise GenerationError(f"generation.sampler.superres has {len(per_stage)} entries for a "
                                  f"{len(stages)}-stage cascade")
        effective = []
        for i, stage in enumerate(stages):
            values = {k: stage[k] if k in stage else _STAGE_DEFAULTS[k] for k in _STAGE_KEYS}
            extra = dict(per_stage[i]) if i < len(per_stage) and per_stage[i] else {}
            unknown = sorted(set(extra) - set(_STAGE_KEYS))
            if unknown:
                raise GenerationError(f"generation.sampler.superres: unknown key(s) {', '.join(unknown)}")
            values.update({k: v for k, v in extra.items() if v is not None})
            effective.append({"stage": i + 1, "sampler": str(values["sampler"]), "steps": int(values["steps"]),
                              "cond_scale": float(values["cond_scale"]),
                              "lowres_noise_level": float(values["lowres_noise_level"]),
                              "dynamic_thresholding": _switch(values["dynamic_thresholding"], i),
                              "threshold_percentile": float(values["threshold_percentile"])})
        batch, slices = int(p.get("batch_size", 4)), int(p.get("slice_batch_size", 8))
        if batch < 1 or slices < 1:
            raise GenerationError("generation.sampler.batch_size and slice_batch_size must be ≥ 1")
        precision = str(p.get("precision") or "auto")
        resolve_precision(precision, "cpu")  # validates
        device = getattr(models, "device", None)  # none when serving pins settings at registration: auto stays
        if device is not None:
            precision = resolve_precision(precision, device)
        compile_unets = p.get("compile", False)
        if not isinstance(compile_unets, bool):
            raise GenerationError(f"generation.sampler.compile must be true or false, got {compile_unets!r}")
        return cls(transformer, tuple(effective), batch, slices, precision, compile_unets)

    def record(self) -> dict[str, Any]:
        """The sidecar's ``sampler`` section."""
        return {"transformer": dict(dataclasses.asdict(self.transformer)), "superres": [dict(s) for s in self.stages],
                "batch_size": self.batch_size, "slice_batch_size": self.slice_batch_size, "precision": self.precision,
                "compile": self.compile}


class VolumeSampler:
    """Generates `HUVolume`s for `GenerationItem`s with loaded models (see the module docstring)."""

    def __init__(self, models: LoadedModels, settings: SamplerSettings, geometry: OutputGeometry) -> None:
        self.models, self.settings, self.geometry = models, settings, geometry
        self.hu_window = models.hu_window
        self.stage_seconds: dict[str, float] = {}
        ctvit_config = models.ctvit.config
        self.temporal_patch = int(ctvit_config.temporal_patch_size)
        self.grid_hw = tuple(int(v) for v in ctvit_config.grid_hw)
        self.max_seq_len = int(models.transformer.config.max_seq_len)
        registered = tuple(int(v) for v in models.configs["transformer"].get("grid_shape") or ())
        if registered and registered[1:] != self.grid_hw:
            raise GenerationError(f"the transformer samples {registered[1]}x{registered[2]} token slices but the "
                                  f"CT-ViT decodes {self.grid_hw[0]}x{self.grid_hw[1]}")
        self.default_slice_count = (1 + (registered[0] - 1) * self.temporal_patch) if registered else None
        self.bf16 = resolve_precision(settings.precision, models.device) == "bf16"
        base = models.cascade
        stages = [dataclasses.replace(stage, sampler=s["sampler"], steps=s["steps"], cond_scale=s["cond_scale"],
                                      lowres_noise_level=s["lowres_noise_level"],
                                      dynamic_thresholding=s["dynamic_thresholding"],
                                      threshold_percentile=s["threshold_percentile"],
                                      unet=self._unet_call(stage.unet, settings.compile))
                  for stage, s in zip(base.stages, settings.stages)]
        self.cascade = Cascade(stages)  # shares the registered U-Nets; only the sampling settings differ
        self._text: dict[str, torch.Tensor] = {}

    def _unet_call(self, unet: nn.Module, compile_unet: bool) -> nn.Module:
        """The U-Net as the sampler calls it: under bf16 autocast when asked, compiled when asked. Compiling
        costs a minute or more on the first call of each slice-batch shape (a volume's last, smaller batch is a
        second shape) and pays only over many volumes; ``benchmarks/bench_generation.py --compile`` measures it."""
        call = _Autocast(unet) if self.bf16 else unet
        return torch.compile(call, dynamic=False) if compile_unet else call

    # ---- checks ----------------------------------------------------------------------------------------

    def token_grid(self, slice_count: int) -> tuple[int, int, int]:
        """(t, h, w) for ``slice_count`` slices, or a GenerationError saying which counts are possible."""
        p, (h, w) = self.temporal_patch, self.grid_hw
        largest = 1 + (self.max_seq_len // (h * w) - 1) * p
        if isinstance(slice_count, bool) or int(slice_count) != slice_count or slice_count < 1 \
                or (slice_count - 1) % p:
            raise GenerationError(f"slice count {slice_count!r} is not 1 + {p}·k (e.g. 1, {1 + p}, {1 + 2 * p}, …)")
        t = 1 + (int(slice_count) - 1) // p
        if t * h * w > self.max_seq_len:
            raise GenerationError(f"slice count {slice_count} needs {t * h * w} tokens, more than the transformer's "
                                  f"max_seq_len {self.max_seq_len}; at most {largest} slices")
        return t, h, w

    def check(self, items: Sequence[GenerationItem]) -> None:
        for item in items:
            self.token_grid(item.slice_count)
            if not isinstance(item.prompt, str) or not item.prompt.strip():
                raise GenerationError(f"item {item.item_id} has an empty prompt")

    # ---- sampling --------------------------------------------------------------------------------------

    @contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        """Wall seconds per stage (text, tokens, decode, superres) summed in ``stage_seconds`` (CUDA synced)."""
        sync = torch.cuda.synchronize if self.models.device.type == "cuda" else (lambda: None)
        sync()
        tic = time.perf_counter()
        try:
            yield
        finally:
            sync()
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + time.perf_counter() - tic

    def _autocast(self) -> torch.autocast:
        """bf16 autocast on the models' device when the precision asks for it, else a disabled one."""
        return torch.autocast(self.models.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _embed(self, prompt: str) -> torch.Tensor:
        """(L, d) embeddings of one prompt, encoded alone (no padding, so no dependence on batch mates)."""
        if prompt not in self._text:
            with self._timed("text"):
                embeds, mask = self.models.text_encoder.encode([prompt])
            self._text[prompt] = embeds[0, : int(mask[0].sum())].float()
        return self._text[prompt]

    def generate(self, items: Sequence[GenerationItem]) -> Iterator[tuple[GenerationItem, HUVolume]]:
        """Yield (item, volume) in the items' order; transformer batches never mix slice or token counts."""
        self.check(items)
        items = list(items)
        critic = getattr(self.models.transformer, "critic", None)
        size = 1 if critic is not None else self.settings.batch_size
        for chunk in _chunks(items, lambda it: (it.slice_count, self._embed(it.prompt).shape[0]), size):
            generators = [torch.Generator().manual_seed(int(item.seed)) for item in chunk]
            with self._timed("tokens"):
                ids = self._tokens(chunk, generators, critic)
            for i, (item, generator) in enumerate(zip(chunk, generators)):
                yield item, self._volume(item, ids[i: i + 1], generator)

    @torch.no_grad()
    def _tokens(self, chunk: list[GenerationItem], generators: list[torch.Generator], critic: Any) -> torch.Tensor:
        device = self.models.device
        text = torch.stack([self._embed(item.prompt) for item in chunk]).to(device)
        mask = torch.ones(text.shape[:2], dtype=torch.bool, device=device)
        grid = self.token_grid(chunk[0].slice_count)
        critic_generator = None
        if critic is not None:  # its uniforms come from one generator per call: seed it from the item's stream
            seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generators[0]))
            critic_generator = torch.Generator(device).manual_seed(seed)

        def noise_fn(step: int, logits: torch.Tensor) -> torch.Tensor:  # noqa: ARG001 - the sampler's signature
            rows = [gumbel_noise(tuple(logits.shape[1:]), generator=g, dtype=torch.float32) for g in generators]
            return torch.stack(rows).to(device=logits.device, dtype=logits.dtype)

        with self._autocast():  # the sampler casts logits back to fp32 before its own arithmetic
            return sample_tokens(self.models.transformer, text, mask, grid, config=self.settings.transformer,
                                 critic=critic, noise_fn=noise_fn, generator=critic_generator)

    @torch.no_grad()
    def _volume(self, item: GenerationItem, ids: torch.Tensor, generator: torch.Generator) -> HUVolume:
        device = self.models.device
        with self._timed("decode"), self._autocast():
            lowres = self.models.ctvit.decode_from_ids(ids.to(device)).float().clamp(-1.0, 1.0)[0, 0]
        text = self._embed(item.prompt)[None].to(device)
        with self._timed("superres"):
            full = self.cascade(lowres, text, torch.ones(text.shape[:2], dtype=torch.bool, device=device),
                                slice_batch_size=self.settings.slice_batch_size, generator=generator)
        return self.to_hu_volume(full.float().cpu().numpy(), item)

    def to_hu_volume(self, grid_dhw: np.ndarray, item: GenerationItem | None = None) -> HUVolume:
        """A (D, H, W) grid in [-1, 1] → int16 HU in RAS+ (i, j, k) with the output geometry's affine."""
        low, high = self.hu_window
        hu = low + (np.clip(grid_dhw, -1.0, 1.0).astype(np.float64) + 1.0) * 0.5 * (high - low)
        data = from_dhw(hu_to_int16(hu))
        meta = {"generated": "true", "hu_window": f"{low},{high}"}
        if item is not None:
            meta["item_id"] = item.item_id
        return HUVolume(data, self.geometry.affine(data.shape), meta)


def _chunks(items: list[GenerationItem], key, size: int) -> Iterator[list[GenerationItem]]:
    """Runs of consecutive items with equal ``key``, cut into chunks of at most ``size``."""
    for _, group in groupby(items, key=key):
        group = list(group)
        for start in range(0, len(group), size):
            yield group[start: start + size]

