"""The MaskGIT training task for the shared trainer: part `maskgit` (+ optional `critic`), validation, previews.

Batches come from cached data only: CT-ViT token ids (t, h, w) and unpadded prompt embeddings (L, d), padded
per batch with exact zeros and a mask. The loss is `masked_token_loss` with a real `cond_drop_prob`, so the
null branch that classifier-free guidance extrapolates from is trained (the release never drops text).

Validation (every ``validate_every`` steps and at the end) scores fixed random maskings of the validation
grids twice, with their text and with the null condition only: masked-token loss and accuracy of both and
``text_gain`` = null loss − conditional loss, i.e. how much the prompt tells the model. Previews (every
``preview_every`` steps and at the end) sample volumes for validation prompts with fixed seeds, decode them
with the registered CT-ViT and log tri-planar PNGs (lung + mediastinal windows) with the prompt as title.
"""

from __future__ import annotations

import logging
import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from generatect_kedro.losses.maskgit_loss import MaskSchedule, masked_token_loss, token_critic_loss
from generatect_kedro.models.maskgit import MaskGIT, MaskGITConfig
from generatect_kedro.models.maskgit_sampling import MaskGITSamplerConfig, sample_tokens
from generatect_kedro.models.token_critic import TokenCritic
from generatect_kedro.text.prompt_cache import pad_embeddings
from generatect_kedro.training import Part, TrainingTask, log_figure

__all__ = ["MaskGITTask", "MaskGITWithCritic", "OptimizerSettings", "Preview", "TokenTextDataset",
           "build_maskgit", "collate_token_text", "decode_hu"]

LOG = logging.getLogger(__name__)


class MaskGITWithCritic(MaskGIT):
    """A MaskGIT carrying its token critic as the submodule ``critic`` (state-dict keys ``critic.*``)."""

    def __init__(self, config: MaskGITConfig, critic: MaskGITConfig) -> None:
        super().__init__(config)
        self.critic = TokenCritic(critic)


def build_maskgit(config: Mapping[str, Any]) -> nn.Module:
    """Registry builder for ``kind: maskgit``: a MaskGIT (with ``.critic`` when the config has one)."""
    model = MaskGITConfig(**dict(config["model"]))
    if config.get("critic"):
        return MaskGITWithCritic(model, MaskGITConfig(**dict(config["critic"])))
    return MaskGIT(model)


# ---- data -------------------------------------------------------------------------------------------------

class TokenTextDataset:
    """Map-style dataset: item i → (ids int64 (t, h, w), text embeddings float32 (L, d)) from cached loaders.

    Deterministic per index and lazy (one small file read per item); ``cache`` keeps items after the first
    read (cohorts whose tokens fit in memory, e.g. the demo's).
    """

    def __init__(self, token_loaders: Sequence[Callable[[], Any]], text_loaders: Sequence[Callable[[], Any]],
                 cache: bool = True) -> None:
        if len(token_loaders) != len(text_loaders):
            raise ValueError("token and text loaders differ in number")
        self.token_loaders = list(token_loaders)
        self.text_loaders = list(text_loaders)
        self.cache = cache
        self._cached: dict[int, tuple[Tensor, Tensor]] = {}

    def __len__(self) -> int:
        return len(self.token_loaders)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if index in self._cached:
            return self._cached[index]
        tokens = self.token_loaders[index]()
        text = self.text_loaders[index]()
        ids = torch.from_numpy(np.asarray(getattr(tokens, "ids", tokens)).astype(np.int64))
        embeds = getattr(text, "embeds", text)
        item = (ids, torch.from_numpy(np.asarray(embeds, dtype=np.float32).copy()))
        if self.cache:
            self._cached[index] = item
        return item


def collate_token_text(items: Sequence[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """{"ids": (b, t, h, w) int64, "text": (b, L, d) zero-padded, "text_mask": (b, L) bool}."""
    text, mask = pad_embeddings([embeds for _, embeds in items])
    return {"ids": torch.stack([ids for ids, _ in items]), "text": text, "text_mask": mask}


# ---- optimisation -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OptimizerSettings:
    """Adam as released (lr 3e-5, no weight decay) with linear warm-up, then constant or cosine decay."""

    lr: float = 3.0e-5
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 10_000
    decay: str = "none"  # none | cosine (to final_lr_ratio·lr at trainer.max_steps)
    final_lr_ratio: float = 0.1
    critic_lr: float | None = None  # None: lr

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> OptimizerSettings:
        p = dict(params or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(p) - known)
        if unknown:
            raise ValueError(f"transformer.optimizer: unknown key(s) {', '.join(unknown)}; known: {sorted(known)}")
        if "betas" in p:
            p["betas"] = tuple(float(b) for b in p["betas"])
        settings = cls(**p)
        if settings.decay not in ("none", "cosine"):
            raise ValueError(f"transformer.optimizer.decay must be none or cosine, got {settings.decay!r}")
        return settings

    def adam(self, module: nn.Module, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(module.parameters(), lr=lr, betas=self.betas, weight_decay=self.weight_decay)

    def scheduler(self, optimizer: torch.optim.Optimizer, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _LRFactor(self.warmup_steps, self.decay,
                                                                      self.final_lr_ratio, max_steps))


@dataclass
class _LRFactor:
    """The LR multiplier per step; an object, not a lambda, so LambdaLR checkpoints its (plain) fields."""

    warmup_steps: int
    decay: str
    final_ratio: float
    max_steps: int

    def __call__(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "cosine" and self.max_steps > self.warmup_steps:
            progress = min(1.0, (step - self.warmup_steps) / (self.max_steps - self.warmup_steps))
            return self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0


# ---- previews ---------------------------------------------------------------------------------------------

def decode_hu(ctvit: nn.Module, ids: Tensor, hu_window: Sequence[float], batch_size: int = 8) -> np.ndarray:
    """Token ids (b, t, h, w) → HU volumes (b, D, H, W) float32 through the CT-ViT decoder (no grad)."""
    device = next(ctvit.parameters()).device
    low, high = (float(v) for v in hu_window)
    out = []
    with torch.no_grad():
        for chunk in ids.split(batch_size):
            volumes = ctvit.decode_from_ids(chunk.to(device)).float().clamp(-1, 1)[:, 0].cpu().numpy()
            out.append(low + (volumes + 1.0) * 0.5 * (high - low))
    return np.concatenate(out)


@dataclass
class Preview:
    """Validation prompts to sample at preview time, the CT-ViT that decodes them, and how to draw them."""

    ctvit: nn.Module
    prompts: list[str]
    text: Tensor  # (p, L, d)
    text_mask: Tensor  # (p, L)
    reference_ids: Tensor  # (p, t, h, w): the validation volumes' own tokens
    sampler: MaskGITSamplerConfig
    seed: int = 0
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    spacing_dhw: tuple[float, float, float] = (1.0, 1.0, 1.0)
    logged: list[str] = field(default_factory=list)


class MaskGITTask(TrainingTask):
    """Part `maskgit` (masked-token CE with text dropout); part `critic` (Token-Critic BCE) when given."""

    def __init__(self, maskgit: MaskGIT, optimizer: OptimizerSettings, max_steps: int, *,
                 cond_drop_prob: float = 0.1, levels: int = 18, schedule: MaskSchedule = "discrete",
                 critic: TokenCritic | None = None, validation: Mapping[str, Tensor] | None = None,
                 validation_seed: int = 0, validation_repeats: int = 4, preview: Preview | None = None,
                 preview_every: int = 0) -> None:
        super().__init__()
        self.maskgit = maskgit
        self.critic = critic
        self.cond_drop_prob = float(cond_drop_prob)
        self.levels = int(levels)
        self.schedule = schedule
        self.max_steps = int(max_steps)
        self.validation = validation
        self.validation_seed = int(validation_seed)
        self.validation_repeats = max(1, int(validation_repeats))
        self.preview = preview
        self.preview_every = int(preview_every)
        self.last_validation: dict[str, float] | None = None
        self.last_preview_step: int | None = None
        self._parts = [Part("maskgit", maskgit, lambda m: optimizer.adam(m, optimizer.lr),
                            lambda o: optimizer.scheduler(o, self.max_steps))]
        if critic is not None:
            critic_lr = optimizer.critic_lr or optimizer.lr
            self._parts.append(Part("critic", critic, lambda m: optimizer.adam(m, critic_lr),
                                    lambda o: optimizer.scheduler(o, self.max_steps)))

    def parts(self) -> list[Part]:
        return self._parts

    def loss(self, part_name: str, batch: Mapping[str, Tensor], step: int, cache: dict[str, Any]
             ) -> tuple[Tensor, dict]:
        kwargs = {"cond_drop_prob": self.cond_drop_prob, "levels": self.levels, "schedule": self.schedule}
        if part_name == "maskgit":
            return masked_token_loss(self.forward_module("maskgit"), batch["ids"], batch["text"],
                                     batch["text_mask"], **kwargs)
        if part_name == "critic":
            return token_critic_loss(self.forward_module("critic"), self.maskgit, batch["ids"], batch["text"],
                                     batch["text_mask"], **kwargs)
        raise KeyError(f"MaskGIT task has no part {part_name!r}")

    # ---- validation ---------------------------------------------------------------------------------------

    def validate(self, step: int) -> dict[str, float]:
        v = self.validation
        if not v:
            return {}
        self.maskgit.eval()
        device = self.maskgit.pos_emb.weight.device
        ids, text, mask = (v[k].to(device) for k in ("ids", "text", "text_mask"))
        sums: dict[str, float] = {}
        with torch.no_grad():
            for repeat in range(self.validation_repeats):
                for prefix, drop in (("", 0.0), ("null_", 1.0)):  # same maskings for both branches
                    generator = torch.Generator(device=device).manual_seed(self.validation_seed + repeat)
                    loss, metrics = masked_token_loss(self.maskgit, ids, text, mask, cond_drop_prob=drop,
                                                      generator=generator, levels=self.levels,
                                                      schedule=self.schedule)
                    for key, value in (("loss", loss), ("masked_accuracy", metrics["masked_accuracy"])):
                        sums[prefix + key] = sums.get(prefix + key, 0.0) + float(value) / self.validation_repeats
        metrics = {**sums, "text_gain": sums["null_loss"] - sums["loss"]}
        self.last_validation = {"step": float(step), **metrics}
        LOG.info("transformer step %d: validation masked-token loss %.3f (null condition %.3f, text gain %.3f), "
                 "accuracy %.3f", step, metrics["loss"], metrics["null_loss"], metrics["text_gain"],
                 metrics["masked_accuracy"])
        return metrics

    # ---- previews -----------------------------------------------------------------------------------------

    def after_step(self, step: int) -> None:
        if self.preview is not None and (step == self.max_steps or (self.preview_every and
                                                                   step % self.preview_every == 0)):
            self.log_previews(step)

    def log_previews(self, step: int) -> None:
        """Sample, decode and log one tri-planar PNG per validation prompt; never stops training."""
        p = self.preview
        if p is None or self.last_preview_step == step:
            return
        self.last_preview_step = step
        try:
            self._log_previews(step, p)
        except Exception as error:  # a preview must never stop training
            LOG.warning("could not log transformer previews at step %d: %s", step, error)

    def _log_previews(self, step: int, p: Preview) -> None:
        from generatect_kedro.pipelines.transformer.conditioning import seeded_gumbel
        from generatect_kedro.visualize import triplanar_figure

        device = self.maskgit.pos_emb.weight.device
        seeds = [p.seed + i for i in range(len(p.prompts))]
        grid = tuple(int(s) for s in p.reference_ids.shape[1:])
        ids = sample_tokens(self.maskgit, p.text.to(device), p.text_mask.to(device), grid, config=p.sampler,
                            critic=self.critic, noise_fn=seeded_gumbel(seeds),
                            generator=torch.Generator(device=device).manual_seed(p.seed))
        samples = decode_hu(p.ctvit, ids.cpu(), p.hu_window)
        references = decode_hu(p.ctvit, p.reference_ids, p.hu_window)
        for i, prompt in enumerate(p.prompts):
            title = "\n".join(textwrap.wrap(f"step {step}, seed {seeds[i]}: {prompt}", 90))
            figure = triplanar_figure({"sample": samples[i], "val. volume (CT-ViT)": references[i]},
                                      spacing_dhw=p.spacing_dhw, title=title)
            name = f"transformer/previews/step_{step:07d}_prompt{i + 1}.png"
            if log_figure(figure, name):
                p.logged.append(name)
