"""NIfTI datasets: `NiftiVolumeDataset` (our int16 HU volumes) and `NiftiImageDataset` (raw inputs, read-only).

A stored volume is int16 HU NIfTI-1 with qform = sform = the voxel→RAS+ affine (code 1, scanner), units mm and
no scl_slope/scl_inter (NaN): the voxels already are HU and must never be rescaled a second time. Files are
written atomically and are byte-identical for the same volume (gzip mtime 0, no file name in the gzip
header, sorted JSON metadata), because DVC hashes files. Non-identifying `HUVolume.meta` travels in a NIfTI
comment extension as JSON.

When a lazy conversion fails, the converter hands a `ConversionFailure` to `save`, which writes
`<file>.error.json` next to where the volume would be (and removes a stale volume), instead of aborting
the whole run; the manifest node reports the missing volume as `conversion_failed`.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from kedro.io import AbstractDataset, DatasetError
from kedro_datasets.partitions import PartitionedDataset
from nibabel.nifti1 import Nifti1Extension

from generatect_kedro.utils.atomic import atomic_path, atomic_write_text, file_sha256
from generatect_kedro.utils.plain import json_default
from generatect_kedro.volume import HUVolume, hu_to_int16

logger = logging.getLogger(__name__)

_COMMENT_ECODE = 6  # NIFTI_ECODE_COMMENT
_META_PREFIX = b"generatect-meta:"
ERROR_SUFFIX = ".error.json"


@dataclass(frozen=True)
class ConversionFailure:
    """What a lazy converter returns instead of an `HUVolume` when a series cannot be converted."""

    volume_id: str
    error: str


def _clean(value: Any) -> Any:
    """NaN → None, recursively, so that the JSON is standard."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def volume_to_image(volume: HUVolume) -> nib.Nifti1Image:
    """The NIfTI-1 image we store for an `HUVolume` (int16, q/sform = affine, mm, no scaling)."""
    data = np.asarray(volume.data)
    if data.dtype != np.int16:
        if not np.issubdtype(data.dtype, np.integer) and not np.array_equal(data, np.rint(data)):
            raise ValueError(f"HU volumes are stored as int16; got non-integral {data.dtype} voxels")
        data = hu_to_int16(data)
    image = nib.Nifti1Image(data, volume.affine)
    header = image.header
    header.set_data_dtype(np.int16)
    image.set_sform(volume.affine, code=1)
    image.set_qform(volume.affine, code=1)
    header.set_xyzt_units(xyz="mm", t="sec")
    header["scl_slope"] = np.nan
    header["scl_inter"] = np.nan
    header["descrip"] = b"generatect int16 HU"
    payload = json.dumps(_clean(volume.meta), sort_keys=True, default=json_default).encode("utf-8")
    header.extensions.append(Nifti1Extension(_COMMENT_ECODE, _META_PREFIX + payload))
    return image


def image_meta(image: nib.Nifti1Image) -> dict[str, Any]:
    for extension in image.header.extensions:
        content = extension.get_content()
        if isinstance(content, bytes) and content.startswith(_META_PREFIX):
            return json.loads(content[len(_META_PREFIX):].rstrip(b"\x00").decode("utf-8"))
    return {}


class NiftiVolumeDataset(AbstractDataset[HUVolume, HUVolume]):
    """One int16 HU `.nii.gz`; `load()` gives an `HUVolume` whose `meta["sha256"]` is the file's sha256."""

    def __init__(self, filepath: str, compresslevel: int = 6, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self._compresslevel = int(compresslevel)
        self.metadata = metadata

    @property
    def error_path(self) -> Path:
        return self._filepath.with_name(self._filepath.name + ERROR_SUFFIX)

    def load(self) -> HUVolume:
        image = nib.load(self._filepath)
        if image.ndim != 3:
            raise DatasetError(f"{self._filepath} is not a 3-D volume (shape {image.shape})")
        data = np.asanyarray(image.dataobj)
        if data.dtype != np.int16:  # not written by us: apply its scaling once, then store as int16
            data = hu_to_int16(np.asarray(image.dataobj, dtype=np.float64))
        meta = image_meta(image)
        meta["sha256"] = file_sha256(self._filepath)
        return HUVolume(np.asarray(data), image.affine, meta)

    def save(self, data: HUVolume | ConversionFailure) -> None:
        if isinstance(data, ConversionFailure):
            self._save_failure(data)
            return
        if not isinstance(data, HUVolume):
            raise DatasetError(f"NiftiVolumeDataset saves HUVolume objects, got {type(data).__name__}")
        image = volume_to_image(data)
        with atomic_path(self._filepath, suffix=".nii.gz") as tmp:
            with open(tmp, "wb") as raw, gzip.GzipFile(
                filename="", mode="wb", fileobj=raw, compresslevel=self._compresslevel, mtime=0
            ) as stream:
                image.to_stream(stream)
        self.error_path.unlink(missing_ok=True)

    def _save_failure(self, failure: ConversionFailure) -> None:
        self._filepath.unlink(missing_ok=True)  # a stale volume must not pass for this run's output
        payload = {"volume_id": failure.volume_id, "reason_code": "conversion_failed", "error": failure.error}
        atomic_write_text(self.error_path, json.dumps(payload, sort_keys=True, indent=1) + "\n")

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "compresslevel": self._compresslevel}


class NiftiImageDataset(AbstractDataset[None, nib.Nifti1Image]):
    """A raw NIfTI input (e.g. a CT-RATE volume), read-only; `load()` returns the lazy nibabel image."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    @property
    def filepath(self) -> Path:
        return self._filepath

    def load(self) -> nib.Nifti1Image:
        return nib.load(self._filepath)

    def save(self, data: None) -> None:
        raise DatasetError("NiftiImageDataset is read-only: raw inputs are never modified")

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class HUVolumeFolderDataset(PartitionedDataset):
    """`partitions.PartitionedDataset` of `NiftiVolumeDataset` (`<volume_id>.nii.gz`) that loads as `{}` when empty.

    The stock class raises "No partitions found" on an empty folder, which would stop a run whose every series
    was quarantined before the quarantine table is written; an empty cohort is data, not a crash.
    """

    def __init__(
        self,
        *,
        path: str,
        dataset: str | type[AbstractDataset] | dict[str, Any] = "generatect_kedro.io.nifti_volume.NiftiVolumeDataset",
        filename_suffix: str = ".nii.gz",
        overwrite: bool = False,
        save_lazily: bool = True,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            path=path, dataset=dataset, filename_suffix=filename_suffix, overwrite=overwrite,
            save_lazily=save_lazily, metadata=metadata, **kwargs,
        )

    def load(self) -> dict[str, Any]:
        self._invalidate_caches()
        if not self._list_partitions():
            return {}
        return super().load()
