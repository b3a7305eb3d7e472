"""Super-resolution sampler quality vs steps on a trained demo: the fewest DPM-Solver++(2M) steps that keep quality.

Usage: ``.venv/bin/python benchmarks/bench_solver_quality.py --run-dir /tmp/demo_run [--env demo] [--quick]
[--volumes 4] [--reference-steps 50] [--dpm-steps 5,8,10,12,16,25] [--device cpu|cuda] [--threads N] [--json OUT]``

Needs a finished run (a project folder with ``mlflow.db`` and ``data/``): without ``--run-dir`` it prints and
records one ``status: skipped`` case ("needs --run-dir"), which is how ``run_all.py``'s default run sees it.

What it does: loads the trained cascade (``superres_weights`` + ``superres_training_summary``) and the
validation volumes exactly as the superres pipeline's ``evaluate_superres`` does (the run's own catalog and
parameters, ``--env``; stage-1 inputs ``superres_lowres_recon``, truth ``grids_fullres``, prompt embeddings),
then upsamples the same first ``--volumes`` validation volumes with

* the release's ancestral sampler at ``--reference-steps`` (50: the REFERENCE) and at 25 steps,
* the reference again with other seeds ("noise floor": how far two draws of the reference sampler differ),
* DPM-Solver++(2M) at ``--dpm-steps``,

every setting with the same seeds as the evaluation (volume i: ``seed + i``), the stage's low-res noise level,
cond scale and thresholding from the training summary (only sampler and steps change, on every stage).

Per setting: seconds per volume (wall, slices batched as the evaluation batches them), PSNR and SSIM in HU vs the
ground truth, the share of the truth's high-frequency power (``metrics.frequency``, as the evaluation), and two
distances to the reference's outputs: W1 = the Wasserstein-1 distance (HU) between the voxel HU distributions of
the setting's and the reference's volumes (pooled), and mean |ΔHF share| (per volume, vs the reference draw).
Samples are stochastic and different samplers turn the same seed into different noise, so outputs are compared
as distributions, not voxel by voxel; the noise-floor row says what "as close as another reference draw" is.

Decision ("keeps quality"): fidelity to the ground truth, relative to the reference — PSNR (HU) no more than
``--psnr-tol`` (0.3) dB below it AND HF power share within ``--hf-tol`` (10 %) relative of it (either way: too
little HF is blur, too much is invented noise). The recommendation is the fewest DPM++ steps n such that n and every
larger tested count pass (one lucky small count does not win). W1 / |ΔHF| vs the reference are reported, not used.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchlib import add_common_args, peak_gpu_mib, peak_rss_mib, per_second, record, write_json

BENCHMARK = "solver_quality"
SKIP_NOTE = "skipped: needs --run-dir (a finished demo run with mlflow.db and data/)"
DPM_STEPS = (5, 8, 10, 12, 16, 25)
QUICK_DPM_STEPS = (5, 10, 25)
ANCESTRAL = "ancestral"
DPM = "dpm++2m"
NOISE_FLOOR_SEED_OFFSET = 10_000  # the noise-floor draw of volume i uses seed + i + this
DATASETS = ("superres_lowres_recon", "grids_fullres", "prompt_embeddings", "prompt_index", "splits",
            "superres_weights", "superres_training_summary")


# ---- decision (pure; unit-tested without a model) -----------------------------------------------------------

def passes(row: Mapping[str, float], ref: Mapping[str, float], psnr_tol: float = 0.3, hf_tol: float = 0.10) -> bool:
    """``row`` keeps the reference's quality: PSNR at most ``psnr_tol`` dB below it, HF share within ``hf_tol``
    relative of it."""
    psnr_ok = row["psnr_hu"] >= ref["psnr_hu"] - psnr_tol
    hf_ok = abs(row["hf_power_share"] - ref["hf_power_share"]) <= hf_tol * abs(ref["hf_power_share"])
    return bool(psnr_ok and hf_ok)


def recommend(rows: Mapping[int, Mapping[str, float]], ref: Mapping[str, float], psnr_tol: float = 0.3,
              hf_tol: float = 0.10) -> int | None:
    """The fewest steps n (keys of ``rows``: DPM++ step counts) such that n and every larger count pass; None
    when the largest count fails too."""
    best = None
    for steps in sorted(rows, reverse=True):
        if not passes(rows[steps], ref, psnr_tol, hf_tol):
            break
        best = steps
    return best


def wasserstein1(a: Any, b: Any) -> float:
    """W1 between the empirical distributions of two equally sized samples: mean |sorted(a) − sorted(b)|."""
    import torch

    a, b = torch.as_tensor(a).flatten().double(), torch.as_tensor(b).flatten().double()
    if a.numel() != b.numel():
        raise ValueError(f"wasserstein1 needs equal sample sizes, got {a.numel()} and {b.numel()}")
    return float((a.sort().values - b.sort().values).abs().mean())


def skipped_record(note: str = SKIP_NOTE) -> dict:
    out = record(BENCHMARK, "(needs a trained demo)", notes=note)
    out["status"] = "skipped"
    return out


# ---- loading (the run's catalog and parameters, as `kedro run --env ENV` would) -------------------------------

def _absolute(entry: Any, root: Path) -> Any:
    """The catalog entry with its relative ``path``/``filepath`` made absolute under the run folder."""
    if isinstance(entry, Mapping):
        return {k: (str(root / v) if k in ("path", "filepath") and isinstance(v, str) and not Path(v).is_absolute()
                    and "://" not in v else _absolute(v, root)) for k, v in entry.items()}
    return entry


def load_run(run_dir: Path, env: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(datasets by name, superres parameters) of a finished run; read-only."""
    from kedro.io import DataCatalog

    from generatect_kedro.commands.generate import _load_config

    run_dir = Path(run_dir).resolve()
    missing = [p for p in ("mlflow.db", "data", "conf") if not (run_dir / p).exists()]
    if missing:
        raise FileNotFoundError(f"{run_dir} is not a finished run: no {', '.join(missing)}")
    parameters, _, catalog_conf = _load_config(run_dir, env)
    absent = [name for name in DATASETS if name not in catalog_conf]
    if absent:
        raise KeyError(f"{run_dir}/conf ({env}) has no catalog entries {absent}")
    catalog = DataCatalog.from_config({name: _absolute(catalog_conf[name], run_dir) for name in DATASETS})
    return {name: catalog.load(name) for name in DATASETS}, dict(parameters.get("superres") or {})


# ---- measurement -----------------------------------------------------------------------------------------------

def _with_sampler(cascade: Any, sampler: str, steps: int) -> None:
    cascade.stages = [dataclasses.replace(s, sampler=sampler, steps=int(steps)) for s in cascade.stages]


def run(quick: bool = False, device: str = "cpu", run_dir: Path | str | None = None, env: str | None = "demo",
        volumes: int | None = None, reference_steps: int = 50, ancestral_steps: Sequence[int] = (25,),
        dpm_steps: Sequence[int] | None = None, slice_batch_size: int | None = None, threads: int | None = None,
        psnr_tol: float = 0.3, hf_tol: float = 0.10, noise_floor: bool = True) -> list[dict]:
    """Print the table and return one record per setting plus a ``recommendation`` record (seconds: per volume;
    throughput: volumes/s). Without ``run_dir`` one ``skipped`` record."""
    if run_dir is None:
        print(SKIP_NOTE)
        return [skipped_record()]
    import numpy as np
    import torch

    from generatect_kedro.metrics import to_hu
    from generatect_kedro.pipelines.superres.nodes import _ids, _scores, _tensor, build_cascade
    from generatect_kedro.text.prompt_cache import embedding_loaders

    if threads:
        torch.set_num_threads(threads)
    volumes = volumes or (2 if quick else 4)
    dpm_steps = tuple(dpm_steps or (QUICK_DPM_STEPS if quick else DPM_STEPS))
    data, params = load_run(Path(run_dir), env)
    summary = data["superres_training_summary"]
    eval_params = dict(params.get("evaluation") or {})
    text, _ = embedding_loaders(data["prompt_index"], data["prompt_embeddings"])
    split = str(eval_params.get("split", "valid"))
    ids = _ids(data["splits"], split, data["superres_lowres_recon"], data["grids_fullres"], text)[:volumes]
    if not ids:
        raise ValueError(f"{run_dir}: no {split} volumes with a stage-1 input, a full grid and a prompt embedding")
    cascade = build_cascade(summary["cascade"])
    cascade.load_state_dict(dict(data["superres_weights"]), strict=True)
    cascade.to(device).eval()
    hu_window = tuple(summary["hu_window"])
    scale = int(np.prod([s["scale"] for s in summary["cascade"]["stages"]]))
    seed = int(eval_params.get("seed", 0))
    batch = int(slice_batch_size or eval_params.get("slice_batch_size", 16))
    inputs = []
    for volume_id in ids:
        condition = _tensor(data["superres_lowres_recon"][volume_id])
        truth = to_hu(_tensor(data["grids_fullres"][volume_id]), hu_window)
        embeds = torch.as_tensor(np.asarray(text[volume_id]().embeds, dtype=np.float32))[None]
        inputs.append((condition, truth, embeds))
    depth, h, w = inputs[0][0].shape
    shape = f"{len(ids)}×{depth}×{h}×{w} → {depth}×{h * scale}×{w * scale}"
    stages = "; ".join(f"×{s['scale']} noise {s['lowres_noise_level']} cond {s['cond_scale']} "
                       f"(registered: {s['sampler']} {s['steps']})" for s in summary["cascade"]["stages"])
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads; run {run_dir} "
          f"(env {env}); {len(ids)} {split} volumes {shape}, slice batch {batch}, seed {seed}; stage {stages}\n")

    settings = [(f"{ANCESTRAL} {reference_steps} (reference)", ANCESTRAL, reference_steps, 0)]
    if noise_floor:
        settings.append((f"{ANCESTRAL} {reference_steps}, other seeds (noise floor)", ANCESTRAL, reference_steps,
                         NOISE_FLOOR_SEED_OFFSET))
    settings += [(f"{ANCESTRAL} {n}", ANCESTRAL, n, 0) for n in ancestral_steps if n != reference_steps]
    settings += [(f"{DPM} {n}", DPM, n, 0) for n in dpm_steps]

    results: list[dict[str, Any]] = []
    for label, sampler, steps, offset in settings:
        _with_sampler(cascade, sampler, steps)
        outs, rows, seconds = [], [], []
        for i, (condition, truth, embeds) in enumerate(inputs):
            generator = torch.Generator().manual_seed(seed + i + offset)
            if str(device).startswith("cuda"):
                torch.cuda.synchronize()
            tic = time.perf_counter()
            with torch.no_grad():
                out = cascade(condition.to(device), embeds.to(device), slice_batch_size=batch, generator=generator)
            if str(device).startswith("cuda"):
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - tic)
            pred = to_hu(out.float().cpu(), hu_window)
            outs.append(pred)
            rows.append(_scores(pred, truth, scale))
        means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        results.append({"label": label, "sampler": sampler, "steps": steps, "offset": offset, "outs": outs,
                        "rows": rows, "seconds": float(np.mean(seconds)), **means})
        print(f"  {label}: {np.mean(seconds):.2f} s/volume, PSNR {means['psnr_hu']:.2f} dB", flush=True)

    ref = results[0]
    ref_all = torch.cat([o.flatten() for o in ref["outs"]])
    for res in results:
        res["w1_hu_vs_ref"] = wasserstein1(torch.cat([o.flatten() for o in res["outs"]]), ref_all)
        res["abs_dhf_vs_ref"] = float(np.mean([abs(a["hf_power_share"] - b["hf_power_share"])
                                               for a, b in zip(res["rows"], ref["rows"])]))
        res["hf_rel_vs_ref"] = res["hf_power_share"] / ref["hf_power_share"] - 1.0
        res["passes"] = passes(res, ref, psnr_tol, hf_tol)
    dpm_rows = {r["steps"]: r for r in results if r["sampler"] == DPM}
    best = recommend(dpm_rows, ref, psnr_tol, hf_tol)

    print(f"\n{'setting':42s} {'s/volume':>9s} {'PSNR HU':>8s} {'SSIM':>6s} {'HF share':>8s} {'ΔHF rel':>8s} "
          f"{'W1 HU':>7s} {'|ΔHF|':>6s} {'keeps':>5s}")
    for r in results:
        keep = "ref" if r is ref else ("yes" if r["passes"] else "no")
        print(f"{r['label']:42s} {r['seconds']:9.2f} {r['psnr_hu']:8.2f} {r['ssim_hu']:6.3f} "
              f"{r['hf_power_share']:8.3f} {r['hf_rel_vs_ref']:+7.1%} {r['w1_hu_vs_ref']:7.2f} "
              f"{r['abs_dhf_vs_ref']:6.3f} {keep:>5s}")
    rule = (f"PSNR (HU) ≥ reference − {psnr_tol} dB and HF power share within ±{hf_tol:.0%} (relative) of "
            f"{ANCESTRAL}-{reference_steps}, for n and every larger tested count")
    if best is None:
        message = f"no tested DPM-Solver++(2M) count keeps quality ({rule})"
    else:
        chosen = dpm_rows[best]
        message = (f"recommendation: {DPM} {best} steps ({chosen['seconds']:.2f} s/volume vs "
                   f"{ref['seconds']:.2f} s for {ANCESTRAL}-{reference_steps}, "
                   f"×{ref['seconds'] / chosen['seconds']:.1f}"
                   f"; PSNR {chosen['psnr_hu'] - ref['psnr_hu']:+.2f} dB, HF share {chosen['hf_rel_vs_ref']:+.1%}); "
                   f"rule: {rule}")
    print(f"\n{message}")
    print("W1 HU: Wasserstein-1 distance of the voxel HU distributions to the reference's; |ΔHF|: mean per-volume "
          "|HF share − reference's|; the noise-floor row is a second draw of the reference sampler.")

    records = []
    rss, gpu = peak_rss_mib(), peak_gpu_mib(device)
    for r in results:
        records.append(record(
            BENCHMARK, r["label"], shape, r["seconds"], per_second(1.0, r["seconds"]), "volumes/s", rss, gpu,
            notes=(f"PSNR {r['psnr_hu']:.2f} dB, SSIM {r['ssim_hu']:.3f}, HF share {r['hf_power_share']:.3f} "
                   f"({r['hf_rel_vs_ref']:+.1%} vs ref), W1 {r['w1_hu_vs_ref']:.2f} HU, |ΔHF| "
                   f"{r['abs_dhf_vs_ref']:.3f}" + ("" if r is ref else f", keeps quality: {r['passes']}")),
            sampler=r["sampler"], steps=r["steps"], seed_offset=r["offset"], volumes=len(ids), psnr_hu=r["psnr_hu"],
            ssim_hu=r["ssim_hu"], hf_power_share=r["hf_power_share"], hf_correlation=r["hf_correlation"],
            hf_rel_vs_ref=r["hf_rel_vs_ref"], w1_hu_vs_ref=r["w1_hu_vs_ref"], abs_dhf_vs_ref=r["abs_dhf_vs_ref"],
            keeps_quality=True if r is ref else r["passes"], device=device, threads=torch.get_num_threads(),
            slice_batch_size=batch))
    chosen = dpm_rows.get(best) if best is not None else None
    records.append(record(BENCHMARK, "recommendation", shape, chosen["seconds"] if chosen else None,
                          per_second(1.0, chosen["seconds"]) if chosen else None, "volumes/s", rss, gpu,
                          notes=message, recommended_sampler=DPM if chosen else None, recommended_steps=best,
                          psnr_tol_db=psnr_tol, hf_tol_rel=hf_tol, reference=f"{ANCESTRAL} {reference_steps}"))
    return records


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="a finished run (mlflow.db + data/), read only; without it the benchmark is skipped")
    parser.add_argument("--env", default="demo", help="the run's Kedro env (conf/<env>), default demo")
    parser.add_argument("--quick", action="store_true",
                        help=f"2 volumes and DPM++ steps {','.join(map(str, QUICK_DPM_STEPS))}")
    parser.add_argument("--volumes", type=int, default=None, help="validation volumes (default 4, --quick 2)")
    parser.add_argument("--reference-steps", type=int, default=50, help="ancestral steps of the reference")
    parser.add_argument("--ancestral-steps", default="25", help="other ancestral counts, comma-separated")
    parser.add_argument("--dpm-steps", default=None,
                        help=f"DPM-Solver++(2M) counts (default {','.join(map(str, DPM_STEPS))})")
    parser.add_argument("--slice-batch-size", type=int, default=None,
                        help="slices per U-Net batch (default: the run's superres.evaluation.slice_batch_size)")
    parser.add_argument("--psnr-tol", type=float, default=0.3, help="allowed PSNR drop vs the reference, dB")
    parser.add_argument("--hf-tol", type=float, default=0.10, help="allowed relative HF-share change vs the reference")
    parser.add_argument("--no-noise-floor", action="store_true", help="skip the second reference draw")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 0)) or None,
                        help="torch threads (default $OMP_NUM_THREADS, else torch's default)")
    add_common_args(parser)
    args = parser.parse_args()
    write_json(args.json, run(args.quick, args.device, args.run_dir, args.env, args.volumes, args.reference_steps,
                              _ints(args.ancestral_steps), _ints(args.dpm_steps) if args.dpm_steps else None,
                              args.slice_batch_size, args.threads, args.psnr_tol, args.hf_tol,
                              not args.no_noise_floor))


if __name__ == "__main__":
    main()
