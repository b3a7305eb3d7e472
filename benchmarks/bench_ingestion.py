"""DICOM ingestion slices per second, beside a bare pydicom read of the same files as the floor.

Usage: ``.venv/bin/python benchmarks/bench_ingestion.py [--quick] [--repeats N] [--json OUT]``

A synthetic phantom cohort (``generatect_kedro.phantom.cohort.write_demo_cohort``, no broken cases) is written
to a temporary folder, then timed two ways, each in a fresh subprocess (its own peak RSS):

* floor: ``pydicom.dcmread`` of every file + ``pixel_array * RescaleSlope + RescaleIntercept``, nothing else;
* project: the ingestion nodes called directly, as ``kedro run`` would (``DicomDirectoryDataset.load`` = header
  scan, ``plan_dicom_series``, then each lazy converter of ``convert_dicom_series`` = pixels → canonical int16
  HU volume), with the real ``conf/base/parameters_ingestion.yml``; the ``.nii.gz`` write
  (``NiftiVolumeDataset.save``) is timed apart, volume by volume as the partitioned dataset does.

Per stage, the fastest of ``--repeats`` passes (the files stay in the page cache: this measures parsing and
conversion, not the disk). Peak RSS is the child process's peak so far when the stage ends. The ingestion
path reads every file twice (header scan, then pixels), so it cannot reach the floor; the ratio says how close.
The device option is accepted for a common command line and ignored: ingestion is CPU work.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchlib import add_common_args, per_second, peak_rss_mib, record, write_json

ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = ROOT / "conf" / "base" / "parameters_ingestion.yml"

# name, patients, in-plane matrix
QUICK_COHORTS = [("demo 64²", 3, 64)]
FULL_COHORTS = [("demo 64²", 12, 64), ("clinical 512²", 3, 512)]


def write_cohort(out_dir: Path, patients: int, matrix: int, seed: int = 0) -> tuple[Path, int]:
    """(dicom folder, file count) of a phantom cohort with every series at ``matrix``²."""
    from generatect_kedro.phantom.cohort import PhantomCohortConfig, write_demo_cohort

    config = replace(PhantomCohortConfig(), matrix_choices=(matrix,))
    summary = write_demo_cohort(out_dir, patients=patients, seed=seed, broken=False, config=config)
    return summary.dicom_dir, summary.files


def floor_pass(dicom_dir: str, repeats: int) -> dict:
    """Child body: the bare pydicom read + HU of every file; fastest of ``repeats``."""
    import numpy as np
    import pydicom

    from generatect_kedro.dicom.headers import list_files

    root = Path(dicom_dir)
    paths = [root / rel for rel in list_files(root)]
    best = float("inf")
    checksum = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for path in paths:
            ds = pydicom.dcmread(path)
            hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            checksum += float(hu[0, 0])
        best = min(best, time.perf_counter() - start)
    assert np.isfinite(checksum)
    return {"files": len(paths), "seconds": best, "peak_rss_mib": peak_rss_mib()}


def project_pass(dicom_dir: str, repeats: int) -> dict:
    """Child body: header scan, planning, HU conversion and NIfTI write through the project's nodes."""
    import logging

    import yaml

    from generatect_kedro.io.dicom_directory import DicomDirectoryDataset
    from generatect_kedro.io.nifti_volume import NiftiVolumeDataset
    from generatect_kedro.pipelines.ingestion.nodes import convert_dicom_series, plan_dicom_series

    logging.disable(logging.WARNING)  # the nodes log quarantine summaries; none are expected here
    params = yaml.safe_load(PARAMS_FILE.read_text())["ingestion"]
    stages = {"scan": [], "plan": [], "convert": [], "write": []}
    peaks: dict[str, float] = {}
    accepted = files = volumes = 0
    with tempfile.TemporaryDirectory(prefix="bench-ingest-out-") as out:
        for _ in range(repeats):
            start = time.perf_counter()
            index = DicomDirectoryDataset(dicom_dir, progress=False).load()
            stages["scan"].append(time.perf_counter() - start)
            peaks["scan"] = peak_rss_mib()

            start = time.perf_counter()
            plan, quarantine = plan_dicom_series(index, params)
            stages["plan"].append(time.perf_counter() - start)
            peaks["plan"] = peak_rss_mib()

            convert = write = 0.0
            converters = convert_dicom_series(index, plan, params)
            for volume_id, converter in converters.items():  # one volume in memory at a time, as in a kedro run
                start = time.perf_counter()
                volume = converter()
                convert += time.perf_counter() - start
                start = time.perf_counter()
                NiftiVolumeDataset(str(Path(out) / f"{volume_id}.nii.gz")).save(volume)
                write += time.perf_counter() - start
                del volume
            stages["convert"].append(convert)
            stages["write"].append(write)
            peaks["convert"] = peaks["write"] = peak_rss_mib()
            files, volumes = len(index.headers), len(plan)
            accepted = int(plan["file_count"].sum()) if len(plan) else 0
            if len(quarantine):
                raise RuntimeError(f"{len(quarantine)} quarantine rows for a clean phantom cohort")
    totals = [sum(stage[i] for stage in (stages["scan"], stages["plan"], stages["convert"])) for i in range(repeats)]
    with_write = [totals[i] + stages["write"][i] for i in range(repeats)]
    return {"files": files, "accepted": accepted, "volumes": volumes,
            "seconds": {name: min(values) for name, values in stages.items()},
            "to_volumes_seconds": min(totals), "end_to_end_seconds": min(with_write), "peak_rss_mib": peaks}


def spawn(function: str, dicom_dir: Path, repeats: int) -> dict:
    """Run ``function(dicom_dir, repeats)`` of this module in a fresh interpreter (its own peak RSS)."""
    code = (
        "import json,sys; sys.path.insert(0, sys.argv[1]); import bench_ingestion as b; "
        f"print(json.dumps(b.{function}(sys.argv[2], int(sys.argv[3]))))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(dicom_dir), str(repeats)],
                          capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_cohort(name: str, patients: int, matrix: int, repeats: int) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as scratch:
        dicom_dir, n_files = write_cohort(Path(scratch), patients, matrix)
        floor = spawn("floor_pass", dicom_dir, repeats)
        project = spawn("project_pass", dicom_dir, repeats)
    shape = f"{n_files} files, {matrix}²"
    label = f"{name} ({patients} patients)"
    records = []
    print(f"{label}: {n_files} files of {matrix}×{matrix}, best of {repeats}")
    if "error" in floor:
        print(f"  floor failed: {floor['error']}")
        records.append(record("ingestion", f"{name}: bare pydicom read + HU (floor)", shape, error=floor["error"]))
    else:
        rate = per_second(floor["files"], floor["seconds"])
        print(f"  {'bare pydicom dcmread + pixel_array·slope+intercept (floor)':60s} {floor['seconds']:7.2f} s "
              f"{rate:8.0f} slices/s  peak RSS {floor['peak_rss_mib']:5.0f} MiB")
        records.append(record("ingestion", f"{name}: bare pydicom read + HU (floor)", shape, floor["seconds"], rate,
                              "slices/s", floor["peak_rss_mib"], notes="dcmread + pixel_array·slope+intercept only",
                              files=floor["files"], matrix=matrix, patients=patients, repeats=repeats))
    if "error" in project:
        print(f"  ingestion failed: {project['error']}")
        records.append(record("ingestion", f"{name}: ingestion to HU volumes", shape, error=project["error"]))
        return records
    floor_rate = per_second(floor["files"], floor["seconds"]) if "error" not in floor else None
    n = project["files"]
    seconds, peaks = project["seconds"], project["peak_rss_mib"]
    rows = [
        ("header scan (DicomDirectoryDataset.load)", seconds["scan"], peaks["scan"], "headers only, pixels deferred"),
        ("series planning (plan_dicom_series)", seconds["plan"], peaks["plan"],
         f"{project['volumes']} series accepted, {project['accepted']} of {n} files"),
        ("HU conversion (convert_dicom_series)", seconds["convert"], peaks["convert"],
         "pixels → canonical int16 HU volume"),
        ("NIfTI write (.nii.gz, gzip 6)", seconds["write"], peaks["write"], "NiftiVolumeDataset.save"),
    ]
    for stage, secs, peak, note in rows:
        rate = per_second(n, secs)
        print(f"  {stage:60s} {secs:7.2f} s {rate:8.0f} slices/s  peak RSS {peak:5.0f} MiB")
        records.append(record("ingestion", f"{name}: {stage}", shape, secs, rate, "slices/s", peak, notes=note,
                              files=n, matrix=matrix, patients=patients, repeats=repeats))
    for stage, secs, what in (("ingestion to HU volumes (scan + plan + convert)", project["to_volumes_seconds"],
                               "volumes"),
                              ("ingestion end to end (+ NIfTI write)", project["end_to_end_seconds"], "end_to_end")):
        rate = per_second(n, secs)
        ratio = rate / floor_rate if floor_rate and rate else None
        ratio_text = f"{ratio:.2f}× the floor" if ratio is not None else "floor n/a"
        print(f"  {stage:60s} {secs:7.2f} s {rate:8.0f} slices/s  ({ratio_text})")
        records.append(record("ingestion", f"{name}: {stage}", shape, secs, rate, "slices/s", peaks["write"],
                              notes=f"{ratio_text} (bare pydicom {floor_rate:.0f} slices/s)" if floor_rate else "",
                              ratio_to_floor=ratio, floor_slices_per_s=floor_rate, files=n, matrix=matrix,
                              patients=patients, repeats=repeats, summary=what))
    return records


def run(quick: bool = False, device: str = "cpu", repeats: int | None = None) -> list[dict]:
    """Print the figures and return one record per stage and cohort (``device`` is ignored: CPU work)."""
    import pydicom

    repeats = repeats or (2 if quick else 3)
    print(f"pydicom {pydicom.__version__}, ingestion is CPU work (device {device} ignored)\n")
    records = []
    for name, patients, matrix in QUICK_COHORTS if quick else FULL_COHORTS:
        records += bench_cohort(name, patients, matrix, repeats)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small 64² cohort")
    parser.add_argument("--repeats", type=int, default=None, help="passes per child; the fastest counts "
                        "(default 2 quick, 3 full)")
    add_common_args(parser)
    args = parser.parse_args()
    write_json(args.json, run(args.quick, args.device, args.repeats))


if __name__ == "__main__":
    main()
