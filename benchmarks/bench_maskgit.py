"""MaskGIT timings, memory and MFU on this machine: training step (fwd+bwd) and guided sampling, cached vs not.

Usage: ``.venv/bin/python benchmarks/bench_maskgit.py [--quick] [--threads N] [--paper-depth D] [--device cpu|cuda]
[--precision auto|fp32|bf16] [--json OUT]``

Each case runs in a fresh subprocess, so its peak RSS (VmHWM; ru_maxrss would include the parent's) minus the
RSS after building the model is that case's activation peak ("peak Δ RSS"). Sampling uses classifier-free
guidance (one batched pass of 2b per step). Paper-scale sampling is timed per step (1 step, and the context
preparation the cache saves) and extrapolated to 18 steps: a full paper-scale volume takes many minutes on 2 CPU
cores. CPU numbers only; on a shared machine they vary with the load. On CUDA "peak Δ" is
``torch.cuda.max_memory_allocated`` above the weights.

Training cases (``masked_token_loss`` forward + backward, no optimizer step) count their FLOPs on the warm-up step
(`generatect_kedro.capacity.flops`) and report TFLOP per step, achieved TFLOPS and, on a GPU with a known bf16
peak, the MFU (issue #8: >= 40 %). ``--precision auto`` runs the model under bf16 autocast on CUDA, fp32 on the
CPU. The paper-scale training step (101×8×8 tokens, conf/base's micro-batch of 1) has ``--paper-depth`` blocks:
the paper's 6 on CUDA, 1 on the CPU unless given. ``run()`` returns the figures as ``benchlib.record`` dicts
(``--json OUT`` writes them).
"""

from __future__ import annotations

import argparse
import contextlib
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

from generatect_kedro.losses.maskgit_loss import masked_token_loss
from generatect_kedro.models.maskgit import MaskGIT, MaskGITConfig
from generatect_kedro.models.maskgit_sampling import MaskGITSamplerConfig, sample_tokens

DEMO = dict(num_tokens=512, dim=64, dim_context=384, depth=2, heads=4, dim_head=16, max_seq_len=256)
PAPER: dict = {}  # MaskGITConfig defaults: 8192 tokens, dim 512, depth 6, heads 8×64, T5 768
TEXT_LEN = {"demo": 32, "paper": 64}

# name, config, grid, text, kind, batch, repeats
CASES = [
    ("demo   9×4×4 train", DEMO, (9, 4, 4), "demo", "train", 4, 5),
    ("demo   9×4×4 sample 18 steps, cache", DEMO, (9, 4, 4), "demo", "sample", 1, 3),
    ("demo   9×4×4 sample 18 steps, no cache", DEMO, (9, 4, 4), "demo", "sample_nocache", 1, 3),
]
PAPER_DEPTH = MaskGITConfig().depth
CUDA_MIN_REPEATS = 5  # timed runs per case on a GPU (after the warm-up)
PAPER_CASES = [
    ("paper 101×8×8 forward (no grad)", PAPER, (101, 8, 8), "paper", "forward", 1, 1),
    ("paper 101×8×8 guided step, cache", PAPER, (101, 8, 8), "paper", "step", 1, 1),
    ("paper 101×8×8 context prep (per step w/o cache)", PAPER, (101, 8, 8), "paper", "context", 1, 2),
]


def run_case(overrides: dict, grid: tuple[int, int, int], text_key: str, kind: str, batch: int, repeats: int,
             device: str = "cpu", precision: str = "fp32") -> dict:
    """Child-process body: build, warm up (when repeating; a training case counts its FLOPs then), time
    ``repeats`` runs, report the activation peak."""
    from generatect_kedro.capacity.flops import count_training_flops

    torch.manual_seed(0)
    config = MaskGITConfig(**overrides)
    model = MaskGIT(config).train(kind == "train").to(device)
    n = math.prod(grid)
    text = torch.randn(batch, TEXT_LEN[text_key], config.dim_context).to(device)
    mask = torch.ones(batch, TEXT_LEN[text_key], dtype=torch.bool).to(device)
    ids = torch.randint(0, config.num_tokens, (batch, *grid)).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    base = memory_baseline(device)

    def loss() -> torch.Tensor:
        with autocast(device, precision):
            return masked_token_loss(model, ids, text, mask, cond_drop_prob=0.1, generator=gen)[0]

    def once() -> float:
        """One run; returns the seconds of the measured region. The model work runs under the precision's
        autocast; a training step's backward outside it, as the trainer runs it (``loss`` autocasts itself)."""
        with contextlib.nullcontext() if kind == "train" else autocast(device, precision):
            return run_once()

    def run_once() -> float:
        start = time.perf_counter()
        if kind == "train":
            loss().backward()
            model.zero_grad(set_to_none=True)
        elif kind in ("sample", "sample_nocache"):
            cfg = MaskGITSamplerConfig(use_cache=kind == "sample")
            sample_tokens(model, text, mask, grid, config=cfg, generator=gen)
        elif kind == "forward":
            with torch.no_grad():
                model(ids, text, mask)
        elif kind == "step":  # one guided step on a prepared context: what the cached sampler repeats
            with torch.no_grad():
                ctx = model.prepare_context(text, mask, grid, guidance=True)
                sync()
                start = time.perf_counter()
                model.forward_with_cond_scale(ids.flatten(1), grid_shape=grid, cond_scale=5.0, context=ctx)
        elif kind == "context":  # what the uncached sampler recomputes every step
            with torch.no_grad():
                model.prepare_context(text, mask, grid, guidance=True)
        sync()
        return time.perf_counter() - start

    flops = count_training_flops(loss, modules=[model]) if kind == "train" else None  # the warm-up step
    warmup = 0 if kind == "train" else (1 if repeats > 1 else 0)
    times = [once() for _ in range(repeats + warmup)][warmup:]
    return {"seconds": statistics.median(times), **memory_peaks(device, base), "tokens": n, "flops": flops,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "depth": config.depth}


def spawn(case: tuple, threads: int, device: str = "cpu", precision: str = "fp32") -> dict:
    _, overrides, grid, text_key, kind, batch, repeats = case
    if device.startswith("cuda"):
        repeats = max(repeats, CUDA_MIN_REPEATS)
    payload = json.dumps([overrides, list(grid), text_key, kind, batch, repeats, device, precision])
    code = (
        "import json,sys,torch; sys.path.insert(0, 'benchmarks'); import bench_maskgit as b; "
        f"torch.set_num_threads({threads}); o,g,t,k,bs,r,d,p=json.loads(sys.argv[1]); "
        "print(json.dumps(b.run_case(o, tuple(g), t, k, bs, r, d, p)))"
    )
    proc = subprocess.run([sys.executable, "-c", code, payload], capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# throughput unit per kind: token passes count batch × tokens per timed run; a step or a context prep counts 1
_WORK = {"train": "tokens/s", "sample": "tokens/s", "sample_nocache": "tokens/s", "forward": "tokens/s",
         "step": "steps/s", "context": "preps/s"}


def run(quick: bool = False, device: str = "cpu", threads: int | None = None, paper_depth: int | None = None,
        precision: str = "auto") -> list[dict]:
    """Print the table and return one record per case."""
    threads = threads or torch.get_num_threads()
    precision = resolve_precision(precision, device)
    peak = device_bf16_peak_tflops(device)
    if paper_depth is None:
        paper_depth = PAPER_DEPTH if device.startswith("cuda") else 1
    records = []
    cases = list(CASES)
    if not quick:
        paper_train = (f"paper 101×8×8 train (depth {paper_depth})", {"depth": paper_depth}, (101, 8, 8),
                       "paper", "train", 1, 1)
        cases += [*PAPER_CASES, paper_train]
    print(f"torch {torch.__version__}, device {device}, {threads} CPU threads, {precision}, guidance scale 5 "
          f"(2b per step), {describe_peak(device, peak)}\n")
    print(f"{'MaskGIT case':50s} {'depth':>5s} {'params':>8s} {'tokens':>6s} {'time s':>9s} {'peak Δ RSS':>11s} "
          f"{MFU_HEADER}")
    results = {}
    for case in cases:
        res = spawn(case, threads, device, precision)
        results[case[0]] = res
        name, grid, kind, batch = " ".join(case[0].split()), case[2], case[4], case[5]
        shape = f"{batch}×{'×'.join(map(str, grid))} tokens"
        if "error" in res:
            print(f"{case[0]:50s} failed: {res['error']}")
            records.append(record("maskgit", name, shape, error=res["error"]))
            continue
        mfu = mfu_fields(res["flops"], res["seconds"], peak) if res["flops"] else {}
        print(f"{case[0]:50s} {res['depth']:5d} {res['params_m']:7.2f}M {res['tokens']:6d} {res['seconds']:9.3f} "
              f"{res['peak_delta_mb']:8.0f} MB {mfu_cells(mfu)}")
        unit = _WORK[kind]
        amount = batch * res["tokens"] if unit == "tokens/s" else 1
        records.append(record(
            "maskgit", name, shape, res["seconds"], per_second(amount, res["seconds"]), unit, res["peak_rss_mb"],
            res["peak_gpu_mb"], notes=f"depth {res['depth']}, {res['params_m']:.2f}M params, "
            f"peak Δ {res['peak_delta_mb']:.0f} MiB, {precision}{describe_mfu(mfu)}", params_m=res["params_m"],
            depth=res["depth"], tokens=res["tokens"], peak_delta_mib=res["peak_delta_mb"], threads=threads,
            device=device, precision=precision, **mfu))

    step = results.get("paper 101×8×8 guided step, cache", {})
    prep = results.get("paper 101×8×8 context prep (per step w/o cache)", {})
    if "seconds" in step and "seconds" in prep:
        cached, uncached = 18 * step["seconds"] + prep["seconds"], 18 * (step["seconds"] + prep["seconds"])
        print(f"\npaper-scale volume, 18 guided steps (extrapolated): {cached:.0f} s with the cache, "
              f"{uncached:.0f} s recomputing bias + text k/v every step")
        records.append(record(
            "maskgit", "paper 101×8×8 sample 18 steps, cache (extrapolated)", "1×101×8×8 tokens", cached,
            per_second(101 * 8 * 8, cached), "tokens/s", notes=f"EXTRAPOLATED: 18 × step + 1 context prep; "
            f"{uncached:.0f} s without the cache", extrapolated=True, uncached_seconds=uncached, device=device))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="demo cases only")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--paper-depth", type=int, default=None,
                        help=f"depth of the paper-scale training step (default: {PAPER_DEPTH} on CUDA, 1 on the CPU)")
    add_common_args(parser)
    add_precision_arg(parser)
    args = parser.parse_args()
    write_json(args.json, run(args.quick, args.device, args.threads, args.paper_depth, args.precision))


if __name__ == "__main__":
    main()
