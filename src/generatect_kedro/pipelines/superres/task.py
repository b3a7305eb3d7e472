"""The super-resolution training task (one cascade stage) for the shared trainer, its EMA, and the cascade
layout that the registry rebuilds.

One part, ``unet``, trained with the released objective (`diffusion.loss.superres_v_loss`: v-prediction,
p2 weighting, noise-augmented low-res condition, text dropped with ``cond_drop_prob``). An exponential
moving average of the weights is task state (``after_step`` / ``extra_state``): sampling, previews,
evaluation and the registered model use the EMA weights, as the release does. Optional random crops
(``crop``: the target crop side) train a fully convolutional U-Net on part of each slice, as Imagen trains
its super-resolution stages; sampling always runs on whole slices.

Validation (every ``validate_every`` steps and at the end) scores a fixed set of validation slices with
fixed noise draws (online and EMA loss), and upsamples a few of them with the EMA weights to log an axial
montage (low-res input, trilinear, diffusion, ground truth) and their PSNR / high-frequency share.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from generatect_kedro.diffusion import Cascade, CascadeStage, PerSampleNoise, draw_loss_randomness
from generatect_kedro.diffusion.loss import superres_v_loss
from generatect_kedro.diffusion.upsample import upsample_slices
from generatect_kedro.io.rank_aware import local_rank, world_size
from generatect_kedro.metrics import psnr_hu, to_hu
from generatect_kedro.metrics.frequency import high_frequency_scores
from generatect_kedro.models.unet import UNet, UNetConfig
from generatect_kedro.pipelines.superres.data import StageGeometry, trilinear_upsample
from generatect_kedro.training import Part, TrainerConfig, TrainingTask, log_figure
from generatect_kedro.utils.plain import plain

__all__ = ["EMA", "OptimizerSettings", "StageSettings", "SuperresTask", "ValidationSlices", "axial_montage",
           "build_cascade", "check_deepspeed", "stage_config", "trainer_config"]

LOG = logging.getLogger(__name__)
CASCADE_KIND = "superres_cascade"


# ---- settings ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OptimizerSettings:
    """Adam as released for super-resolution: lr 5e-4, betas (0.9, 0.99), no weight decay."""

    lr: float = 5.0e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> OptimizerSettings:
        p = dict(params or {})
        unknown = sorted(set(p) - {"lr", "betas", "weight_decay"})
        if unknown:
            raise ValueError(f"superres.optimizer: unknown key(s) {', '.join(unknown)}")
        return cls(lr=float(p.get("lr", cls.lr)), betas=tuple(float(b) for b in p.get("betas", cls.betas)),
                   weight_decay=float(p.get("weight_decay", cls.weight_decay)))

    def adam(self, module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(module.parameters(), lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)


@dataclass(frozen=True)
class StageSettings:
    """One cascade stage from ``superres.stages[i]`` (the shared ``superres.unet`` under its own ``unet``)."""

    geometry: StageGeometry
    unet: UNetConfig
    sampler: str = "ancestral"
    steps: int = 25
    lowres_noise_level: float = 0.1  # the release's fixed augmentation level at sampling
    cond_scale: float = 1.0  # the release samples without guidance
    resize_mode: str = "nearest"
    dynamic_thresholding: bool = True  # sampling: Imagen's dynamic thresholding of x̂₀ (as released) or, off, a clamp
    threshold_percentile: float = 0.95  # its quantile of |x̂₀| (released: 0.95)
    crop: int | None = None  # training crop side on the target grid; null = whole slices
    trainer: dict[str, Any] = field(default_factory=dict)  # overrides of superres.trainer for this stage

    def __post_init__(self) -> None:
        g, factor = self.geometry, self.unet.downsample_factor
        where = f"superres.stages[{g.index}]"
        side = self.crop or min(g.output_hw)
        if any(s % factor for s in (*g.output_hw, side)):
            raise ValueError(f"{where}: output {g.output_hw} (crop {self.crop}) must be multiples of the U-Net's "
                             f"downsample factor {factor} (2 ** len(dim_mults))")
        if self.crop is not None and (self.crop % g.scale or self.crop > min(g.output_hw)):
            raise ValueError(f"{where}: crop {self.crop} must divide by the scale {g.scale} and fit {g.output_hw}")
        if not isinstance(self.dynamic_thresholding, bool):
            raise ValueError(f"{where}: dynamic_thresholding must be true or false, got {self.dynamic_thresholding!r}")
        if not 0.0 < float(self.threshold_percentile) <= 1.0:
            raise ValueError(f"{where}: threshold_percentile must be in (0, 1], got {self.threshold_percentile}")

    def to_config(self) -> dict[str, Any]:
        """The stage as the registry records it (the builder's input)."""
        g = self.geometry
        return {"scale": g.scale, "input_hw": list(g.input_hw), "output_hw": list(g.output_hw),
                "unet": plain(self.unet.to_dict()), "sampler": self.sampler, "steps": self.steps,
                "lowres_noise_level": self.lowres_noise_level, "cond_scale": self.cond_scale,
                "resize_mode": self.resize_mode, "dynamic_thresholding": self.dynamic_thresholding,
                "threshold_percentile": float(self.threshold_percentile)}


def stage_config(params: Mapping[str, Any], geometry: StageGeometry, text_dim: int) -> StageSettings:
    """``superres.stages[i]`` (+ ``superres.unet`` defaults) with the text width taken from the embeddings."""
    stage = dict((params.get("stages") or [])[geometry.index])
    unet = {**dict(params.get("unet") or {}), **dict(stage.pop("unet", None) or {})}
    if unet.setdefault("text_embed_dim", text_dim) != text_dim:
        raise ValueError(f"superres unet.text_embed_dim {unet['text_embed_dim']} differs from the cached prompt "
                         f"embeddings' {text_dim}; leave it unset")
    stage.pop("scale", None)
    known = {"sampler", "steps", "lowres_noise_level", "cond_scale", "resize_mode", "dynamic_thresholding",
             "threshold_percentile", "crop", "trainer"}
    unknown = sorted(set(stage) - known)
    if unknown:
        raise ValueError(f"superres.stages[{geometry.index}]: unknown key(s) {', '.join(unknown)}; "
                         f"known: scale, unet, {', '.join(sorted(known))}")
    trainer = dict(stage.pop("trainer", None) or {})
    return StageSettings(geometry=geometry, unet=UNetConfig(**unet), trainer=trainer, **stage)


def build_cascade(config: Mapping[str, Any]) -> Cascade:
    """The registry builder for kind ``superres_cascade``: a `Cascade` of fresh U-Nets (``unets.<i>.*``).
    Configs registered before the thresholding keys existed sample as released (dynamic, 0.95)."""
    stages = []
    for stage in config["stages"]:
        stages.append(CascadeStage(
            unet=UNet(UNetConfig(**dict(stage["unet"]))), scale=int(stage["scale"]), sampler=str(stage["sampler"]),
            steps=int(stage["steps"]), lowres_noise_level=float(stage["lowres_noise_level"]),
            cond_scale=float(stage["cond_scale"]), resize_mode=str(stage["resize_mode"]),
            dynamic_thresholding=bool(stage.get("dynamic_thresholding", True)),
            threshold_percentile=float(stage.get("threshold_percentile", 0.95))))
    return Cascade(stages)


# ---- trainer settings --------------------------------------------------------------------------------

def trainer_config(params: Mapping[str, Any], stage: StageSettings, identity: str) -> TrainerConfig:
    values = {**dict(params["trainer"]), **stage.trainer}
    if values.get("checkpoint_dir"):
        values["checkpoint_dir"] = str(Path(values["checkpoint_dir"]) / identity / f"stage-{stage.geometry.index + 1}")
    return TrainerConfig.from_params(values, source=f"superres.trainer (stage {stage.geometry.index + 1})")


def check_deepspeed(config: TrainerConfig, optimizer: OptimizerSettings) -> None:
    """The DeepSpeed config (file or inline) against the trainer block and the optimizer parameters, before
    anything trains: a ValueError naming the file and the key. ZeRO-3 is refused (the EMA needs whole
    parameters on every rank); an optimizer block must say what ``superres.optimizer`` says."""
    if config.backend != "deepspeed":
        return
    from generatect_kedro.training.backends import resolve_device, resolve_precision
    from generatect_kedro.training.deepspeed_utils import load_deepspeed_config, validate_deepspeed_config

    ds_config, source = load_deepspeed_config(config.deepspeed)
    device = resolve_device(config, local_rank())
    validate_deepspeed_config(ds_config, source=source, world_size=world_size(), micro_batch=config.batch_size,
                              grad_accumulation=config.grad_accumulation, grad_clip=config.grad_clip,
                              on_gpu=device.type == "cuda",
                              bf16_requested=resolve_precision(config, device) == torch.bfloat16,
                              has_client_optimizers=True)
    if (ds_config.get("zero_optimization") or {}).get("stage", 0) == 3:
        raise ValueError(f"{source}: key 'zero_optimization.stage': 3 partitions the parameters, but the super-"
                         "resolution EMA needs them whole on every rank; use stage 2")
    block = ds_config.get("optimizer")
    if block is not None:
        kind, given = str(block.get("type", "")).lower(), dict(block.get("params") or {})
        if kind not in ("adam", "adamw"):
            raise ValueError(f"{source}: key 'optimizer.type': {block.get('type')!r}; super-resolution trains "
                             "with Adam (superres.optimizer) — use Adam/AdamW or drop the block")
        defaults = {"lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.01 if kind == "adamw" else 0.0}
        wanted = {"lr": optimizer.lr, "betas": list(optimizer.betas), "weight_decay": optimizer.weight_decay}
        for key, value in wanted.items():
            if _numbers(given.get(key, defaults[key])) != _numbers(value):
                raise ValueError(f"{source}: key 'optimizer.params.{key}': {given.get(key, defaults[key])!r} "
                                 f"disagrees with superres.optimizer.{key}={value!r} (DeepSpeed would use the file's)")


def _numbers(value: Any) -> Any:
    try:
        return [float(v) for v in value] if isinstance(value, (list, tuple)) else float(value)
    except (TypeError, ValueError):
        return value


# ---- EMA -----------------------------------------------------------------------------------------------

class EMA:
    """fp32 moving average of a module's parameters: decay min(beta, (1 + n) / (10 + n)) after n updates
    (a short warm-up), one update every ``update_every`` steps from ``start_step`` (a copy before that)."""

    def __init__(self, module: nn.Module, beta: float = 0.9999, update_every: int = 10, start_step: int = 0):
        if not 0.0 <= beta < 1.0 or update_every < 1 or start_step < 0:
            raise ValueError(f"EMA needs 0 <= beta < 1, update_every >= 1, start_step >= 0; got {beta}, "
                             f"{update_every}, {start_step}")
        self.beta, self.update_every, self.start_step = float(beta), int(update_every), int(start_step)
        self.shadow = {name: p.detach().float().clone() for name, p in module.named_parameters()}
        self.updates = 0

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        params = dict(module.named_parameters())
        if step <= self.start_step:
            for name, value in self.shadow.items():
                value.copy_(params[name].detach().float())
            return
        if step % self.update_every:
            return
        decay = min(self.beta, (1.0 + self.updates) / (10.0 + self.updates))
        for name, value in self.shadow.items():
            value.lerp_(params[name].detach().float(), 1.0 - decay)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": {k: v.cpu() for k, v in self.shadow.items()}, "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
        self.updates = int(state["updates"])

    def weights(self, module: nn.Module) -> dict[str, Tensor]:
        """The module's state dict with the averaged parameters (fp32, CPU)."""
        state = {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
        state.update({k: v.cpu().clone() for k, v in self.shadow.items()})
        return state


# ---- validation ----------------------------------------------------------------------------------------

@dataclass
class ValidationSlices:
    """A fixed batch of validation slices (as `collate_slice_pairs` makes it) and what to preview."""

    batch: dict[str, Tensor]
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    preview_slices: int = 3  # the first n slices of the batch are upsampled and drawn; 0 = none
    seed: int = 0


def axial_montage(columns: Mapping[str, Sequence[np.ndarray]], *, title: str | None = None,
                  window: str = "lung"):
    """A matplotlib Figure: one row per slice, one column per labelled list of HU slices (any sizes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from generatect_kedro.visualize import apply_window

    labels = list(columns)
    n_rows = len(columns[labels[0]])
    figure = Figure(figsize=(2.2 * len(labels), 2.2 * n_rows + (0.4 if title else 0.0)), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(n_rows, len(labels), squeeze=False)
    for col, label in enumerate(labels):
        for row, image in enumerate(columns[label]):
            ax = axes[row, col]
            ax.imshow(apply_window(image, window), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(label, fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


# ---- the task ------------------------------------------------------------------------------------------

class SuperresTask(TrainingTask):
    """Trains one cascade stage's U-Net; keeps its EMA; validates and previews with the EMA weights."""

    def __init__(self, unet: UNet, stage: StageSettings, optimizer: OptimizerSettings, ema: EMA, *,
                 cond_drop_prob: float = 0.1, loss: Mapping[str, Any] | None = None,
                 validation: ValidationSlices | None = None, name: str = "superres") -> None:
        super().__init__()
        self.unet, self.stage, self.ema, self.validation, self.name = unet, stage, ema, validation, name
        self.cond_drop_prob = float(cond_drop_prob)
        self.loss_kwargs = dict(loss or {})
        self.per_sample_aug_level = bool(self.loss_kwargs.pop("per_sample_aug_level", False))
        self.max_lowres_aug_level = float(self.loss_kwargs.pop("max_lowres_aug_level", 1.0))
        if not 0.0 < self.max_lowres_aug_level <= 1.0:
            raise ValueError(f"loss.max_lowres_aug_level must be in (0, 1], got {self.max_lowres_aug_level}")
        self.last_validation: dict[str, float] | None = None
        self._parts = [Part("unet", unet, optimizer.adam)]
        self._ema_unet: UNet | None = None

    def parts(self) -> list[Part]:
        return self._parts

    def _crop(self, target: Tensor, lowres: Tensor) -> tuple[Tensor, Tensor]:
        """Random aligned crops per sample (global RNG: the trainer seeds it and restores it on resume)."""
        side, scale = self.stage.crop, self.stage.geometry.scale
        small = side // scale
        h, w = lowres.shape[-2:]
        ys = torch.randint(0, h - small + 1, (len(lowres),)).tolist()
        xs = torch.randint(0, w - small + 1, (len(lowres),)).tolist()
        lows = [lowres[i, :, y:y + small, x:x + small] for i, (y, x) in enumerate(zip(ys, xs))]
        highs = [target[i, :, y * scale:y * scale + side, x * scale:x * scale + side]
                 for i, (y, x) in enumerate(zip(ys, xs))]
        return torch.stack(highs), torch.stack(lows)

    def loss(self, part_name: str, batch: Mapping[str, Tensor], step: int, cache: dict[str, Any]
             ) -> tuple[Tensor, dict]:
        target, lowres = batch["target"], batch["lowres"]
        if self.stage.crop is not None:
            target, lowres = self._crop(target, lowres)
        # the release's draws (global RNG: the trainer seeds it and restores it on resume); the low-res
        # augmentation level ~ U(0, max_lowres_aug_level) (the release: U(0, 1))
        draws = draw_loss_randomness(target, cond_drop_prob=self.cond_drop_prob,
                                     per_sample_aug_level=self.per_sample_aug_level)
        draws.lowres_aug_times = draws.lowres_aug_times * self.max_lowres_aug_level
        out = superres_v_loss(self.forward_module("unet"), target, lowres, batch["text"], batch["text_mask"],
                              draws=draws, resize_mode=self.stage.resize_mode, **self.loss_kwargs)
        return out.loss, {}

    def after_step(self, step: int) -> None:
        self.ema.update(self.unet, step)

    def extra_state(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict()}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.ema.load_state_dict(state["ema"])

    def ema_unet(self) -> UNet:
        """A separate U-Net holding the EMA weights (fp32, eval mode, on the training device)."""
        device = next(self.unet.parameters()).device
        if self._ema_unet is None:
            self._ema_unet = UNet(copy.deepcopy(self.unet.config))
        self._ema_unet.load_state_dict(self.ema.weights(self.unet))
        return self._ema_unet.to(device).eval()

    def ema_weights(self) -> dict[str, Tensor]:
        return self.ema.weights(self.unet)

    def validate(self, step: int) -> dict[str, float]:
        v = self.validation
        if v is None:
            return {}
        device = next(self.unet.parameters()).device
        batch = {k: t.to(device) for k, t in v.batch.items()}
        # fixed draws (CPU generator, moved to the device): the losses are comparable from step to step
        draws = draw_loss_randomness(batch["target"], cond_drop_prob=0.0,
                                     generator=torch.Generator().manual_seed(v.seed))
        draws.lowres_aug_times = draws.lowres_aug_times * self.max_lowres_aug_level
        ema_unet = self.ema_unet()
        metrics = {}
        for label, module in (("loss", self.unet), ("ema_loss", ema_unet)):
            training = module.training
            module.eval()
            out = superres_v_loss(module, batch["target"], batch["lowres"], batch["text"], batch["text_mask"],
                                  draws=draws, resize_mode=self.stage.resize_mode, **self.loss_kwargs)
            module.train(training)
            metrics[label] = float(out.loss)
        if v.preview_slices > 0:
            metrics.update(self._preview(ema_unet, batch, step))
        self.last_validation = {"step": float(step), **metrics}
        return metrics

    def _preview(self, unet: UNet, batch: Mapping[str, Tensor], step: int) -> dict[str, float]:
        """Upsample the first slices with the EMA U-Net; PSNR and HF share vs trilinear; an axial montage."""
        v, s, g = self.validation, self.stage, self.stage.geometry
        n = min(v.preview_slices, len(batch["target"]))
        lowres, target = batch["lowres"][:n], batch["target"][:n]
        out = upsample_slices(unet, lowres, batch["text"][:n], batch["text_mask"][:n], size=g.output_hw,
                              sampler=s.sampler, steps=s.steps, lowres_noise_level=s.lowres_noise_level,
                              cond_scale=s.cond_scale, resize_mode=s.resize_mode,
                              dynamic_thresholding=s.dynamic_thresholding,
                              threshold_percentile=s.threshold_percentile,
                              noise=PerSampleNoise(range(v.seed, v.seed + n), device=lowres.device))
        trilinear = trilinear_upsample(lowres[:, 0].float(), g.output_hw)
        hu = {name: to_hu(x.float().cpu(), v.hu_window) for name, x in
              (("lowres", lowres[:, 0]), ("trilinear", trilinear), ("diffusion", out[:, 0]),
               ("truth", target[:, 0]))}
        metrics = {}
        for name in ("trilinear", "diffusion"):
            metrics[f"preview_psnr_hu_{name}"] = float(psnr_hu(hu[name], hu["truth"]).mean())
            scores = high_frequency_scores(hu[name], hu["truth"], scale=g.scale)
            metrics[f"preview_hf_share_{name}"] = float(scores["hf_power_share"].mean())
        try:
            figure = axial_montage({"low-res input": list(hu["lowres"].numpy()),
                                    "trilinear": list(hu["trilinear"].numpy()),
                                    "diffusion (EMA)": list(hu["diffusion"].numpy()),
                                    "ground truth": list(hu["truth"].numpy())},
                                   title=f"{self.name} step {step}: {g.input_hw[0]}→{g.output_hw[0]}")
            log_figure(figure, f"{self.name}/previews/step_{step:07d}.png")
        except Exception as error:  # a preview must never stop training
            LOG.warning("could not log the %s preview at step %d: %s", self.name, step, error)
        return metrics

