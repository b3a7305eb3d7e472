"""Super-resolution sampler quality vs steps on a trained demo: the fastest sampler setting that keeps quality.

Usage: ``.venv/bin/python benchmarks/bench_solver_quality.py --run-dir /tmp/demo_run [--env demo] [--quick]
[--volumes 4] [--reference dpm++2m-sde:200] [--check ancestral:400]
[--candidates "ancestral:25,50,100;dpm++2m-sde:8,12,16,25;dpm++2m:12,25"] [--device cpu|cuda] [--threads N]
[--json OUT]``

Needs a finished run (a project folder with ``mlflow.db`` and ``data/``): without ``--run-dir`` it prints and
records one ``status: skipped`` case ("needs --run-dir"), which is how ``run_all.py``'s default run sees it.

What it does: loads the trained cascade (``superres_weights`` + ``superres_training_summary``) and the
validation volumes exactly as the superres pipeline's ``evaluate_superres`` does (the run's own catalog and
parameters, ``--env``; stage-1 inputs ``superres_lowres_recon``, truth ``grids_fullres``, prompt embeddings),
then upsamples the same first ``--volumes`` validation volumes with

* the REFERENCE: a sampler run to convergence (default SDE-DPM-Solver++(2M) at 200 steps), i.e. the model's own
  distribution, which is what a sampler should reproduce; again with other seeds (the "noise floor": how far
  two draws of it differ);
* the CHECK (default the release's ancestral sampler at 400 steps): a second, first-order discretisation of the
  same reverse SDE. Both converge to one distribution, so its distance to the reference says how converged the
  reference is (on the demo cascade: ancestral 50 → 400 steps moves HF power 0.48 → 0.55 toward SDE-DPM++'s
  0.577, which is the same at 100 and 200 steps);
* every CANDIDATE ``sampler:steps`` (ancestral = the release's; dpm++2m = the deterministic ODE solver;
  dpm++2m-sde = the stochastic one),

every setting with the same seeds as the evaluation (volume i: ``seed + i``), the stage's low-res noise level,
cond scale and thresholding from the training summary (only sampler and steps change, on every stage).

Why not the release's 25 (or 50) ancestral steps as the reference: on the demo they are far from converged
(25 steps give 24 % less HF power than the converged samplers), so "as good as ancestral-25" would reward a
solver for being under-resolved in the same way.

Per setting: seconds per volume (wall, slices batched as the evaluation batches them), PSNR and SSIM in HU vs the
ground truth, the share of the truth's high-frequency power (``metrics.frequency``, as the evaluation), and two
distances to the reference's outputs: W1 = the Wasserstein-1 distance (HU) between the voxel HU distributions of
the setting's and the reference's volumes (pooled), and mean |ΔHF share| (per volume, vs the reference draw).
Samples are stochastic and different samplers turn the same seed into different noise, so outputs are compared
as distributions, not voxel by voxel; the noise-floor row says what "as close as another reference draw" is.

Decision ("keeps quality"): PSNR (HU) no more than ``--psnr-tol`` (0.3) dB below the reference's AND HF power
share within ``--hf-tol`` (10 %) relative of it (either way: too little HF is blur, too much is invented noise).
Per sampler, the fewest steps n such that n and every larger tested count pass (one lucky small count does not
win); the recommendation is the fastest of those (seconds per volume). W1 / |ΔHF| are reported, not used.
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
REFERENCE = "dpm++2m-sde:200"
QUICK_REFERENCE = "dpm++2m-sde:100"
CHECK = "ancestral:400"
CANDIDATES = "ancestral:25,50,100;dpm++2m-sde:8,12,16,25;dpm++2m:12,25"
QUICK_CANDIDATES = "ancestral:25;dpm++2m-sde:8,12,25"
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
    """The fewest steps n (keys of ``rows``: one sampler's step counts) such that n and every larger count pass;
    None when the largest count fails too."""
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


def parse_settings(text: str) -> list[tuple[str, int]]:
    """``"ancestral:25,50;dpm++2m-sde:8"`` → [("ancestral", 25), ("ancestral", 50), ("dpm++2m-sde", 8)]."""
    from generatect_kedro.diffusion.upsample import SAMPLERS

    settings = []
    for group in filter(None, (g.strip() for g in text.split(";"))):
        name, sep, counts = group.partition(":")
        if not sep or name not in SAMPLERS:
            raise ValueError(f"{group!r}: expected SAMPLER:STEPS[,STEPS…] with SAMPLER one of {sorted(SAMPLERS)}")
        settings += [(name, int(n)) for n in counts.split(",") if n.strip()]
    return settings


def fastest_keeping_quality(results: Sequence[Mapping[str, Any]], ref: Mapping[str, float], psnr_tol: float = 0.3,
                            hf_tol: float = 0.10) -> dict[str, Any] | None:
    """Per sampler ``recommend``; of those, the row with the fewest seconds per volume (None: nothing keeps it)."""
    chosen = []
    for sampler in dict.fromkeys(r["sampler"] for r in results):
        rows = {r["steps"]: r for r in results if r["sampler"] == sampler}
        steps = recommend(rows, ref, psnr_tol, hf_tol)
        if steps is not None:
            chosen.append(rows[steps])
    return min(chosen, key=lambda r: r["seconds"]) if chosen else None


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


def _load_inputs(run_dir: Path, env: str | None, volumes: int, device: str) -> tuple[Any, list, dict[str, Any]]:
    """(cascade on ``device``, [(condition, truth HU, prompt embeds)], facts) for the first validation volumes."""
    import numpy as np
    import torch

    from generatect_kedro.metrics import to_hu
    from generatect_kedro.pipelines.superres.nodes import _ids, _tensor, build_cascade
    from generatect_kedro.text.prompt_cache import embedding_loaders

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
    inputs = [(_tensor(data["superres_lowres_recon"][i]), to_hu(_tensor(data["grids_fullres"][i]), hu_window),
               torch.as_tensor(np.asarray(text[i]().embeds, dtype=np.float32))[None]) for i in ids]
    facts = {"summary": summary, "split": split, "hu_window": hu_window, "seed": int(eval_params.get("seed", 0)),
             "slice_batch_size": int(eval_params.get("slice_batch_size", 16)),
             "scale": int(np.prod([s["scale"] for s in summary["cascade"]["stages"]]))}
    return cascade, inputs, facts


def _measure(cascade: Any, inputs: list, facts: Mapping[str, Any], sampler: str, steps: int, offset: int,
             batch: int, device: str) -> dict[str, Any]:
    import numpy as np
    import torch

    from generatect_kedro.metrics import to_hu
    from generatect_kedro.pipelines.superres.nodes import _scores

    _with_sampler(cascade, sampler, steps)
    outs, rows, seconds = [], [], []
    for i, (condition, truth, embeds) in enumerate(inputs):
        generator = torch.Generator().manual_seed(facts["seed"] + i + offset)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        tic = time.perf_counter()
        with torch.no_grad():
            out = cascade(condition.to(device), embeds.to(device), slice_batch_size=batch, generator=generator)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - tic)
        pred = to_hu(out.float().cpu(), facts["hu_window"])
        outs.append(pred)
        rows.append(_scores(pred, truth, facts["scale"]))
    means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    return {"sampler": sampler, "steps": int(steps), "offset": offset, "outs": outs, "rows": rows,
            "seconds": float(np.mean(seconds)), **means}


def run(quick: bool = False, device: str = "cpu", run_dir: Path | str | None = None, env: str | None = "demo",
        volumes: int | None = None, reference: str | None = None, check: str | None = None,
        candidates: str | None = None, slice_batch_size: int | None = None, threads: int | None = None,
        psnr_tol: float = 0.3, hf_tol: float = 0.10, noise_floor: bool = True) -> list[dict]:
    """Print the table and return one record per setting plus a ``recommendation`` record (seconds: per volume;
    throughput: volumes/s). Without ``run_dir`` one ``skipped`` record."""
    if run_dir is None:
        print(SKIP_NOTE)
        return [skipped_record()]
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)
    (ref_sampler, ref_steps), = parse_settings(reference or (QUICK_REFERENCE if quick else REFERENCE))
    checks = parse_settings(CHECK if check is None and not quick else (check or ""))
    tried = parse_settings(candidates or (QUICK_CANDIDATES if quick else CANDIDATES))
    cascade, inputs, facts = _load_inputs(Path(run_dir), env, volumes or (2 if quick else 4), device)
    batch = int(slice_batch_size or facts["slice_batch_size"])
    depth, h, w = inputs[0][0].shape
    scale = facts["scale"]
    shape = f"{len(inputs)}×{depth}×{h}×{w} → {depth}×{h * scale}×{w * scale}"
    stages = "; ".join(f"×{s['scale']} noise {s['lowres_noise_level']} cond {s['cond_scale']} "
                       f"(registered: {s['sampler']} {s['steps']})" for s in facts["summary"]["cascade"]["stages"])
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads; run {run_dir} "
          f"(env {env}); {len(inputs)} {facts['split']} volumes {shape}, slice batch {batch}, seed {facts['seed']}; "
          f"stage {stages}\n")

    plan = [(f"{ref_sampler} {ref_steps} (reference)", "reference", ref_sampler, ref_steps, 0)]
    if noise_floor:
        plan.append((f"{ref_sampler} {ref_steps}, other seeds (noise floor)", "noise floor", ref_sampler, ref_steps,
                     NOISE_FLOOR_SEED_OFFSET))
    plan += [(f"{name} {n} (convergence check)", "check", name, n, 0) for name, n in checks]
    plan += [(f"{name} {n}", "candidate", name, n, 0) for name, n in tried]
    results: list[dict[str, Any]] = []
    for label, role, sampler, steps, offset in plan:
        res = _measure(cascade, inputs, facts, sampler, steps, offset, batch, device)
        results.append({"label": label, "role": role, **res})
        print(f"  {label}: {res['seconds']:.2f} s/volume, PSNR {res['psnr_hu']:.2f} dB, "
              f"HF share {res['hf_power_share']:.3f}", flush=True)

    ref = results[0]
    ref_all = torch.cat([o.flatten() for o in ref["outs"]])
    for res in results:
        res["w1_hu_vs_ref"] = wasserstein1(torch.cat([o.flatten() for o in res["outs"]]), ref_all)
        res["abs_dhf_vs_ref"] = float(np.mean([abs(a["hf_power_share"] - b["hf_power_share"])
                                               for a, b in zip(res["rows"], ref["rows"])]))
        res["hf_rel_vs_ref"] = res["hf_power_share"] / ref["hf_power_share"] - 1.0
        res["passes"] = passes(res, ref, psnr_tol, hf_tol)
    best = fastest_keeping_quality([r for r in results if r["role"] == "candidate"], ref, psnr_tol, hf_tol)

    print(f"\n{'setting':44s} {'s/volume':>9s} {'PSNR HU':>8s} {'SSIM':>6s} {'HF share':>8s} {'ΔHF rel':>8s} "
          f"{'W1 HU':>7s} {'|ΔHF|':>6s} {'keeps':>5s}")
    for r in results:
        keep = "ref" if r is ref else ("yes" if r["passes"] else "no")
        print(f"{r['label']:44s} {r['seconds']:9.2f} {r['psnr_hu']:8.2f} {r['ssim_hu']:6.3f} "
              f"{r['hf_power_share']:8.3f} {r['hf_rel_vs_ref']:+7.1%} {r['w1_hu_vs_ref']:7.2f} "
              f"{r['abs_dhf_vs_ref']:6.3f} {keep:>5s}")
    rule = (f"PSNR (HU) ≥ reference − {psnr_tol} dB and HF power share within ±{hf_tol:.0%} (relative) of "
            f"{ref_sampler}-{ref_steps}, for n and every larger tested count of the sampler")
    if best is None:
        message = f"no candidate setting keeps quality ({rule})"
    else:
        message = (f"recommendation: {best['sampler']} {best['steps']} steps ({best['seconds']:.2f} s/volume vs "
                   f"{ref['seconds']:.2f} s for the reference; PSNR {best['psnr_hu'] - ref['psnr_hu']:+.2f} dB, "
                   f"HF share {best['hf_rel_vs_ref']:+.1%}); rule: {rule}")
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
            role=r["role"], sampler=r["sampler"], steps=r["steps"], seed_offset=r["offset"], volumes=len(inputs),
            psnr_hu=r["psnr_hu"], ssim_hu=r["ssim_hu"], hf_power_share=r["hf_power_share"],
            hf_correlation=r["hf_correlation"], hf_rel_vs_ref=r["hf_rel_vs_ref"], w1_hu_vs_ref=r["w1_hu_vs_ref"],
            abs_dhf_vs_ref=r["abs_dhf_vs_ref"], keeps_quality=True if r is ref else r["passes"], device=device,
            threads=torch.get_num_threads(), slice_batch_size=batch))
    records.append(record(BENCHMARK, "recommendation", shape, best["seconds"] if best else None,
                          per_second(1.0, best["seconds"]) if best else None, "volumes/s", rss, gpu,
                          notes=message, recommended_sampler=best["sampler"] if best else None,
                          recommended_steps=best["steps"] if best else None, psnr_tol_db=psnr_tol,
                          hf_tol_rel=hf_tol, reference=f"{ref_sampler} {ref_steps}"))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="a finished run (mlflow.db + data/), read only; without it the benchmark is skipped")
    parser.add_argument("--env", default="demo", help="the run's Kedro env (conf/<env>), default demo")
    parser.add_argument("--quick", action="store_true",
                        help=f"2 volumes, reference {QUICK_REFERENCE}, no check, candidates {QUICK_CANDIDATES}")
    parser.add_argument("--volumes", type=int, default=None, help="validation volumes (default 4, --quick 2)")
    parser.add_argument("--reference", default=None, help=f"SAMPLER:STEPS run to convergence (default {REFERENCE})")
    parser.add_argument("--check", default=None,
                        help=f"convergence check(s), SAMPLER:STEPS (default {CHECK}; '' for none)")
    parser.add_argument("--candidates", default=None,
                        help=f"settings to judge, SAMPLER:N,N;SAMPLER:N (default {CANDIDATES})")
    parser.add_argument("--slice-batch-size", type=int, default=None,
                        help="slices per U-Net batch (default: the run's superres.evaluation.slice_batch_size)")
    parser.add_argument("--psnr-tol", type=float, default=0.3, help="allowed PSNR drop vs the reference, dB")
    parser.add_argument("--hf-tol", type=float, default=0.10, help="allowed relative HF-share change vs the reference")
    parser.add_argument("--no-noise-floor", action="store_true", help="skip the second reference draw")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 0)) or None,
                        help="torch threads (default $OMP_NUM_THREADS, else torch's default)")
    add_common_args(parser)
    args = parser.parse_args()
    write_json(args.json, run(args.quick, args.device, args.run_dir, args.env, args.volumes, args.reference,
                              args.check, args.candidates, args.slice_batch_size, args.threads, args.psnr_tol,
                              args.hf_tol, not args.no_noise_floor))


if __name__ == "__main__":
    main()
