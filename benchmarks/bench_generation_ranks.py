"""Multi-rank generation: volumes per second with 1, 2, … torchrun ranks, the scaling the batch writer gets.

    .venv/bin/python benchmarks/bench_generation_ranks.py                 # CPU: ranks 1,2 (one core each)
    .venv/bin/python benchmarks/bench_generation_ranks.py --device cuda   # ranks 1,2,4,… up to the GPU count
    .venv/bin/python benchmarks/bench_generation_ranks.py [--quick] [--ranks 1,2] [--volumes 8] [--json OUT]

What runs is the product's path: ``torchrun --standalone --nproc_per_node K`` starts K workers; each loads the
registered models (random demo-sized CT-ViT, MaskGIT and a one-stage x2 cascade, 17x32² → 17x64², DPM-Solver++
12 steps, in a throwaway SQLite registry), then ``generation.batch.generate_batch`` takes items
``rank::K`` and writes real NIfTI files and sidecars (no previews, no MLflow run). Model loading and one unwritten
warm-up volume per rank (first-call costs, which would otherwise flatter more ranks) are excluded: the ranks meet
at a file barrier once warm, and the time is from the first rank leaving the barrier to the last
rank finishing (rank 0 also waits for the others' reports, as in production).

On CPU each rank gets one thread (``OMP_NUM_THREADS=1``), i.e. one core, as each rank gets one GPU on a GPU
machine; so ranks ≤ cores is the meaningful range. Reported per K: seconds for the batch, volumes/s, speedup
over one rank and efficiency (speedup / K). ``run()`` returns ``benchlib.record`` dicts (``--json OUT``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "pipelines" / "generation"))

from benchlib import add_common_args, per_second, record, write_json  # noqa: E402

BENCHMARK = "generation_ranks"
PROMPTS = ["65 years old male: Cardiomegaly.", "58 years old female: Pleural effusion.",
           "71 years old male: Lung nodule.", "49 years old female: No acute findings."]
SLICES, STEPS = 17, 12
BARRIER_TIMEOUT_S = 600.0


@contextlib.contextmanager
def _demo_shapes() -> Iterator[None]:
    """The demo shapes of bench_generation (17x32² tokens → 17x64² volumes) in the fixtures' model configs, put
    back afterwards (tests import the same module and expect its tiny shapes)."""
    import generation_fixtures as fx

    saved = {name: dict(getattr(fx, name)) for name in ("CTVIT", "MASKGIT", "UNET")}
    fx.CTVIT.update(image_size=32, patch_size=8, dim=64)
    fx.MASKGIT.update(dim=128, depth=2, max_seq_len=256)
    fx.UNET.update(dim=16, dim_mults=[1, 2, 4], max_text_len=64, attn_pool_max_seq_len=64)
    try:
        yield
    finally:
        for name, values in saved.items():
            getattr(fx, name).clear()
            getattr(fx, name).update(values)


def _barrier(folder: Path, rank: int, world: int) -> None:
    """Every rank has loaded its models: a file per rank, then wait for all (no process group needed)."""
    (folder / f"ready-{rank}").write_text("")
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while len(list(folder.glob("ready-*"))) < world:
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {rank}: the other ranks did not load their models in {BARRIER_TIMEOUT_S} s")
        time.sleep(0.01)


def worker(registry_root: Path, out_dir: Path, volumes: int, device: str) -> None:
    """One torchrun rank: load, meet the others, generate this rank's share, write its timing."""
    import torch

    import generation_fixtures as fx
    from generatect_kedro.generation.batch import BatchSettings, generate_batch, rank_info, shard
    from generatect_kedro.generation.geometry import geometry_from_params
    from generatect_kedro.generation.models import ModelRequest, load_models
    from generatect_kedro.generation.sampler import GenerationItem, SamplerSettings, VolumeSampler

    rank, world = rank_info()
    if device == "cpu":
        torch.set_num_threads(1)
    with _demo_shapes():
        fx.use_registry(registry_root)
        models = load_models(ModelRequest(), text_encoder={"device": "cpu"}, device=device)
    settings = SamplerSettings.from_params({"superres": {"sampler": "dpm++2m", "steps": STEPS},
                                            "slice_batch_size": SLICES}, models)
    sampler = VolumeSampler(models, settings, geometry_from_params({"spacing_mm": [0.75, 0.75, 1.5]}))
    items = [GenerationItem(f"item{i:03d}", PROMPTS[i % len(PROMPTS)], 1000 + i, SLICES) for i in range(volumes)]
    batch = BatchSettings(out_dir=out_dir / "volumes", progress=False, track=False, preview=False)
    list(sampler.generate([GenerationItem("warm-up", PROMPTS[0], 999, SLICES)]))  # first-call costs, not written
    _barrier(out_dir, rank, world)
    start = time.time()
    generate_batch(sampler, items, batch)
    end = time.time()
    payload = {"rank": rank, "world": world, "start": start, "end": end, "items": len(shard(items, rank, world))}
    (out_dir / f"timing-{rank}.json").write_text(json.dumps(payload))


def _launch(ranks: int, registry_root: Path, out_dir: Path, volumes: int, device: str) -> dict:
    out_dir.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if device == "cpu" else dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    command = [*torchrun, __file__, "--worker", str(registry_root), str(out_dir), "--volumes", str(volumes),
               "--device", device]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{ranks} rank(s) failed:\n{done.stderr[-3000:]}")
    timings = [json.loads(p.read_text()) for p in sorted(out_dir.glob("timing-*.json"))]
    written = len(list((out_dir / "volumes").glob("*.nii.gz")))
    if len(timings) != ranks or written != volumes:
        raise RuntimeError(f"{ranks} rank(s): {len(timings)} timing files, {written}/{volumes} volumes written")
    span = max(t["end"] for t in timings) - min(t["start"] for t in timings)
    return {"ranks": ranks, "seconds": span, "per_rank": [t["items"] for t in timings]}


def _default_ranks(device: str) -> list[int]:
    if device.startswith("cuda"):
        import torch

        count = torch.cuda.device_count()
        return [k for k in (1, 2, 4, 8, 16) if k <= count] or [1]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return [k for k in (1, 2, 4, 8) if k <= cores] or [1]


def run(quick: bool = False, device: str = "cpu", ranks: list[int] | None = None,
        volumes: int | None = None) -> list[dict]:
    """Print the table; one record per rank count."""
    import generation_fixtures as fx

    ranks = ranks or _default_ranks(device)
    volumes = volumes or (4 if quick else 8)
    results = []
    import mlflow

    tracking_uri = mlflow.get_tracking_uri()
    with tempfile.TemporaryDirectory() as scratch, _demo_shapes():
        root = Path(scratch)
        fx.use_registry(root)
        try:
            fx.register_tiny_models(root)
            for k in ranks:
                results.append(_launch(k, root, root / f"ranks-{k}", volumes, device))
                print(f"  {k} rank(s): {results[-1]['seconds']:.2f} s for {volumes} volumes", flush=True)
        finally:
            mlflow.set_tracking_uri(tracking_uri)  # the throwaway registry goes with the folder
    base = results[0]["seconds"] * results[0]["ranks"]  # one rank's time (the first count is 1 unless asked)
    shape = f"{volumes}×{SLICES}×64×64"
    print(f"\n{'ranks':>5s} {'seconds':>8s} {'volumes/s':>10s} {'speedup':>8s} {'efficiency':>10s}  volumes per rank")
    records = []
    for r in results:
        speedup = base / r["seconds"]
        print(f"{r['ranks']:5d} {r['seconds']:8.2f} {volumes / r['seconds']:10.3f} {speedup:8.2f} "
              f"{speedup / r['ranks']:10.0%}  {r['per_rank']}")
        records.append(record(BENCHMARK, f"{r['ranks']} rank(s)", shape, r["seconds"],
                              per_second(volumes, r["seconds"]), "volumes/s",
                              notes=f"speedup {speedup:.2f}× over 1 rank, efficiency {speedup / r['ranks']:.0%}; "
                                    f"{'1 thread per rank' if device == 'cpu' else 'one GPU per rank'}, "
                                    "model loading excluded",
                              ranks=r["ranks"], volumes=volumes, volumes_per_rank=r["per_rank"], speedup=speedup,
                              efficiency=speedup / r["ranks"], device=device))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("REGISTRY_ROOT", "OUT_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="4 volumes instead of 8")
    parser.add_argument("--ranks", default=None, help="rank counts, comma-separated (default: 1,2,… up to the "
                                                      "cores on CPU or the GPUs on CUDA)")
    parser.add_argument("--volumes", type=int, default=None, help="volumes per batch (default 8, --quick 4)")
    add_common_args(parser)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]), int(args.volumes), args.device)
        return
    ranks = [int(k) for k in args.ranks.split(",")] if args.ranks else None
    if ranks and ranks[0] != 1:
        parser.error("--ranks must start with 1 (the speedup is over one rank)")
    write_json(args.json, run(args.quick, args.device, ranks, args.volumes))


if __name__ == "__main__":
    main()
