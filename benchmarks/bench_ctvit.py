"""CT-ViT timings and memory on this machine, and the position-bias memory saved by unique-offset evaluation.

Usage: ``.venv/bin/python benchmarks/bench_ctvit.py [--quick] [--paper-backward] [--threads N]``

Each model case runs in a fresh subprocess so its peak RSS (ru_maxrss) minus the RSS after building the
model is that case's activation peak ("peak Δ RSS"). CPU numbers: GPU runs will look very different.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

import torch

from generatect_kedro.models.ctvit import CTViT, CTViTConfig
from generatect_kedro.models.position_bias import ContinuousPositionBias

FIXTURE = dict(dim=64, codebook_size=128, image_size=32, patch_size=8, temporal_patch_size=2, spatial_depth=2,
               temporal_depth=2, dim_head=16, heads=2)
DEMO = dict(dim=64, codebook_size=512, image_size=32, patch_size=8, temporal_patch_size=2, spatial_depth=2,
            temporal_depth=2, dim_head=16, heads=4)
PAPER: dict = {}  # CTViTConfig defaults
PAPER_SHALLOW = dict(spatial_depth=1, temporal_depth=1)

# name, config overrides, (batch, slices, size), backward?, repeats
CASES = [
    ("fixture  2×9×32²", FIXTURE, (2, 9, 32), True, 5),
    ("demo     2×17×32²", DEMO, (2, 17, 32), True, 5),
    ("paper    1×33×128²", PAPER, (1, 33, 128), True, 2),
    ("paper    1×201×128² (no grad)", PAPER, (1, 201, 128), False, 1),
]
PAPER_BACKWARD = ("paper    1×201×128²", PAPER, (1, 201, 128), True, 1)
PAPER_SHALLOW_BACKWARD = ("paper d1/1 1×201×128²", PAPER_SHALLOW, (1, 201, 128), True, 1)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_case(overrides: dict, shape: tuple[int, int, int], backward: bool, repeats: int) -> dict:
    """Child-process body: time forward(+backward) and report the activation peak."""
    torch.manual_seed(0)
    model = CTViT(CTViTConfig(**overrides)).train(backward)
    b, slices, size = shape
    volume = torch.rand(b, 1, slices, size, size) * 2 - 1
    base = rss_mb()
    times = []
    for _ in range(repeats + (1 if repeats > 1 else 0)):  # one warm-up when repeating
        start = time.perf_counter()
        if backward:
            out = model(volume)
            (out.recon_loss + out.commit_loss).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(volume)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB → MB on Linux
    times = times[1:] if repeats > 1 else times
    return {"seconds": statistics.median(times), "peak_delta_mb": peak - base,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "tokens": b * math.prod(model.config.token_grid(slices))}


def spawn(case: tuple, threads: int) -> dict:
    name, overrides, shape, backward, repeats = case
    payload = json.dumps([overrides, list(shape), backward, repeats])
    code = (
        "import json,sys,torch; sys.path.insert(0, 'benchmarks'); import bench_ctvit as b; "
        f"torch.set_num_threads({threads}); o,s,bw,r=json.loads(sys.argv[1]); "
        "print(json.dumps(b.run_case(o, tuple(s), bw, r)))"
    )
    proc = subprocess.run([sys.executable, "-c", code, payload], capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bias_memory(grid: tuple[int, ...], hidden: int, heads: int, measure_dense_below_mb: float = 512) -> dict:
    """MLP activation bytes (sum of layer outputs, what autograd keeps) and timing, unique vs N² pairs."""
    n, unique = math.prod(grid), math.prod(2 * g - 1 for g in grid)
    act = lambda rows: rows * (2 * hidden + heads) * 4 / 2**20  # noqa: E731  two hidden layers + head output
    module = ContinuousPositionBias(dim=hidden, heads=heads, num_dims=len(grid))
    with torch.no_grad():
        start = time.perf_counter()
        module(*grid)
        fast_s = time.perf_counter() - start
        dense_s = None
        if act(n * n) < measure_dense_below_mb:
            start = time.perf_counter()
            module.forward_dense(*grid)
            dense_s = time.perf_counter() - start
    return {"grid": "×".join(map(str, grid)), "N": n, "unique": unique, "mlp_unique_mb": act(unique),
            "mlp_dense_mb": act(n * n), "output_mb": heads * n * n * 4 / 2**20, "fast_s": fast_s, "dense_s": dense_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the paper-scale cases")
    parser.add_argument("--paper-backward", action="store_true", help="also time forward+backward at 1×201×128²")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    cases = [c for c in CASES if not (args.quick and c[1] is PAPER)]
    if args.paper_backward and not args.quick:
        cases += [PAPER_SHALLOW_BACKWARD, PAPER_BACKWARD]
    print(f"torch {torch.__version__}, {args.threads} CPU threads, float32\n")
    print(f"{'CT-ViT case':32s} {'pass':8s} {'params':>8s} {'tokens':>7s} {'time s':>8s} {'peak Δ RSS':>11s}")
    for case in cases:
        res = spawn(case, args.threads)
        kind = "fwd+bwd" if case[3] else "fwd"
        if "error" in res:
            print(f"{case[0]:32s} {kind:8s} failed: {res['error']}")
            continue
        print(f"{case[0]:32s} {kind:8s} {res['params_m']:7.2f}M {res['tokens']:7d} {res['seconds']:8.3f} "
              f"{res['peak_delta_mb']:8.0f} MB")

    print("\nPosition bias at 201×128×128 (MLP activations = sum of layer outputs; dense figures analytic)")
    print(f"{'grid':10s} {'N':>5s} {'offsets':>8s} {'MLP unique':>11s} {'MLP N² pairs':>13s} {'bias out':>10s} "
          f"{'unique s':>9s} {'N² s':>7s}")
    rows = [
        ((8, 8), 512, 8, "CT-ViT spatial (hidden dim 512)"),
        ((101, 8, 8), 64, 8, "MaskGIT 3-D (hidden dim_head 64)"),
    ]
    for grid, hidden, heads, label in rows:
        r = bias_memory(grid, hidden, heads)
        dense_s = f"{r['dense_s']:7.3f}" if r["dense_s"] is not None else "    n/a"
        print(f"{r['grid']:10s} {r['N']:5d} {r['unique']:8d} {r['mlp_unique_mb']:8.2f} MB {r['mlp_dense_mb']:10.0f} MB "
              f"{r['output_mb']:7.0f} MB {r['fast_s']:9.3f} {dense_s}   {label}")


if __name__ == "__main__":
    main()
