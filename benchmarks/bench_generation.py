"""Seconds per volume and peak memory of generation (text → tokens → CT-ViT → cascade → HU) on the CPU.

    .venv/bin/python benchmarks/bench_generation.py                 # demo-sized random models (17x64x64)
    GENERATECT_BENCH_LARGE=1 .venv/bin/python benchmarks/bench_generation.py   # + 33x128x128 (minutes on CPU)
    .venv/bin/python benchmarks/bench_generation.py [--quick] [--large] [--compile] [--device cpu|cuda] [--json OUT]

Models are random (timing does not depend on training) and registered in a throwaway SQLite registry, so the
whole path, registry loading included, is what runs. Peak memory is the process's max RSS (Linux VmHWM);
on CUDA also torch.cuda.max_memory_allocated. ``--device`` defaults to ``$DEVICE``, else cpu; ``--quick`` times one
volume instead of two. ``run()`` returns the figures as ``benchlib.record`` dicts (``--json OUT`` writes them).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "pipelines" / "generation"))

import torch  # noqa: E402

import generation_fixtures as fx  # noqa: E402
from benchlib import add_common_args, peak_rss_mib, per_second, record, write_json  # noqa: E402
from generatect_kedro.generation.geometry import geometry_from_params  # noqa: E402
from generatect_kedro.generation.models import ModelRequest, load_models  # noqa: E402
from generatect_kedro.generation.sampler import GenerationItem, SamplerSettings, VolumeSampler  # noqa: E402

SHAPES = {  # name: (ctvit image size, patch, slices, transformer max_seq_len, U-Net dim, steps)
    "demo 17x32x32 -> 17x64x64": (32, 8, 17, 256, 16, 12),
    "large 33x64x64 -> 33x128x128": (64, 8, 33, 2048, 32, 25),
}


def configure(image: int, patch: int, max_seq_len: int, unet_dim: int, steps: int) -> None:
    fx.CTVIT.update(image_size=image, patch_size=patch, dim=64)
    fx.MASKGIT.update(dim=128, depth=2, max_seq_len=max_seq_len)
    fx.UNET.update(dim=unet_dim, dim_mults=[1, 2, 4], max_text_len=64, attn_pool_max_seq_len=64)


def bench(name: str, spec: tuple, volumes: int = 2, device: str | None = None, compile_unets: bool = False
          ) -> list[dict]:
    """Time ``volumes`` volumes; with ``compile_unets`` first one warm-up volume (the compilation), timed apart."""
    device = device or os.environ.get("DEVICE", "cpu")
    image, patch, slices, max_seq_len, unet_dim, steps = spec
    configure(image, patch, max_seq_len, unet_dim, steps)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        fx.use_registry(root)
        fx.register_tiny_models(root)
        models = load_models(ModelRequest(), text_encoder={"device": "cpu"}, device=device)
        settings = SamplerSettings.from_params({"transformer": {"steps": 18},
                                                "superres": {"sampler": "dpm++2m", "steps": steps},
                                                "slice_batch_size": slices, "compile": compile_unets}, models)
        sampler = VolumeSampler(models, settings, geometry_from_params({"spacing_mm": [0.75, 0.75, 1.5]}))
        items = [GenerationItem(f"b{i}", "65 years old male: Cardiomegaly.", i, slices) for i in range(volumes)]
        warmup = None
        if compile_unets:
            tic = time.perf_counter()
            list(sampler.generate([GenerationItem("warm-up", "65 years old male: Cardiomegaly.", 99, slices)]))
            warmup = time.perf_counter() - tic
            sampler.stage_seconds.clear()
            name = f"{name}, U-Nets compiled"
        tic = time.perf_counter()
        shapes = [v.shape for _, v in sampler.generate(items)]
        seconds = (time.perf_counter() - tic) / volumes
    peak = peak_rss_mib()  # VmHWM: ru_maxrss includes the parent's peak
    gpu_mib = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    gpu = f", GPU peak {gpu_mib:.0f} MiB" if gpu_mib is not None else ""
    stages = ", ".join(f"{stage} {total / volumes:.2f}" for stage, total in sampler.stage_seconds.items())
    first = f"; the first volume, compiling, took {warmup:.1f} s" if warmup is not None else ""
    print(f"{name}: {seconds:.2f} s/volume (output {shapes[0]}; by stage, s/volume: {stages}), "
          f"peak RSS {peak:.0f} MiB{gpu}{first}")
    shape = "×".join(map(str, shapes[0]))
    common = dict(device=device, volumes=volumes, threads=torch.get_num_threads(), compiled=compile_unets,
                  first_volume_seconds=warmup)
    records = [record("generation", f"{name}: whole volume", shape, seconds, per_second(1, seconds), "volumes/s",
                      peak, gpu_mib, notes=f"mean of {volumes} volume(s), registry loading excluded; random "
                      f"tiny models, superres dpm++2m {steps} steps{first}", **common)]
    for stage, total in sampler.stage_seconds.items():
        records.append(record("generation", f"{name}: {stage}", shape, total / volumes,
                              per_second(volumes, total), "volumes/s",
                              notes=f"stage alone: {100 * total / volumes / seconds:.0f}% of the whole volume's time",
                              **common))
    return records


def run(quick: bool = False, device: str | None = None, large: bool | None = None,
        compile_unets: bool = False) -> list[dict]:
    """Print one line per shape and return its records (whole volume, then each stage); with ``compile_unets``
    each shape again with ``generation.sampler.compile`` (U-Nets through torch.compile)."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if large is None:
        large = os.environ.get("GENERATECT_BENCH_LARGE") == "1"
    shapes = [("demo 17x32x32 -> 17x64x64", 1 if quick else 2)]
    if large and not quick:
        shapes.append(("large 33x64x64 -> 33x128x128", 1))
    else:
        print("(set GENERATECT_BENCH_LARGE=1 for the larger shape)")
    records = []
    for name, volumes in shapes:
        for compiled in (False, True) if compile_unets else (False,):
            records += bench(name, SHAPES[name], volumes=volumes, device=device, compile_unets=compiled)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one volume of the demo shape")
    parser.add_argument("--large", action="store_true", default=None,
                        help="also the 33x128x128 shape (same as GENERATECT_BENCH_LARGE=1)")
    parser.add_argument("--compile", action="store_true",
                        help="also time each shape with the U-Nets compiled (generation.sampler.compile: true)")
    add_common_args(parser)
    args = parser.parse_args()
    write_json(args.json, run(args.quick, args.device, args.large, args.compile))


if __name__ == "__main__":
    main()
