"""Outputs of one generated volume: NIfTI, preview PNG, optional synthetic DICOM series, and the sidecar.

Every file is written atomically (temporary sibling, then rename) and the sidecar `<stem>.json` comes LAST:
its presence is what marks the item finished, so a resumed run regenerates any item without one. If writing
fails part-way, the final-named files this call already renamed into place are removed again, so an
interrupted item never leaves a NIfTI or preview that looks finished without its lineage.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from generatect_kedro.io.nifti_volume import volume_to_image
from generatect_kedro.utils.atomic import atomic_path, atomic_write_text, file_sha256
from generatect_kedro.utils.plain import json_default
from generatect_kedro.volume import HUVolume, canonical, hu_to_int16, to_dhw

__all__ = ["LUNG_WINDOW", "MEDIASTINAL_WINDOW", "PREVIEW_SIZE_PX", "sidecar_path", "write_generated_volume"]

LUNG_WINDOW = (-600.0, 1500.0)  # (level, width) HU
MEDIASTINAL_WINDOW = (40.0, 400.0)
PREVIEW_SIZE_PX = (1200, 900)  # (width, height) of the PNG: 3 planes × 2 windows
NIFTI_DESCRIP = b"SYNTHETIC GenerateCT int16 HU - not a patient"
_TITLE_PROMPT_CHARS = 60


def sidecar_path(out_dir: str | os.PathLike, stem: str) -> Path:
    """Where the sidecar of `stem` lives; its existence is the resume key."""
    return Path(out_dir) / f"{stem}.json"


def _as_written(volume: HUVolume) -> HUVolume:
    """The volume as the NIfTI file holds it: int16 voxels and a float32 affine (sform/qform), so the hashes
    recorded in the sidecar are the hashes of what is read back (a spacing such as 17.352941… mm is not
    representable in float32)."""
    data = volume.data if volume.data.dtype == np.int16 else hu_to_int16(np.asarray(volume.data, dtype=np.float64))
    affine = np.asarray(volume.affine, dtype=np.float32).astype(np.float64)
    return HUVolume(data, affine, dict(volume.meta))


def _write_nifti(volume: HUVolume, target: Path) -> None:
    """Same file layout as `NiftiVolumeDataset.save` (reproducible gzip), with a 'synthetic' descrip."""
    image = volume_to_image(volume)
    image.header["descrip"] = NIFTI_DESCRIP
    with atomic_path(target, suffix=".nii.gz") as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as stream:
            image.to_stream(stream)


def preview_title(record: dict) -> str:
    """Item id and seed; the prompt only as a short excerpt (full prompt lives in the sidecar)."""
    item = record.get("item") or {}
    title = f"SYNTHETIC  {item.get('item_id', '?')}  seed={item.get('seed', '?')}"
    prompt = str(item.get("prompt") or "").strip()
    if prompt:
        excerpt = prompt if len(prompt) <= _TITLE_PROMPT_CHARS else prompt[: _TITLE_PROMPT_CHARS - 1] + "…"
        title += f"\n{excerpt}"
    return title


def _write_preview(volume: HUVolume, record: dict, target: Path) -> None:
    """Tri-planar middle slices, lung and mediastinal windows, stretched to the voxel spacing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from generatect_kedro.visualize import apply_window, triplanar_slices

    ras = canonical(volume)  # to_dhw assumes canonical RAS (i, j, k)
    sx, sy, sz = ras.spacing
    planes = triplanar_slices(to_dhw(ras.data).astype(np.float32))
    aspects = (sy / sx, sz / sx, sz / sy)  # axial (H×W), coronal (D×W), sagittal (D×H): row mm / column mm
    width, height = PREVIEW_SIZE_PX
    figure = Figure(figsize=(width / 100, height / 100), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 3, squeeze=False)
    windows = (("lung W1500/L-600", LUNG_WINDOW), ("mediastinal W400/L40", MEDIASTINAL_WINDOW))
    for row, (window_name, window) in enumerate(windows):
        for col, (plane, aspect, plane_name) in enumerate(zip(planes, aspects, ("axial", "coronal", "sagittal"))):
            ax = axes[row, col]
            ax.imshow(apply_window(plane, window), cmap="gray", vmin=0.0, vmax=1.0, aspect=aspect,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(plane_name, fontsize=9)
            if col == 0:
                ax.set_ylabel(window_name, fontsize=8)
    figure.suptitle(preview_title(record), fontsize=10)
    figure.tight_layout()
    with atomic_path(target, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=100)  # no bbox_inches="tight": keep PREVIEW_SIZE_PX exact


def _write_dicom_folder(volume: HUVolume, record: dict, target: Path) -> dict[str, Any]:
    """The series goes into a hidden temporary folder that is renamed into place when complete.

    The folder is named `.<stem>_dicom.partial-*`, not `*.tmp-*`: callers that sweep `.tmp-*` leftovers with
    `unlink` would fail on a folder.
    """
    from generatect_kedro.dicom.synthetic import write_synthetic_series

    for stale in target.parent.glob(f".{target.name}.partial-*"):  # a killed earlier attempt's series
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        info = write_synthetic_series(volume, tmp, record)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "folder": target.name,
        "series_instance_uid": info["series_instance_uid"],
        "files": [Path(f).name for f in info["files"]],
    }


@contextlib.contextmanager
def _undo_on_failure() -> Iterator[list[Path]]:
    """Collects final-named outputs; removes them again if the body raises (including KeyboardInterrupt)."""
    written: list[Path] = []
    try:
        yield written
    except BaseException:
        for path in reversed(written):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise


def write_generated_volume(volume: HUVolume, record: dict, out_dir: Path, stem: str, *, dicom: bool = False,
                           preview: bool = True) -> dict[str, str]:
    """Write `<stem>.nii.gz` [+ `<stem>_preview.png`] [+ `<stem>_dicom/`] and finally `<stem>.json`.

    `volume` holds HU (float or int16) with its real voxel→RAS+ affine; it is rounded to int16 once here, so
    every output and every hash describes the same voxels. Returns {"nifti", "preview"?, "dicom"?, "sidecar"}
    as paths relative to `out_dir`.
    """
    if not stem or "/" in stem or stem.startswith("."):
        raise ValueError(f"invalid output stem {stem!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    volume = _as_written(volume)
    nifti_name = f"{stem}.nii.gz"
    written: dict[str, str] = {"nifti": nifti_name}
    section: dict[str, Any] = {
        "nifti": nifti_name,
        "voxel_sha256": volume.voxel_sha256(),
        # what ingestion (and `generatect lineage` on a DICOM slice) reads back: the canonical RAS+ volume
        "ras_voxel_sha256": canonical(volume).voxel_sha256(),
        "shape_ijk": list(volume.shape),
        "shape_dhw": [volume.shape[2], volume.shape[1], volume.shape[0]],
        "spacing_mm": [round(s, 6) for s in volume.spacing],
        "affine": np.round(volume.affine, 6).tolist(),
        "orientation": "RAS+ voxel→mm affine (NIfTI convention)",
        "dtype": "int16",
        "units": "HU",
        "preview": None,
        "dicom": None,
    }
    # a rewrite starts by un-finishing the item: an old sidecar must never vouch for new, half-written files
    sidecar_path(out_dir, stem).unlink(missing_ok=True)
    with _undo_on_failure() as undo:
        nifti_path = out_dir / nifti_name
        _write_nifti(volume, nifti_path)
        undo.append(nifti_path)
        section["nifti_sha256"] = file_sha256(nifti_path)
        if preview:
            preview_path = out_dir / f"{stem}_preview.png"
            _write_preview(volume, record, preview_path)
            undo.append(preview_path)
            section["preview"] = written["preview"] = preview_path.name
        if dicom:
            dicom_path = out_dir / f"{stem}_dicom"
            # the series' private block carries the record plus what is already known about the volume
            dicom_record = {**record, "volume": {k: v for k, v in section.items() if k != "dicom"}}
            section["dicom"] = _write_dicom_folder(volume, dicom_record, dicom_path)
            undo.append(dicom_path)
            written["dicom"] = dicom_path.name
        sidecar = {**record, "volume": section}
        text = json.dumps(sidecar, indent=2, sort_keys=True, default=json_default, allow_nan=False) + "\n"
        atomic_write_text(sidecar_path(out_dir, stem), text)
        written["sidecar"] = f"{stem}.json"
    return written
