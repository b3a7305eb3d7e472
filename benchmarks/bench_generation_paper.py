"""One paper-scale volume end to end (text → tokens → CT-ViT → 3-stage cascade → HU): seconds and GPU memory.

    .venv/bin/python benchmarks/bench_generation_paper.py --device cuda            # conf/gpu_24gb, 201×512×512
    .venv/bin/python benchmarks/bench_generation_paper.py --device cuda --env gpu_80gb
    .venv/bin/python benchmarks/bench_generation_paper.py --quick                  # CPU smoke: 3 slices, 1 step

The issue's goal: one 201×512×512 volume with the 3-stage cascade in ≤ 15 s and ≤ 16 GB on one H100. This is the
script that checks it; its default env is gpu_24gb, whose per-call batches keep one volume's working set under
16 GB (conf/gpu_80gb's 67 slices per U-Net call need ~21 GiB). The models are the ones ``conf/<env>`` describes (conf/base shapes with the env's
generation overrides: precision, batch sizes, sampler and steps), built with random weights straight on the device
(timing and memory do not depend on training; no registry, so no GB of weights are written). One difference from
a trained paper model: the text encoder is the bundled MiniLM (384-d) instead of T5 (768-d), so the transformer's
and U-Nets' text projections are 384 wide; T5's encoder pass (one per prompt) is not timed either.

Timed: ``--volumes`` volumes after one warm-up volume (CUDA context, cuDNN autotuning, allocator growth), mean
seconds per volume, per-stage seconds (text, tokens, decode, super-resolution), ``torch.cuda.max_memory_allocated``
over the timed volumes (weights included). ``--quick`` (or a CPU device without ``--slices``) shrinks the work to
3 slices and 1 step per sampler so a CPU proves the path in about a minute; those numbers say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

from benchlib import add_common_args, peak_gpu_mib, peak_rss_mib, per_second, record, write_json  # noqa: E402

BENCHMARK = "generation_paper"
GOAL_SECONDS, GOAL_GIB = 15.0, 16.0
PROMPT = "65 years old male: Cardiomegaly. Bilateral pleural effusion."
MINILM_DIM = 384


def paper_models(params: dict[str, Any], device: str) -> Any:
    """`LoadedModels` of the env's shapes with random weights (MiniLM text width, see the module docstring)."""
    import torch

    from generatect_kedro.capacity.meta_models import _maskgit_configs, _superres_settings, project_shapes
    from generatect_kedro.generation.models import LoadedModels
    from generatect_kedro.models.ctvit import CTViT
    from generatect_kedro.models.maskgit import MaskGIT
    from generatect_kedro.models.text_encoder import TextEncoder, TextEncoderConfig, default_demo_encoder_path
    from generatect_kedro.pipelines.ctvit.nodes import ctvit_config
    from generatect_kedro.pipelines.superres.task import build_cascade
    from generatect_kedro.pipelines.transformer.nodes import sampler_config

    params["transformer"]["model"]["dim_context"] = MINILM_DIM
    shapes = project_shapes(params)
    ctvit_cfg = ctvit_config(params["ctvit"])
    maskgit_cfg, _ = _maskgit_configs(params["transformer"], ctvit_cfg.codebook_size)  # no critic: plain MaskGIT
    stages = [s.to_config() for s in _superres_settings(params["superres"], shapes)]
    with torch.device(device):
        ctvit, transformer, cascade = CTViT(ctvit_cfg), MaskGIT(maskgit_cfg), build_cascade({"stages": stages})
    encoder = TextEncoder(TextEncoderConfig.from_params({"path": str(default_demo_encoder_path()), "device": "cpu"}))
    grid = ctvit_cfg.token_grid(shapes.lowres[0])
    configs = {"transformer": {"sampler": dataclasses.asdict(sampler_config(params["transformer"])),
                               "grid_shape": list(grid)},
               "superres": {"stages": stages, "hu_window": list(params["superres"].get("hu_window", [-1000, 1000]))}}
    return LoadedModels(ctvit=ctvit.eval(), transformer=transformer.eval(), cascade=cascade.eval(), refs={},
                        configs=configs, text_encoder=encoder, text_encoder_info={}, device=torch.device(device))


def run(quick: bool = False, device: str = "cpu", env: str = "gpu_24gb", volumes: int = 1, slices: int | None = None,
        steps: int | None = None) -> list[dict]:
    """Print the figures and return one record for the whole volume plus one per stage."""
    import torch

    from generatect_kedro.capacity.report import load_parameters
    from generatect_kedro.generation.geometry import geometry_from_params
    from generatect_kedro.generation.sampler import GenerationItem, SamplerSettings, VolumeSampler

    cuda = str(device).startswith("cuda")
    if (quick or not cuda) and slices is None:
        slices, steps = 3, steps or 1
    params = load_parameters(ROOT, env)
    models = paper_models(params, device)
    sampler_params = dict(params["generation"].get("sampler") or {})
    if steps:
        sampler_params["transformer"] = {**dict(sampler_params.get("transformer") or {}), "steps": steps}
        superres = sampler_params.get("superres") or {}
        sampler_params["superres"] = ([{**dict(s or {}), "steps": steps} for s in superres]
                                      if isinstance(superres, list) else {**dict(superres), "steps": steps})
    if not cuda:
        sampler_params["precision"] = "fp32"  # bf16 autocast on a CPU is emulated and slow: a smoke test needs none
    settings = SamplerSettings.from_params(sampler_params, models)
    sampler = VolumeSampler(models, settings, geometry_from_params({"spacing_mm": [0.75, 0.75, 1.5]}))
    slice_count = int(slices or sampler.default_slice_count)
    parameters = sum(p.numel() for m in (models.ctvit, models.transformer, models.cascade) for p in m.parameters())
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if cuda else f", {torch.get_num_threads()} threads")
          + f"; env {env}: {parameters / 1e6:.0f} M parameters, {slice_count} slices, precision {settings.precision}, "
          f"transformer {settings.transformer.steps} steps, super-resolution "
          + ", ".join(f"{s['sampler']} {s['steps']}" for s in settings.stages)
          + f", {settings.slice_batch_size} slices per U-Net call", flush=True)

    def one(seed: int) -> Any:
        ((_, volume),) = list(sampler.generate([GenerationItem(f"paper{seed}", PROMPT, seed, slice_count)]))
        return volume

    tic = time.perf_counter()
    one(0)  # warm-up
    warmup = time.perf_counter() - tic
    sampler.stage_seconds.clear()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tic = time.perf_counter()
    shape = None
    for seed in range(1, volumes + 1):
        shape = one(seed).shape
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - tic) / volumes
    gpu_mib, rss = peak_gpu_mib(device), peak_rss_mib()
    stages = {name: total / volumes for name, total in sampler.stage_seconds.items()}
    memory = f"GPU peak {gpu_mib / 1024:.1f} GiB" if gpu_mib is not None else f"peak RSS {rss / 1024:.1f} GiB"
    goal = ""
    if cuda and slice_count >= 201 and not steps:
        met = seconds <= GOAL_SECONDS and gpu_mib / 1024 <= GOAL_GIB
        goal = f"; goal ≤ {GOAL_SECONDS:.0f} s and ≤ {GOAL_GIB:.0f} GiB: {'met' if met else 'NOT met'}"
    print(f"{seconds:.2f} s/volume ({', '.join(f'{k} {v:.2f}' for k, v in stages.items())}), {memory}, "
          f"warm-up volume {warmup:.1f} s, output {tuple(shape)}{goal}")
    dims = "×".join(map(str, shape))
    if steps:
        goal = (f"; SMOKE TEST ({slice_count} slices, {steps} step(s) per sampler{', CPU fp32' if not cuda else ''}): "
                "proves the path, says nothing about the goal")
    common = dict(env=env, device=device, precision=settings.precision, slices=slice_count,
                  sampler=settings.record(), parameters_m=parameters / 1e6, smoke=bool(steps))
    label = f"{env}{' smoke test' if steps else ''}"
    records = [record(BENCHMARK, f"{label}: whole volume", dims, seconds, per_second(1, seconds), "volumes/s", rss,
                      gpu_mib, notes=f"random weights, MiniLM text; warm-up {warmup:.1f} s{goal}", **common)]
    records += [record(BENCHMARK, f"{label}: {name}", dims, value, per_second(1, value), "volumes/s",
                       notes=f"{100 * value / seconds:.0f}% of the volume", **common) for name, value in stages.items()]
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 slices, 1 sampler step (a smoke test of the path)")
    parser.add_argument("--env", default="gpu_24gb", help="conf/<env> with the generation settings (default gpu_24gb)")
    parser.add_argument("--volumes", type=int, default=1, help="timed volumes after the warm-up one")
    parser.add_argument("--slices", type=int, default=None, help="slices per volume (default: the paper's 201)")
    parser.add_argument("--steps", type=int, default=None, help="override every sampler's steps (smoke tests)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 0)) or None)
    add_common_args(parser)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    write_json(args.json, run(args.quick, args.device, args.env, args.volumes, args.slices, args.steps))


if __name__ == "__main__":
    sys.exit(main())
