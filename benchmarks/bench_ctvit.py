"""CT-ViT timings, memory and MFU on this machine, and the position-bias memory saved by unique-offset evaluation.

Usage: ``.venv/bin/python benchmarks/bench_ctvit.py [--quick] [--paper-backward] [--threads N] [--device cpu|cuda]
[--precision auto|fp32|bf16] [--json OUT]``

Each model case runs in a fresh subprocess so its peak RSS (VmHWM; ru_maxrss would include the parent's) minus
the RSS after building the model is that case's activation peak ("peak Δ RSS"; on CUDA
``torch.cuda.max_memory_allocated`` above the weights). CPU numbers: GPU runs will look very different.

Training cases (forward + backward of the reconstruction + commitment loss; no GAN term, no optimizer step) count
their FLOPs on the warm-up step (`generatect_kedro.capacity.flops`) and report TFLOP per step, achieved TFLOPS
and, on a GPU with a known bf16 peak, the MFU (issue #8: >= 40 %). ``--precision auto`` runs the model under bf16
autocast on CUDA, fp32 on the CPU. With ``--device cuda`` (not ``--quick``) the paper-shape training cases run:
1 and 4 (conf/base's micro-batch) volumes of 201×128×128. ``run()`` returns the figures as ``benchlib.record``
dicts (``--json OUT`` writes them).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time

import torch
from benchlib import (MFU_HEADER, add_common_args, add_precision_arg, autocast, describe_mfu, describe_peak,
                      device_bf16_peak_tflops, memory_baseline, memory_peaks, mfu_cells, mfu_fields,
                      per_second, record,
                      resolve_precision, write_json)

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
PAPER_BATCH_BACKWARD = ("paper    4×201×128² (conf/base batch)", PAPER, (4, 201, 128), True, 1)
CUDA_MIN_REPEATS = 5  # timed runs per case on a GPU (after the warm-up)


def run_case(overrides: dict, shape: tuple[int, int, int], backward: bool, repeats: int, device: str = "cpu",
             precision: str = "fp32") -> dict:
    """Child-process body: time forward(+backward) and report the activation peak; a training case's warm-up
    step counts its FLOPs."""
    from generatect_kedro.capacity.flops import count_training_flops

    torch.manual_seed(0)
    model = CTViT(CTViTConfig(**overrides)).train(backward).to(device)
    b, slices, size = shape
    volume = (torch.rand(b, 1, slices, size, size) * 2 - 1).to(device)
    cuda = device.startswith("cuda")
    base = memory_baseline(device)

    def loss() -> torch.Tensor:
        with autocast(device, precision):
            out = model(volume)
            return out.recon_loss + out.commit_loss

    flops = count_training_flops(loss, modules=[model]) if backward else None  # the warm-up step
    times = []
    warmup = 0 if backward else (1 if repeats > 1 else 0)  # a training case has warmed up while counting
    for _ in range(repeats + warmup):
        start = time.perf_counter()
        if backward:
            loss().backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), autocast(device, precision):
                model(volume)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times = times[warmup:]
    return {"seconds": statistics.median(times), **memory_peaks(device, base), "flops": flops,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "tokens": b * math.prod(model.config.token_grid(slices))}


def spawn(case: tuple, threads: int, device: str = "cpu", precision: str = "fp32") -> dict:
    name, overrides, shape, backward, repeats = case
    if device.startswith("cuda"):
        repeats = max(repeats, CUDA_MIN_REPEATS)
    payload = json.dumps([overrides, list(shape), backward, repeats, device, precision])
    code = (
        "import json,sys,torch; sys.path.insert(0, 'benchmarks'); import bench_ctvit as b; "
        f"torch.set_num_threads({threads}); o,s,bw,r,d,p=json.loads(sys.argv[1]); "
        "print(json.dumps(b.run_case(o, tuple(s), bw, r, d, p)))"
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


def run(quick: bool = False, device: str = "cpu", threads: int | None = None,
        paper_backward: bool = False, precision: str = "auto") -> list[dict]:
    """Print the tables and return one record per case (throughput: input slices per second)."""
    threads = threads or torch.get_num_threads()
    precision = resolve_precision(precision, device)
    peak = device_bf16_peak_tflops(device)
    records = []
    cases = [c for c in CASES if not (quick and c[1] is PAPER)]
    if paper_backward and not quick:
        cases += [PAPER_SHALLOW_BACKWARD, PAPER_BACKWARD]
    elif device.startswith("cuda") and not quick:  # the paper shapes whose MFU issue #8 is about
        cases += [PAPER_BACKWARD]
    if device.startswith("cuda") and not quick:
        cases += [PAPER_BATCH_BACKWARD]
    print(f"torch {torch.__version__}, device {device}, {threads} CPU threads, {precision}, "
          f"{describe_peak(device, peak)}\n")
    print(f"{'CT-ViT case':38s} {'pass':8s} {'params':>8s} {'tokens':>7s} {'time s':>8s} {'peak Δ RSS':>11s} "
          f"{MFU_HEADER}")
    for case in cases:
        res = spawn(case, threads, device, precision)
        kind = "fwd+bwd" if case[3] else "fwd"
        name = " ".join(case[0].split())
        stage = name if "(" in name else f"{name} {kind}"
        b, slices, size = case[2]
        shape = f"{b}×1×{slices}×{size}×{size}"
        if "error" in res:
            print(f"{case[0]:38s} {kind:8s} failed: {res['error']}")
            records.append(record("ctvit", stage, shape, error=res["error"]))
            continue
        mfu = mfu_fields(res["flops"], res["seconds"], peak) if res["flops"] else {}
        print(f"{case[0]:38s} {kind:8s} {res['params_m']:7.2f}M {res['tokens']:7d} {res['seconds']:8.3f} "
              f"{res['peak_delta_mb']:8.0f} MB {mfu_cells(mfu)}")
        records.append(record(
            "ctvit", stage, shape, res["seconds"], per_second(b * slices, res["seconds"]), "slices/s",
            res["peak_rss_mb"], res["peak_gpu_mb"], notes=f"{res['params_m']:.2f}M params, {res['tokens']} tokens, "
            f"peak Δ {res['peak_delta_mb']:.0f} MiB, {precision}{describe_mfu(mfu)}", params_m=res["params_m"],
            tokens=res["tokens"], peak_delta_mib=res["peak_delta_mb"], threads=threads, device=device,
            precision=precision, **mfu))

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
        dense_note = f", N² pairs {r['dense_s']:.3f} s" if r["dense_s"] is not None else ""
        records.append(record(
            "ctvit", f"position bias, unique offsets ({label.split(' (')[0]})", r["grid"], r["fast_s"],
            per_second(r["unique"], r["fast_s"]), "offsets/s", notes=f"MLP {r['mlp_unique_mb']:.2f} MiB unique vs "
            f"{r['mlp_dense_mb']:.0f} MiB N² pairs (analytic){dense_note}; CPU, in-process",
            mlp_unique_mib=r["mlp_unique_mb"], mlp_dense_mib=r["mlp_dense_mb"], dense_seconds=r["dense_s"]))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the paper-scale cases")
    parser.add_argument("--paper-backward", action="store_true",
                        help="also time forward+backward at 1×201×128² (always on with --device cuda)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    add_common_args(parser)
    add_precision_arg(parser)
    args = parser.parse_args()
    write_json(args.json, run(args.quick, args.device, args.threads, args.paper_backward, args.precision))


if __name__ == "__main__":
    main()
