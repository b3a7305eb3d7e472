"""Super-resolution data: slice pairs per cascade stage and grid resizing.

Cascade geometry: the low-res grid (h, w) is upsampled by each stage's scale in turn up to the full grid
(H, W); the depth D never changes (the U-Net works on axial slices). Stage k trains on (its input size →
its output size) pairs of axial slices:

* targets are the full grid, **area-downsampled** to the stage's output size where that is smaller;
* stage 1's inputs are the cached stage-1 conditions (`superres_lowres_recon`: the CT-ViT reconstruction of
  the low-res grid, or with ``condition: downsample`` the full grid area-downsampled to the low-res size);
* later stages' inputs are the full grid area-downsampled to the previous size (the released code had one
  stage; downsampled ground truth is what a cascade's later stages are usually trained on).

Under a launcher every rank runs the whole ``kedro run``: the stage's catalog entries are wrapped in
`generatect_kedro.io.rank_aware.RankAwareDataset`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from generatect_kedro.text.prompt_cache import pad_embeddings

LOG = logging.getLogger(__name__)

__all__ = [
    "SlicePairs",
    "StageGeometry",
    "VolumeSources",
    "area_downsample",
    "cascade_geometry",
    "condition_lineage",
    "collate_slice_pairs",
    "read_grid_meta",
    "read_slices",
    "trilinear_upsample",
]

# ---- grids ---------------------------------------------------------------------------------------------
def area_downsample(volume: Tensor, size: Sequence[int]) -> Tensor:
    """(D, H, W) → (D, h, w) by averaging (slice by slice); unchanged when already that size."""
    size = tuple(int(s) for s in size)
    if tuple(volume.shape[-2:]) == size:
        return volume
    if volume.shape[-2] < size[0] or volume.shape[-1] < size[1]:
        raise ValueError(f"cannot area-downsample {tuple(volume.shape)} to the larger {size}")
    return F.interpolate(volume[None].float(), size=size, mode="area")[0]


def trilinear_upsample(volume: Tensor, size: Sequence[int]) -> Tensor:
    """(D, h, w) → (D, H, W) trilinearly (align_corners=False; the depth is kept, so in-plane bilinear)."""
    depth = volume.shape[0]
    return F.interpolate(volume[None, None].float(), size=(depth, *[int(s) for s in size]), mode="trilinear",
                         align_corners=False)[0, 0]


def _grid_dataset(loader: Callable[[], Any]) -> Any:
    """The GridVolumeDataset behind a PartitionedDataset loader (its bound `load`), or None."""
    from generatect_kedro.io.grid_volume import GridVolumeDataset

    owner = getattr(loader, "__self__", None)
    return owner if isinstance(owner, GridVolumeDataset) else None


def read_slices(loader: Callable[[], Any], start: int, stop: int) -> np.ndarray:
    """Slices ``start:stop`` of a grid as float32 — read from the file alone when it is a grid partition (a
    512² paper-scale volume is ~100 MB; one slice is 0.5 MB)."""
    dataset = _grid_dataset(loader)
    if dataset is not None:
        from safetensors import safe_open

        with safe_open(str(dataset._filepath), framework="numpy") as handle:
            volume = handle.get_slice("volume")
            stop = min(stop, volume.get_shape()[0])  # safetensors does not clip slice bounds
            return np.asarray(volume[start:stop], dtype=np.float32)
    grid = loader()
    return np.asarray(getattr(grid, "volume", grid)[start:stop], dtype=np.float32)


def read_grid_meta(loader: Callable[[], Any]) -> tuple[dict[str, str], tuple[int, ...]]:
    """(string metadata, volume shape) of a grid without reading its voxels when it is a grid partition."""
    dataset = _grid_dataset(loader)
    if dataset is not None:
        from safetensors import safe_open

        with safe_open(str(dataset._filepath), framework="numpy") as handle:
            return dict(handle.metadata() or {}), tuple(handle.get_slice("volume").get_shape())
    grid = loader()
    return dict(getattr(grid, "meta", {}) or {}), tuple(np.asarray(getattr(grid, "volume", grid)).shape)


def condition_lineage(recon: Mapping[str, Callable[[], Any]], ids: list[str]) -> tuple[dict[str, str], tuple]:
    """The one condition (and CT-ViT version) all the cached stage-1 inputs share, and their shape."""
    metas = [read_grid_meta(recon[v]) for v in ids]
    keys = ("superres_condition", "ctvit_model", "ctvit_version", "ctvit_weights_sha256")
    found = {tuple(meta.get(k, "") for k in keys) for meta, _ in metas}
    shapes = {shape for _, shape in metas}
    if len(found) != 1 or len(shapes) != 1:
        raise ValueError(f"the cached super-resolution inputs mix {len(found)} conditions/CT-ViT versions and "
                         f"{len(shapes)} shapes; re-run prepare_superres_pairs")
    return dict(zip(("condition", "ctvit_model", "ctvit_version", "ctvit_weights_sha256"), found.pop())), shapes.pop()


def cascade_geometry(params: Mapping[str, Any], lowres_hw: tuple[int, int], full_hw: tuple[int, int]
                     ) -> list[StageGeometry]:
    """Stage sizes from ``superres.stages[*].scale``; their product must take the low-res grid to the full one."""
    stages = list(params.get("stages") or [])
    if not stages:
        raise ValueError("superres.stages is empty: give at least one stage, e.g. [{scale: 4}]")
    out, size = [], tuple(lowres_hw)
    for index, stage in enumerate(stages):
        scale = int(stage.get("scale", 0))
        if scale < 2:
            raise ValueError(f"superres.stages[{index}].scale must be an integer >= 2, got {stage.get('scale')!r}")
        out.append(StageGeometry(index, size, (size[0] * scale, size[1] * scale), tuple(full_hw)))
        size = out[-1].output_hw
    if size != tuple(full_hw):
        raise ValueError(f"the stages' scales take {lowres_hw} to {size}, but the full grid is {full_hw}")
    return out


# ---- slice pairs ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StageGeometry:
    """Where a stage sits in the cascade: in-plane sizes (h, w) of its input, output and the full grid."""

    index: int  # 0-based
    input_hw: tuple[int, int]
    output_hw: tuple[int, int]
    full_hw: tuple[int, int]

    @property
    def scale(self) -> int:
        return self.output_hw[0] // self.input_hw[0]


@dataclass(frozen=True)
class VolumeSources:
    """One volume's loaders: the stage-1 condition (cached), the full grid and the prompt embedding."""

    volume_id: str
    condition: Callable[[], Any]
    fullres: Callable[[], Any]
    text: Callable[[], Any]


class SlicePairs:
    """Map-style dataset of one stage: item i = ``slices_per_item`` consecutive axial slices of one volume.

    Returns ``{"target": (k, 1, H_out, W_out), "lowres": (k, 1, h_in, w_in), "text": (L, e)}`` in [-1, 1];
    deterministic per index, as the trainer asks. The last chunk of a volume ends at its last slice (it may
    overlap the previous one), so every item has k slices. ``cache`` keeps the volumes in memory.
    """

    def __init__(self, volumes: Sequence[VolumeSources], geometry: StageGeometry, *, depth: int,
                 slices_per_item: int = 1, cache: bool = False) -> None:
        if slices_per_item < 1 or slices_per_item > depth:
            raise ValueError(f"slices_per_item must be in 1..{depth}, got {slices_per_item}")
        self.volumes = list(volumes)
        self.geometry = geometry
        self.k = int(slices_per_item)
        starts = list(range(0, depth - self.k + 1, self.k))
        if starts[-1] + self.k < depth:
            starts.append(depth - self.k)
        self.items = [(v, s) for v in range(len(self.volumes)) for s in starts]
        self.cache = cache
        self._volumes: dict[tuple[int, str], np.ndarray] = {}
        self._text: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _slices(self, v: int, which: str, start: int) -> Tensor:
        loader = getattr(self.volumes[v], which)
        if self.cache:
            if (v, which) not in self._volumes:
                self._volumes[(v, which)] = read_slices(loader, 0, 1 << 30)
            array = self._volumes[(v, which)][start:start + self.k]
        else:
            array = read_slices(loader, start, start + self.k)
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def text(self, v: int) -> Tensor:
        if v not in self._text:
            item = self.volumes[v].text()
            self._text[v] = torch.as_tensor(np.asarray(getattr(item, "embeds", item), dtype=np.float32))
        return self._text[v]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        v, start = self.items[index]
        g = self.geometry
        full = self._slices(v, "fullres", start)
        target = area_downsample(full, g.output_hw)
        lowres = self._slices(v, "condition", start) if g.index == 0 else area_downsample(full, g.input_hw)
        if tuple(lowres.shape[-2:]) != g.input_hw:
            raise ValueError(f"volume {self.volumes[v].volume_id}: stage {g.index + 1} input is "
                             f"{tuple(lowres.shape[-2:])}, expected {g.input_hw}")
        return {"target": target[:, None], "lowres": lowres[:, None], "text": self.text(v)}


def collate_slice_pairs(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Items → one batch of slices; each item's prompt embedding is zero-padded and repeated per slice."""
    counts = torch.tensor([item["target"].shape[0] for item in items])
    text, mask = pad_embeddings([item["text"] for item in items])
    return {"target": torch.cat([item["target"] for item in items]),
            "lowres": torch.cat([item["lowres"] for item in items]),
            "text": text.repeat_interleave(counts, dim=0), "text_mask": mask.repeat_interleave(counts, dim=0)}
