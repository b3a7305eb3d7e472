"""MaskGIT sampling with and without the per-call cache (position bias + text k/v once, not once per step).

Usage: ``.venv/bin/python benchmarks/bench_sampling_cache.py [--quick] [--threads N] [--repeats R] [--device D]
[--bf16] [--json OUT]``

Guided sampling (cond_scale 5: one batched [cond; null] pass per step), 18 steps, batch 1, random weights.
"no cache" recomputes the context every step (``use_cache=False``), "cache" is the default; both must give
the same ids (checked, in the notes). On CUDA (or with ``--bf16``) the cached run is also timed under bf16
autocast, as generation runs with ``precision: auto``. Wall seconds, median of ``repeats`` after one warm-up;
on a CPU shared with other work use ``--threads 1`` (2 threads on 2 busy cores wait for each other).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import add_common_args, peak_gpu_mib, peak_rss_mib, per_second, record, write_json  # noqa: E402

from generatect_kedro.models.maskgit import MaskGIT, MaskGITConfig  # noqa: E402
from generatect_kedro.models.maskgit_sampling import MaskGITSamplerConfig, sample_tokens  # noqa: E402

TINY = dict(num_tokens=33, dim=32, dim_context=8, depth=2, heads=2, dim_head=16, max_seq_len=64)
DEMO = dict(num_tokens=512, dim=64, dim_context=384, depth=2, heads=4, dim_head=16, max_seq_len=256)
DEMO_LONG = dict(DEMO, max_seq_len=2048)  # demo widths on a deeper grid: the N² bias copy grows
# name, config, grid, text length
CASES = [("tiny 3×2×2", TINY, (3, 2, 2), 4), ("demo 9×4×4", DEMO, (9, 4, 4), 32)]
FULL_CASES = [("demo widths 25×8×8", DEMO_LONG, (25, 8, 8), 32)]


def time_sampling(model: MaskGIT, text, mask, grid, *, use_cache: bool, bf16: bool, repeats: int):
    """(median seconds, ids) of ``repeats`` sampling calls after one warm-up."""
    config = MaskGITSamplerConfig(steps=18, cond_scale=5.0, use_cache=use_cache)
    device = model.pos_emb.weight.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    times, ids = [], None
    for _ in range(repeats + 1):
        sync()
        start = time.perf_counter()
        with amp:
            ids = sample_tokens(model, text, mask, grid, config=config,
                                generator=torch.Generator(device).manual_seed(0))
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), ids


def run(quick: bool = False, device: str = "cpu", threads: int | None = None, repeats: int = 5,
        bf16: bool | None = None) -> list[dict]:
    """Print the table and return one record per (case, mode)."""
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    bf16 = str(device).startswith("cuda") if bf16 is None else bf16
    print(f"torch {torch.__version__}, device {device}, {threads} CPU threads, 18 guided steps, batch 1\n")
    print(f"{'case':22s} {'tokens':>6s} {'no cache s':>10s} {'cache s':>9s} {'speedup':>8s} {'bf16 s':>8s}  same ids")
    records = []
    for name, overrides, grid, text_len in CASES + ([] if quick else FULL_CASES):
        torch.manual_seed(0)
        model = MaskGIT(MaskGITConfig(**overrides)).eval().to(device)
        text = torch.randn(1, text_len, model.config.dim_context, device=device)
        mask = torch.ones(1, text_len, dtype=torch.bool, device=device)
        tokens, shape = math.prod(grid), f"1×{'×'.join(map(str, grid))} tokens"
        kw = dict(repeats=repeats)
        before, ids_before = time_sampling(model, text, mask, grid, use_cache=False, bf16=False, **kw)
        after, ids_after = time_sampling(model, text, mask, grid, use_cache=True, bf16=False, **kw)
        half = time_sampling(model, text, mask, grid, use_cache=True, bf16=True, **kw)[0] if bf16 else None
        same = bool(torch.equal(ids_before, ids_after))
        print(f"{name:22s} {tokens:6d} {before:10.4f} {after:9.4f} {before / after:7.2f}× "
              f"{'-' if half is None else f'{half:.4f}':>8s}  {same}")
        modes = [("no cache", before), ("cache", after)] + ([("cache, bf16 autocast", half)] if bf16 else [])
        for mode, seconds in modes:
            records.append(record(
                "sampling_cache", f"{name} sample 18 steps, {mode}", shape, seconds, per_second(tokens, seconds),
                "tokens/s", peak_rss_mib(), peak_gpu_mib(device),
                error=None if same else "cached and uncached ids differ",
                notes=f"cache speedup {before / after:.2f}×, same ids {same}", threads=threads, device=device))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny and demo cases only")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", default=None, help="also time bf16 autocast (default: CUDA)")
    add_common_args(parser)
    args = parser.parse_args()
    write_json(args.json, run(args.quick, args.device, args.threads, args.repeats, args.bf16))


if __name__ == "__main__":
    main()
