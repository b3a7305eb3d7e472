"""Every model a configuration describes, built on the meta device from the project's own parameter parsers.

Why here: `check-config` must judge the models the pipelines would build, so the stage configs come from the
pipelines' functions (``ctvit_config``, ``maskgit_config``, ``cascade_geometry``, ``stage_config``,
``trainer_config``…), never from a second parser. Modules live on ``torch.device("meta")``: parameter
counts and shapes are exact, no memory is allocated.

Each training stage carries one loss closure per trainable part: the forward of the loss the trainer runs,
at the stage's micro-batch shape (see `capacity.measure`). Where the real loss has data-dependent steps that
meta tensors cannot take (MaskGIT's boolean masking, the VQ's codebook counts), the closure takes the
worst case of the same shapes: every token masked, no codebook update (a no-grad buffer update saves nothing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from generatect_kedro.training.config import TrainerConfig

__all__ = ["GenerationPlan", "ModelPart", "ProjectShapes", "Repetition", "TextEncoderSize", "TrainingStage",
           "Workload", "build_generation", "build_training_stages", "project_shapes", "text_encoder_size"]

META = torch.device("meta")


@dataclass(frozen=True)
class ProjectShapes:
    """Grid shapes (D, H, W) of the preprocessing config and the text width/length the models see."""

    lowres: tuple[int, int, int]
    fullres: tuple[int, int, int]
    text_dim: int  # transformer.model.dim_context = the text encoder's hidden size (checked when embedding)
    text_len: int  # text_encoder.max_length: the longest prompt a batch can be padded to


def project_shapes(params: Mapping[str, Any]) -> ProjectShapes:
    grids = params["preprocessing"]["grids"]
    transformer = params["transformer"]
    return ProjectShapes(lowres=tuple(int(v) for v in grids["lowres"]["shape"]),
                         fullres=tuple(int(v) for v in grids["fullres"]["shape"]),
                         text_dim=int(transformer["model"].get("dim_context", 768)),
                         text_len=int((transformer.get("text_encoder") or {}).get("max_length", 256)))


@dataclass
class ModelPart:
    """A module of a stage; ``loss`` is the forward of its training loss (None: frozen, no optimizer)."""

    name: str
    module: nn.Module
    loss: Callable[[], Tensor] | None = None
    signature: str = ""  # everything the loss closure depends on: equal signatures measure the same

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    @property
    def buffer_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.module.buffers())


@dataclass
class TrainingStage:
    """One `kedro run` training stage: its parts, the trainer block, and what to change when it does not fit."""

    key: str  # ctvit | transformer | superres
    name: str
    trainer: TrainerConfig
    parts: list[ModelPart]
    frozen: list[ModelPart] = field(default_factory=list)
    fp32_copies_per_parameter: int = 0  # e.g. the super-resolution EMA shadow and its EMA U-Net
    checkpointed: list[nn.Module] = field(default_factory=list)  # blocks recomputed in the backward pass
    extra_deepspeed_check: Callable[[TrainerConfig], None] | None = None  # stage-specific config agreement
    params_key: str = ""  # where its knobs live, e.g. "superres"
    memory_options: tuple[str, ...] = ()  # activation savers besides the micro-batch
    max_zero_stage: int = 3  # the highest ZeRO stage the stage's task supports


def _meta_batch(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.empty(*shape, dtype=dtype, device=META)


# ---- CT-ViT ---------------------------------------------------------------------------------------------

def _ctvit_stage(params: Mapping[str, Any], shapes: ProjectShapes) -> TrainingStage:
    from generatect_kedro.losses import CTViTLoss, CTViTLossConfig
    from generatect_kedro.models.ctvit import CTViT
    from generatect_kedro.models.discriminator import Discriminator, DiscriminatorConfig
    from generatect_kedro.pipelines.ctvit.nodes import ctvit_config
    from generatect_kedro.pipelines.ctvit.task import CTViTTask, OptimizerSettings

    config = ctvit_config(params)
    loss_config = CTViTLossConfig.from_params(params.get("loss") or {})
    gan = dict((params.get("loss") or {}).get("gan") or {})
    with META:
        ctvit = CTViT(config)
        discriminator = (Discriminator(DiscriminatorConfig(image_size=config.image_size, channels=config.channels,
                                                           **dict(gan.get("discriminator") or {})))
                         if loss_config.gan else None)
        perceptual = _perceptual(params)
    ctvit.vq.ema_update = lambda tokens, ids: None  # bincount has no meta kernel; the update saves nothing
    task = CTViTTask(ctvit, CTViTLoss(loss_config, perceptual), OptimizerSettings.from_params(params.get("optimizer")),
                     discriminator=discriminator)
    trainer = TrainerConfig.from_params(dict(params["trainer"]), source="ctvit.trainer")
    depth = shapes.lowres[0]
    step = loss_config.discriminator_schedule.start  # the adversarial term counts from here: the largest step
    cache: dict[str, Any] = {}

    def volumes() -> Tensor:
        return _meta_batch(trainer.batch_size, config.channels, depth, config.image_size, config.image_size)

    def generator_loss() -> Tensor:
        return task.loss("generator", volumes(), step, cache)[0]

    def discriminator_loss() -> Tensor:
        cache.setdefault("recon", volumes())
        return task.loss("discriminator", volumes(), step, cache)[0]

    signature = repr(("ctvit", config, loss_config, gan, perceptual is not None, trainer.batch_size, depth, step))
    parts = [ModelPart("CT-ViT", ctvit, generator_loss, signature + "generator")]
    if discriminator is not None:
        parts.append(ModelPart("CT-ViT discriminator", discriminator, discriminator_loss, signature + "discriminator"))
    frozen = [ModelPart("VGG16 perceptual", perceptual)] if perceptual is not None else []
    return TrainingStage("ctvit", f"ctvit ({depth}x{config.image_size}x{config.image_size})", trainer, parts, frozen,
                         params_key="ctvit")


def _perceptual(params: Mapping[str, Any]) -> nn.Module | None:
    """The frozen VGG16 of the perceptual term when its weights are configured (as `train_ctvit` decides)."""
    perceptual = dict((params.get("loss") or {}).get("perceptual") or {})
    if not perceptual.get("weights_path") or float(perceptual.get("weight", 1.0)) <= 0:
        return None
    from generatect_kedro.models.perceptual import VGG16Config, VGG16Perceptual

    return VGG16Perceptual(VGG16Config(**dict(perceptual.get("network") or {})))


# ---- transformer ----------------------------------------------------------------------------------------

def _maskgit_configs(params: Mapping[str, Any], codebook_size: int):
    from generatect_kedro.models.token_critic import critic_config
    from generatect_kedro.pipelines.transformer.nodes import maskgit_config

    config = maskgit_config(params, codebook_size)
    critic_params = dict(params.get("critic") or {})
    critic = (critic_config(config, **dict(critic_params.get("model") or {"depth": 2}))
              if critic_params.get("enabled") else None)
    return config, critic


def _transformer_stage(params: Mapping[str, Any], shapes: ProjectShapes, token_grid: tuple[int, int, int],
                       codebook_size: int) -> TrainingStage:
    from generatect_kedro.models.maskgit import MaskGIT
    from generatect_kedro.models.token_critic import TokenCritic

    config, critic_cfg = _maskgit_configs(params, codebook_size)
    if math.prod(token_grid) > config.max_seq_len:
        raise ValueError(f"token grid {token_grid} exceeds transformer.model.max_seq_len {config.max_seq_len}")
    with META:
        maskgit = MaskGIT(config)
        critic = TokenCritic(critic_cfg) if critic_cfg is not None else None
    trainer = TrainerConfig.from_params(dict(params["trainer"]), source="transformer.trainer")
    b, n = trainer.batch_size, math.prod(token_grid)

    def inputs() -> tuple[Tensor, Tensor, Tensor]:
        ids = _meta_batch(b, n, dtype=torch.long)
        return ids, _meta_batch(b, shapes.text_len, shapes.text_dim), torch.ones(b, shapes.text_len, dtype=torch.bool,
                                                                                 device=META)

    def maskgit_loss() -> Tensor:  # masked_token_loss at its worst level: every position masked
        ids, text, mask = inputs()
        logits = maskgit(ids, text, mask, grid_shape=token_grid)
        return F.cross_entropy(logits.reshape(b * n, -1), ids.reshape(-1))

    def critic_loss() -> Tensor:  # token_critic_loss: the frozen MaskGIT fills in without grad, the critic trains
        ids, text, mask = inputs()
        with torch.no_grad():
            maskgit(ids, text, mask, grid_shape=token_grid)
        scores = critic(ids, text, mask, grid_shape=token_grid)
        return F.binary_cross_entropy_with_logits(scores, torch.zeros_like(scores))

    signature = repr(("transformer", config, critic_cfg, b, token_grid, shapes.text_len, shapes.text_dim))
    parts = [ModelPart("MaskGIT", maskgit, maskgit_loss, signature + "maskgit")]
    if critic is not None:
        parts.append(ModelPart("token critic", critic, critic_loss, signature + "critic"))
    return TrainingStage("transformer", f"transformer ({'x'.join(map(str, token_grid))} tokens)", trainer, parts,
                         params_key="transformer")


# ---- super-resolution -----------------------------------------------------------------------------------

def _superres_settings(params: Mapping[str, Any], shapes: ProjectShapes):
    from generatect_kedro.pipelines.superres.data import cascade_geometry
    from generatect_kedro.pipelines.superres.task import stage_config

    geometries = cascade_geometry(params, shapes.lowres[1:], shapes.fullres[1:])
    return [stage_config(params, g, shapes.text_dim) for g in geometries]


def _superres_stages(params: Mapping[str, Any], shapes: ProjectShapes) -> list[TrainingStage]:
    from generatect_kedro.diffusion.loss import draw_loss_randomness, superres_v_loss
    from generatect_kedro.models.unet import UNet
    from generatect_kedro.models.unet_blocks import ResnetBlock
    from generatect_kedro.pipelines.superres.task import OptimizerSettings, check_deepspeed, trainer_config

    optimizer = OptimizerSettings.from_params(params.get("optimizer"))
    loss_params = dict(params.get("loss") or {})
    cond_drop_prob = float(loss_params.pop("cond_drop_prob", 0.1))
    loss_params.pop("per_sample_aug_level", None)
    loss_params.pop("max_lowres_aug_level", None)
    slices_per_item = int(params.get("slices_per_item", 1))
    checkpointing = bool(params.get("gradient_checkpointing", False))
    stages = []
    for settings in _superres_settings(params, shapes):
        g = settings.geometry
        trainer = trainer_config(params, settings, identity="check-config")
        with META:
            unet = UNet(settings.unet)
        side_out = settings.crop or g.output_hw[0]
        out_hw = (side_out, side_out) if settings.crop else g.output_hw
        in_hw = (out_hw[0] // g.scale, out_hw[1] // g.scale)
        slices = trainer.batch_size * slices_per_item

        def unet_loss(unet: nn.Module = unet, out_hw: tuple[int, int] = out_hw, in_hw: tuple[int, int] = in_hw,
                      slices: int = slices, resize_mode: str = settings.resize_mode) -> Tensor:
            target, lowres = _meta_batch(slices, 1, *out_hw), _meta_batch(slices, 1, *in_hw)
            text = _meta_batch(slices, shapes.text_len, shapes.text_dim)
            mask = torch.ones(slices, shapes.text_len, dtype=torch.bool, device=META)
            draws = draw_loss_randomness(target, cond_drop_prob=cond_drop_prob)
            return superres_v_loss(unet, target, lowres, text, mask, draws=draws, resize_mode=resize_mode,
                                   **loss_params).loss

        blocks = [m for m in unet.modules() if isinstance(m, ResnetBlock)] if checkpointing else []
        name = f"superres stage {g.index + 1} ({g.input_hw[0]}->{g.output_hw[0]})"
        signature = repr(("superres", settings.unet, out_hw, in_hw, slices, shapes.text_len, shapes.text_dim,
                          settings.resize_mode, cond_drop_prob, loss_params))
        options = ("train on crops (superres.stages[i].crop)",)
        if not checkpointing:
            options = ("set superres.gradient_checkpointing: true", *options)
        stages.append(TrainingStage(
            "superres", name, trainer, [ModelPart(f"U-Net stage {g.index + 1}", unet, unet_loss, signature)],
            fp32_copies_per_parameter=2, checkpointed=blocks,
            extra_deepspeed_check=lambda config: check_deepspeed(config, optimizer), params_key="superres",
            memory_options=options, max_zero_stage=2))  # check_deepspeed refuses ZeRO-3 (the EMA)
    return stages


def build_training_stages(params: Mapping[str, Any]) -> list[TrainingStage]:
    """CT-ViT, transformer and every super-resolution stage of the configuration, on meta."""
    from generatect_kedro.pipelines.ctvit.nodes import ctvit_config

    shapes = project_shapes(params)
    ctvit = ctvit_config(params["ctvit"])
    token_grid = ctvit.token_grid(shapes.lowres[0])
    return [_ctvit_stage(params["ctvit"], shapes),
            _transformer_stage(params["transformer"], shapes, token_grid, ctvit.codebook_size),
            *_superres_stages(params["superres"], shapes)]


# ---- text encoder ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TextEncoderSize:
    """Parameters of the configured text encoder, or None when it cannot be built without its weights."""

    description: str
    parameters: int | None
    dtype: torch.dtype
    on_gpu: bool


def text_encoder_size(settings: Mapping[str, Any], gpu_target: bool) -> TextEncoderSize:
    """Built on meta from the folder's config.json when the configured path has one; else "external"."""
    from generatect_kedro.models.text_encoder import _DTYPES, TextEncoderConfig, TextEncoderError, inspect_encoder

    values = {k: v for k, v in dict(settings).items() if k in ("path", "kind", "max_length", "device", "dtype")}
    dtype = _DTYPES.get(str(values.get("dtype", "float32")), torch.float32)
    on_gpu = gpu_target and str(values.get("device", "auto")) != "cpu"
    if not values.get("path"):
        return TextEncoderSize("transformer.text_encoder.path is not set", None, dtype, on_gpu)
    try:
        config = TextEncoderConfig.from_params(values)
        folder, kind, hidden = inspect_encoder(config)
    except (TextEncoderError, OSError, ValueError) as error:  # a folder on another machine: size unknown here
        return TextEncoderSize(str(error).split(";")[0][:80], None, dtype, on_gpu)
    from transformers import AutoConfig, AutoModel

    from generatect_kedro.models.text_encoder import _t5_encoder_class

    hf_config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    with META:
        model = (_t5_encoder_class(folder)(hf_config) if kind == "t5" else AutoModel.from_config(hf_config))
    count = sum(p.numel() for p in model.parameters())
    return TextEncoderSize(f"{kind} {hidden}-d ({values['path']})", count, dtype, on_gpu)


# ---- generation -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Repetition:
    """How one volume repeats a workload's call, for FLOPs per volume (`capacity.compute`).

    ``sampling``: the transformer; ``run(steps)`` samples ``per_call`` items together, the context once per batch.
    ``slices``: a U-Net call on ``per_call`` of a volume's ``slices`` slices, ``steps`` times per slice.
    ``once``: one call per volume (the CT-ViT decode).
    """

    kind: str = "once"  # sampling | slices | once
    steps: int = 1
    per_call: int = 1
    slices: int = 1


@dataclass
class Workload:
    """One generation step's working set: a no-grad call on meta plus buffers it keeps beside it."""

    name: str
    run: Callable[..., Any]
    modules: list[nn.Module]
    extra_bytes: int = 0
    signature: str = ""  # everything ``run`` depends on
    advice: str = ""
    repetition: Repetition = field(default_factory=Repetition)


@dataclass
class GenerationPlan:
    """Models resident during `generate`, their precision, and the steps whose working sets compete."""

    modules: dict[str, nn.Module]
    text_encoder: TextEncoderSize
    autocast: torch.dtype | None  # bf16 under autocast, None = fp32
    on_gpu: bool
    precision: str
    batch_size: int
    slice_batch_size: int
    workloads: list[Workload]


def _gpu_device(name: Any) -> bool:
    """Whether a device setting targets a GPU on the machine the config is written for (auto → GPU)."""
    return str(name or "auto") != "cpu"


def build_generation(params: Mapping[str, Any]) -> GenerationPlan:
    """The generation path of conf parameters_generation.yml at the registered models' shapes."""
    from generatect_kedro.diffusion.guidance import GuidedDenoiser
    from generatect_kedro.generation.sampler import SamplerSettings
    from generatect_kedro.models.ctvit import CTViT
    from generatect_kedro.models.maskgit import MaskGIT
    from generatect_kedro.models.maskgit_sampling import sample_tokens
    from generatect_kedro.models.unet import UNet
    from generatect_kedro.pipelines.ctvit.nodes import ctvit_config
    from generatect_kedro.pipelines.transformer.nodes import sampler_config
    from generatect_kedro.pipelines.transformer.task import MaskGITWithCritic

    shapes = project_shapes(params)
    generation = dict(params["generation"])
    ctvit_cfg = ctvit_config(params["ctvit"])
    maskgit_cfg, critic_cfg = _maskgit_configs(params["transformer"], ctvit_cfg.codebook_size)
    stages = _superres_settings(params["superres"], shapes)
    registered = SimpleNamespace(configs={"transformer": {"sampler": asdict(sampler_config(params["transformer"]))},
                                          "superres": {"stages": [s.to_config() for s in stages]}})
    settings = SamplerSettings.from_params(generation.get("sampler"), registered)
    on_gpu = _gpu_device(generation.get("device"))
    precision = str(getattr(settings, "precision", "fp32"))
    if precision == "auto":
        precision = "bf16" if on_gpu else "fp32"
    autocast = torch.bfloat16 if precision == "bf16" else None
    encoder_settings = {**dict(params["transformer"].get("text_encoder") or {}),
                        **dict(generation.get("text_encoder") or {})}
    text_len = int(encoder_settings.get("max_length", shapes.text_len))

    with META:
        ctvit = CTViT(ctvit_cfg).eval()
        transformer = (MaskGITWithCritic(maskgit_cfg, critic_cfg) if critic_cfg else MaskGIT(maskgit_cfg)).eval()
        unets = [UNet(s.unet).eval() for s in stages]
    slices = int(generation.get("slice_count") or shapes.lowres[0])
    token_grid = ctvit_cfg.token_grid(slices)
    batch = 1 if critic_cfg is not None else settings.batch_size  # the sampler samples one by one with a critic

    def tokens(steps: int = 2) -> Tensor:  # memory: step 2 re-masks, every buffer of a step is alive
        text = _meta_batch(batch, text_len, shapes.text_dim)
        mask = torch.ones(batch, text_len, dtype=torch.bool, device=META)
        config = replace(settings.transformer, steps=steps)
        return sample_tokens(transformer, text, mask, token_grid, config=config,
                             critic=getattr(transformer, "critic", None))

    def decode() -> Tensor:
        return ctvit.decode_from_ids(_meta_batch(1, *token_grid, dtype=torch.long))

    transformer_advice = (f"lower generation.sampler.batch_size (now {settings.batch_size}; the working set grows "
                          "with it: logits over the whole codebook for every token)")
    workloads = [Workload(f"transformer sampling (batch {batch})", tokens, [transformer],
                          signature=repr(("tokens", maskgit_cfg, critic_cfg, batch, token_grid, text_len,
                                          shapes.text_dim, settings.transformer)), advice=transformer_advice,
                          repetition=Repetition("sampling", steps=settings.transformer.steps, per_call=batch)),
                 Workload("CT-ViT decode", decode, [ctvit], signature=repr(("decode", ctvit_cfg, token_grid)),
                          advice="the CT-ViT decodes one volume at a time: only a smaller model or grid helps")]
    for stage, unet, sampling in zip(stages, unets, settings.stages):
        g = stage.geometry
        count = min(settings.slice_batch_size, slices)

        def upsample(unet: nn.Module = unet, g: Any = g, sampling: Mapping[str, Any] = sampling,
                     count: int = count) -> Tensor:
            # upsample_slices' state beside the U-Net call: x_t, the resized and the noised condition, the step's
            # noise, the sampler's previous output (dpm++2m) and the new sample. The call is one guided
            # U-Net pass; the sampler's own arithmetic is per-slice elementwise (and data-dependent on meta).
            state = [_meta_batch(count, 1, *g.output_hw) for _ in range(6)]
            text = _meta_batch(1, text_len, shapes.text_dim).expand(count, -1, -1)  # one prompt, expanded
            mask = torch.ones(1, text_len, dtype=torch.bool, device=META).expand(count, -1)
            denoiser = GuidedDenoiser(unet, lowres_cond_img=state[1], lowres_noise_log_snr=_meta_batch(count),
                                      text_embeds=text, text_mask=mask, cond_scale=float(sampling["cond_scale"]))
            return denoiser(state[0], _meta_batch(count)).float(), state

        volumes = 4 * slices * (g.input_hw[0] * g.input_hw[1] + g.output_hw[0] * g.output_hw[1])  # fp32 in + out
        workloads.append(Workload(
            f"superres stage {g.index + 1} ({count} slices of {g.output_hw[0]}^2)", upsample, [unet],
            extra_bytes=volumes, signature=repr(("upsample", stage.unet, g, count, text_len, shapes.text_dim,
                                                 sampling["cond_scale"])),
            advice=f"lower generation.sampler.slice_batch_size (now {settings.slice_batch_size})"
                   + ("" if precision == "bf16" else " or set generation.sampler.precision: bf16"),
            repetition=Repetition("slices", steps=int(sampling["steps"]), per_call=count, slices=slices)))
    modules = {"CT-ViT": ctvit, "transformer": transformer, **{f"U-Net {i + 1}": u for i, u in enumerate(unets)}}
    return GenerationPlan(modules=modules, text_encoder=text_encoder_size(encoder_settings, on_gpu),
                          autocast=autocast, on_gpu=on_gpu, precision=precision, batch_size=batch,
                          slice_batch_size=settings.slice_batch_size, workloads=workloads)
