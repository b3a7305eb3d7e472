"""Super-resolution timings, memory and MFU: slice-batched vs one slice at a time, DPM-Solver++ vs ancestral,
and the U-Net's training step.

Usage: ``.venv/bin/python benchmarks/bench_superres.py [--quick] [--device cpu|cuda] [--threads N]
[--paper-batches 1,2] [--demo-dim 32] [--precision auto|fp32|bf16] [--json OUT]``

* demo: a dim-``--demo-dim`` U-Net (T5-width text, paper heads) upsamples a 17-slice 32² volume to 64²,
  whole volumes timed: ancestral 25 steps (the release's sampler and count) and DPM-Solver++(2M) 10 steps,
  each one slice at a time (the release's loop) and with all slices in one batch.
* paper: the released architecture (dim 64, 22.2 M) on 128² → 512² slices. A whole 201-slice volume is far
  too slow on a CPU (one U-Net evaluation of one 512² slice takes ~14 s on 2 cores), so one sampler step
  (one U-Net evaluation, plus the low-res noising and the sampler's update) is timed on batches of 1 and 2
  slices (on CUDA 8 and 67, the generation configs' slice batches) and the per-volume figures are
  **extrapolated**: 201 slices × steps × time per slice-step.
* training: one ``superres_v_loss`` forward + backward (no optimizer step) on a micro-batch of slices: the demo
  U-Net at 32² → 64² always; the released U-Net at conf/base's micro-batch of 8 slices, 128² → 256² and
  256² → 512², with ``--device cuda`` (not ``--quick``): far too slow on a CPU.

FLOPs are model FLOPs (`generatect_kedro.capacity.flops`): a training case counts its warm-up step; a sampling
case is steps × slices × one U-Net call on one slice, counted on the meta device. With them come achieved TFLOPS
and, on a GPU with a known bf16 peak, the MFU. ``--precision auto`` runs the U-Net under bf16 autocast on CUDA
(its output cast back to fp32, as generation does), fp32 on the CPU.

Each case runs in fresh subprocesses (fastest of ``--repeats`` shown: development machines are shared);
"peak Δ" is that process's peak RSS minus its RSS after building the
model and inputs (CPU), or ``torch.cuda.max_memory_allocated`` minus the weights (CUDA). ``run()`` returns the
figures as ``benchlib.record`` dicts (``--json OUT`` writes them).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from benchlib import (MFU_HEADER, add_common_args, add_precision_arg, autocast, describe_mfu, describe_peak,
                      device_bf16_peak_tflops, memory_baseline, memory_peaks, mfu_cells, mfu_fields,
                      per_second, record,
                      resolve_precision, write_json)
from torch import nn

from generatect_kedro.diffusion import upsample_volume
from generatect_kedro.models.unet import UNet, UNetConfig

PAPER_SLICES = 201
TEXT_TOKENS = 64  # T5 tokens of a typical impression (padded rows are masked)
PAPER_TRAIN_SLICES = 8  # conf/base superres.trainer.batch_size (slices_per_item 1)
CUDA_MIN_REPEATS = 5  # timed training steps on a GPU (after the warm-up)
CUDA_PAPER_BATCHES = "8,67"  # generation.sampler.slice_batch_size of conf/base and conf/gpu_80gb


class Bf16UNet(nn.Module):
    """The U-Net under bf16 autocast, its output cast back to fp32: the sampler's arithmetic stays fp32."""

    def __init__(self, unet: nn.Module, device: str) -> None:
        super().__init__()
        self.unet, self.device_type = unet, "cuda" if device.startswith("cuda") else "cpu"

    def forward(self, *args, **kwargs) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.unet(*args, **kwargs).float()


def unet_call_flops(config: dict, lowres: int, scale: int, text_embed_dim: int | None = None) -> int:
    """FLOPs of one sampler call of the U-Net on one slice (no guidance, as ``upsample_volume`` runs it here),
    counted on the meta device."""
    from generatect_kedro.capacity.flops import count_flops
    from generatect_kedro.diffusion.guidance import GuidedDenoiser

    meta = torch.device("meta")
    with meta:
        unet = UNet(UNetConfig(**config)).eval()
    side = lowres * scale
    text = torch.empty(1, TEXT_TOKENS, text_embed_dim or unet.config.text_embed_dim, device=meta)
    mask = torch.ones(1, TEXT_TOKENS, dtype=torch.bool, device=meta)
    denoiser = GuidedDenoiser(unet, lowres_cond_img=torch.empty(1, 1, side, side, device=meta),
                              lowres_noise_log_snr=torch.empty(1, device=meta), text_embeds=text, text_mask=mask)
    return count_flops(lambda: denoiser(torch.empty(1, 1, side, side, device=meta), torch.empty(1, device=meta)))


def run_case(config: dict, slices: int, lowres: int, scale: int, sampler: str, steps: int, batch: int,
             device: str, precision: str = "fp32") -> dict:
    """Child-process body: one upsample_volume call; seconds and the memory peak above the baseline."""
    torch.manual_seed(0)
    unet = UNet(UNetConfig(**config)).to(device).eval()
    with torch.no_grad():
        unet.final_conv.weight.normal_(std=0.02)  # zero-initialised otherwise; a trained model is not
    model = Bf16UNet(unet, device) if precision == "bf16" else unet
    volume = torch.rand(slices, lowres, lowres) * 2 - 1
    text = torch.randn(1, TEXT_TOKENS, unet.config.text_embed_dim)
    mask = torch.arange(TEXT_TOKENS)[None] < 40
    base = memory_baseline(device)
    cpu_start = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    out = upsample_volume(model, volume, text, mask, scale=scale, sampler=sampler, steps=steps,
                          slice_batch_size=batch, generator=torch.Generator().manual_seed(0))
    peaks = memory_peaks(device, base)
    seconds = time.perf_counter() - start
    cpu_end = resource.getrusage(resource.RUSAGE_SELF)
    cpu = cpu_end.ru_utime + cpu_end.ru_stime - cpu_start.ru_utime - cpu_start.ru_stime
    assert out.shape == (slices, lowres * scale, lowres * scale)
    return {"seconds": seconds, "cpu_seconds": cpu, **peaks, "params_m": sum(p.numel() for p in unet.parameters()) / 1e6}


def run_train_case(config: dict, slices: int, lowres: int, scale: int, repeats: int, device: str,
                   precision: str = "fp32") -> dict:
    """Child-process body: ``repeats`` training steps (loss forward + backward) after a warm-up step that counts
    the FLOPs; median seconds and the memory peak above the baseline."""
    import statistics

    from generatect_kedro.capacity.flops import count_training_flops
    from generatect_kedro.diffusion.loss import draw_loss_randomness, superres_v_loss

    torch.manual_seed(0)
    unet = UNet(UNetConfig(**config)).to(device).train()
    side = lowres * scale
    target = (torch.rand(slices, 1, side, side) * 2 - 1).to(device)
    low = (torch.rand(slices, 1, lowres, lowres) * 2 - 1).to(device)
    text = torch.randn(slices, TEXT_TOKENS, unet.config.text_embed_dim).to(device)
    mask = (torch.arange(TEXT_TOKENS)[None] < 40).expand(slices, -1).to(device)
    cuda = device.startswith("cuda")
    base = memory_baseline(device)

    def loss() -> torch.Tensor:
        draws = draw_loss_randomness(target, cond_drop_prob=0.1)
        with autocast(device, precision):
            return superres_v_loss(unet, target, low, text, mask, draws=draws).loss

    flops = count_training_flops(loss, modules=[unet])  # the warm-up step
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loss().backward()
        unet.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "cpu_seconds": None, "flops": flops, **memory_peaks(device, base),
            "params_m": sum(p.numel() for p in unet.parameters()) / 1e6}


def spawn_best(args: tuple, threads: int, repeats: int) -> dict:
    """Fastest of ``repeats`` fresh-process runs: the machine may be shared, the minimum is the least disturbed."""
    runs = [spawn(args, threads) for _ in range(max(1, repeats))]
    ok = [r for r in runs if "error" not in r]
    return min(ok, key=lambda r: r["seconds"]) if ok else runs[0]


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def spawn(args: tuple, threads: int, body: str = "run_case") -> dict:
    """Run ``body(*args)`` of this module in a fresh process; its result dict, or ``{"error": ...}``."""
    code = (
        "import json,sys,torch; sys.path.insert(0, 'benchmarks'); import bench_superres as b; "
        f"torch.set_num_threads({threads}); a=json.loads(sys.argv[1]); print(json.dumps(b.{body}(*a)))"
    )
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(list(args))], capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt_s(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:8.2f} s"
    if seconds < 7200:
        return f"{seconds / 60:8.1f} min"
    return f"{seconds / 3600:8.1f} h"


def _record(stage: str, shape: str, res: dict, amount: float, unit: str, device: str, threads: int, notes: str,
            **extra) -> dict:
    if "error" in res:
        return record("superres", stage, shape, error=res["error"])
    cpu = f", CPU {res['cpu_seconds']:.1f} s" if res.get("cpu_seconds") is not None else ""
    return record("superres", stage, shape, res["seconds"], per_second(amount, res["seconds"]), unit,
                  res["peak_rss_mb"], res["peak_gpu_mb"], notes=f"{res['params_m']:.2f}M params{cpu}, "
                  f"peak Δ {res['peak_delta_mb']:.0f} MiB{notes}{describe_mfu(extra)}",
                  params_m=res["params_m"], cpu_seconds=res["cpu_seconds"], peak_delta_mib=res["peak_delta_mb"],
                  device=device, threads=threads, **extra)


def _sampling_mfu(call_flops: int, steps: int, slices: int, res: dict, peak: float | None) -> dict:
    """MFU fields of an ``upsample_volume`` run: ``steps`` U-Net calls per slice."""
    return mfu_fields(call_flops * steps * slices, res.get("seconds"), peak, per="run") if "error" not in res else {}


def _train_cases(quick: bool, device: str, demo_dim: int) -> list[tuple[str, dict, int, int, int]]:
    """(name, U-Net config, slices, low-res side, scale): the demo always, the paper stages on CUDA."""
    cases = [(f"demo train step, dim {demo_dim}", dict(dim=demo_dim), 4, 32, 2)]
    if device.startswith("cuda") and not quick:
        cases += [("paper train step, stage 1", {}, PAPER_TRAIN_SLICES, 128, 2),
                  ("paper train step, stage 2", {}, PAPER_TRAIN_SLICES, 256, 2)]
    return cases


def _run_training(quick: bool, device: str, threads: int, demo_dim: int, precision: str,
                  peak: float | None) -> list[dict]:
    print(f"\ntraining: superres_v_loss forward + backward on a micro-batch of slices (median of the steps after "
          f"the FLOP-counting warm-up){'' if device.startswith('cuda') else '; paper stages with --device cuda'}")
    print(f"{'case':28s} {'slices':>6s} {'shape':>16s} {'params':>8s} {'step':>11s} {'peak Δ':>9s} {MFU_HEADER}")
    records = []
    repeats = CUDA_MIN_REPEATS if device.startswith("cuda") else 3
    for name, config, slices, lowres, scale in _train_cases(quick, device, demo_dim):
        side = lowres * scale
        shape = f"{slices}×{lowres}² → {slices}×{side}²"
        res = spawn((config, slices, lowres, scale, repeats, device, precision), threads, "run_train_case")
        mfu = mfu_fields(res["flops"], res["seconds"], peak) if "error" not in res else {}
        records.append(_record(name, shape, res, slices, "slices/s", device, threads,
                               f", {precision}, median of {repeats} steps", precision=precision, **mfu))
        if "error" in res:
            print(f"{name:28s} failed: {res['error']}")
            continue
        print(f"{name:28s} {slices:6d} {shape:>16s} {res['params_m']:7.2f}M {fmt_s(res['seconds'])} "
              f"{res['peak_delta_mb']:6.0f} MB {mfu_cells(mfu)}")
    return records


def run(quick: bool = False, device: str = "cpu", threads: int | None = None, demo_dim: int = 32,
        paper_batches: str | None = None, repeats: int = 2, precision: str = "auto") -> list[dict]:
    """Print the tables and return one record per case (throughput: output slices, or slice-steps, per second)."""
    threads = threads or torch.get_num_threads()
    precision = resolve_precision(precision, device)
    peak = device_bf16_peak_tflops(device)
    records = []
    print(f"torch {torch.__version__}, device {device}, {threads} CPU threads, {precision}, "
          f"best of {repeats}, {describe_peak(device, peak)}, load average at start {load_average()}\n")

    demo = dict(dim=demo_dim)
    slices = 17
    demo_call = unet_call_flops(demo, 32, 2)
    print(f"demo: dim {demo_dim}, {slices} slices 32² → 64², whole volume")
    print(f"{'sampler':10s} {'steps':>5s} {'slices/batch':>12s} {'params':>8s} {'wall':>11s} {'CPU':>11s} "
          f"{'wall/slice':>10s} {'peak Δ':>9s} {MFU_HEADER}")
    demo_times = {}
    for sampler, steps in (("ancestral", 25), ("dpm++2m", 10)):
        for batch in (1, slices):
            res = spawn_best((demo, slices, 32, 2, sampler, steps, batch, device, precision), threads, repeats)
            mfu = _sampling_mfu(demo_call, steps, slices, res, peak)
            records.append(_record(f"demo {sampler} {steps} steps, {batch} slice(s)/batch",
                                   f"{slices}×32² → {slices}×64²", res, slices, "slices/s", device, threads,
                                   f", {precision}, best of {repeats}", precision=precision, **mfu))
            if "error" in res:
                print(f"{sampler:10s} {steps:5d} {batch:12d} failed: {res['error']}")
                continue
            demo_times[(sampler, batch)] = res["seconds"]
            print(f"{sampler:10s} {steps:5d} {batch:12d} {res['params_m']:7.2f}M {fmt_s(res['seconds'])} "
                  f"{fmt_s(res['cpu_seconds'])} {res['seconds'] / slices:8.3f} s {res['peak_delta_mb']:6.0f} MB "
                  f"{mfu_cells(mfu, per='run')}")
    if len(demo_times) == 4:
        ref = demo_times[("ancestral", 1)]
        print("speed-up vs the release's loop (ancestral 25, one slice at a time): "
              f"batched ×{ref / demo_times[('ancestral', slices)]:.1f}, DPM++ 10 one at a time "
              f"×{ref / demo_times[('dpm++2m', 1)]:.1f}, "
              f"DPM++ 10 batched ×{ref / demo_times[('dpm++2m', slices)]:.1f}")
    records += _run_training(quick, device, threads, demo_dim, precision, peak)
    if quick:
        print(f"\nload average at end {load_average()}")
        return records

    paper_batches = paper_batches or (CUDA_PAPER_BATCHES if device.startswith("cuda") else "1,2")
    batches = [int(b) for b in paper_batches.split(",")]
    paper_call = unet_call_flops({}, 128, 4)
    print(f"\npaper: released U-Net (dim 64), 128² → 512², ONE sampler step on a batch of slices (measured); "
          f"per-volume figures for {PAPER_SLICES} slices EXTRAPOLATED")
    print(f"{'slices/batch':>12s} {'params':>8s} {'step wall':>11s} {'step CPU':>11s} {'wall/slice-step':>15s} "
          f"{'peak Δ':>9s}   "
          f"{'volume: ancestral 25':>21s} {'volume: DPM++ 10':>17s} {MFU_HEADER}")
    for batch in batches:
        res = spawn_best(({}, batch, 128, 4, "ancestral", 1, batch, device, precision), threads, repeats)
        stage, shape = f"paper one sampler step, {batch} slice(s)/batch", f"{batch}×128² → {batch}×512²"
        if "error" in res:
            print(f"{batch:12d} failed: {res['error']}")
            records.append(_record(stage, shape, res, batch, "slice-steps/s", device, threads, ""))
            continue
        per = res["seconds"] / batch
        mfu = _sampling_mfu(paper_call, 1, batch, res, peak)
        records.append(_record(
            stage, shape, res, batch, "slice-steps/s", device, threads, f", {precision}, best of {repeats}; "
            f"EXTRAPOLATED {PAPER_SLICES}-slice volume: ancestral 25 {per * PAPER_SLICES * 25 / 60:.0f} min, "
            f"DPM++ 10 {per * PAPER_SLICES * 10 / 60:.0f} min", volume_ancestral25_seconds=per * PAPER_SLICES * 25,
            volume_dpm10_seconds=per * PAPER_SLICES * 10, precision=precision, **mfu))
        print(f"{batch:12d} {res['params_m']:7.2f}M {fmt_s(res['seconds'])} {fmt_s(res['cpu_seconds'])} {per:13.2f} s "
              f"{res['peak_delta_mb']:6.0f} MB   {fmt_s(per * PAPER_SLICES * 25):>21s} "
              f"{fmt_s(per * PAPER_SLICES * 10):>17s} {mfu_cells(mfu, per='run')}")
    print(f"\nload average at end {load_average()}")
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the paper-scale cases")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads per case (1 is least disturbed on a shared machine)")
    parser.add_argument("--demo-dim", type=int, default=32)
    parser.add_argument("--paper-batches", default=None,
                        help=f"slice batch sizes timed at 512² (default 1,2; on CUDA {CUDA_PAPER_BATCHES})")
    parser.add_argument("--repeats", type=int, default=2, help="fresh-process runs per case; the fastest is shown")
    add_common_args(parser)
    add_precision_arg(parser)
    args = parser.parse_args()
    write_json(args.json, run(args.quick, args.device, args.threads, args.demo_dim, args.paper_batches,
                              args.repeats, args.precision))


if __name__ == "__main__":
    main()
