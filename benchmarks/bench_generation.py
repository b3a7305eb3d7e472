"""Seconds per volume and peak memory of generation (text → tokens → CT-ViT → cascade → HU) on the CPU.

    .venv/bin/python benchmarks/bench_generation.py                 # demo-sized random models (17x64x64)
    GENERATECT_BENCH_LARGE=1 .venv/bin/python benchmarks/bench_generation.py   # + 33x128x128 (minutes on CPU)

Models are random (timing does not depend on training) and registered in a throwaway SQLite registry, so the
whole path, registry loading included, is what runs. Peak memory is the process's max RSS (Linux ru_maxrss);
on CUDA also torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "pipelines" / "generation"))

import torch  # noqa: E402

import generation_fixtures as fx  # noqa: E402
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


def bench(name: str, spec: tuple, volumes: int = 2) -> None:
    image, patch, slices, max_seq_len, unet_dim, steps = spec
    configure(image, patch, max_seq_len, unet_dim, steps)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        fx.use_registry(root)
        fx.register_tiny_models(root)
        models = load_models(ModelRequest(), text_encoder={"device": "cpu"}, device=os.environ.get("DEVICE", "cpu"))
        settings = SamplerSettings.from_params({"transformer": {"steps": 18},
                                                "superres": {"sampler": "dpm++2m", "steps": steps},
                                                "slice_batch_size": slices}, models)
        sampler = VolumeSampler(models, settings, geometry_from_params({"spacing_mm": [0.75, 0.75, 1.5]}))
        items = [GenerationItem(f"b{i}", "65 years old male: Cardiomegaly.", i, slices) for i in range(volumes)]
        tic = time.perf_counter()
        shapes = [v.shape for _, v in sampler.generate(items)]
        seconds = (time.perf_counter() - tic) / volumes
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = f", GPU peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if torch.cuda.is_available() else ""
    stages = ", ".join(f"{stage} {total / volumes:.2f}" for stage, total in sampler.stage_seconds.items())
    print(f"{name}: {seconds:.2f} s/volume (output {shapes[0]}; by stage, s/volume: {stages}), "
          f"peak RSS {peak:.0f} MiB{gpu}")


def main() -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    bench("demo 17x32x32 -> 17x64x64", SHAPES["demo 17x32x32 -> 17x64x64"])
    if os.environ.get("GENERATECT_BENCH_LARGE") == "1":
        bench("large 33x64x64 -> 33x128x128", SHAPES["large 33x64x64 -> 33x128x128"], volumes=1)
    else:
        print("(set GENERATECT_BENCH_LARGE=1 for the larger shape)")


if __name__ == "__main__":
    main()
