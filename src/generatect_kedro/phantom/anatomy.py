"""Normal chest anatomy of the phantom, built in millimetres around the body centre.

A `ChestAnatomy` holds one patient's habitus (a handful of mm parameters); `build_chest` paints it into
a noiseless HU volume in display order (D inferior→superior, H anterior→posterior, W patient's right→left)
and keeps the masks (lungs, heart, aorta…) that abnormalities and tests need. Findings that change the
anatomy itself (cardiomegaly, pericardial fluid, volume loss) edit a copy of `ChestAnatomy` first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy import ndimage

from generatect_kedro.phantom.shapes import Grid, ellipse_radius2, ellipsoid, smooth_field, sphere, tube

AIR_HU = -1000.0
FAT_HU = -100.0
MEDIASTINAL_FAT_HU = -90.0
MUSCLE_HU = 45.0
BLOOD_HU = 40.0
CONTRAST_BLOOD_HU = 200.0
LIVER_HU = 58.0
FLUID_HU = 10.0
CANCELLOUS_HU = 250.0
CORTEX_HU = 750.0
RIB_HU = 600.0
LUNG_HU = -850.0

LOBES = {"right": ("upper", "middle", "lower"), "left": ("upper", "lower")}


@dataclass(frozen=True)
class ChestAnatomy:
    """One patient's body habitus in mm (x → patient's left, y → posterior, z → superior)."""

    scale: float = 0.95  # in-plane size of the thorax relative to an average adult
    fat_mm: float = 12.0  # subcutaneous fat thickness
    lung_apex_z: float = 128.0
    dome_top_right_z: float = -72.0  # hemidiaphragm dome tops; the right one is higher
    dome_top_left_z: float = -86.0
    dome_depth_mm: float = 50.0  # how far the costophrenic recesses lie below the dome top
    heart_center: tuple[float, float, float] = (20.0, -28.0, -48.0)
    heart_semi_axes: tuple[float, float, float] = (47.0, 40.0, 46.0)
    pericardial_fluid_mm: float = 0.0
    contrast: bool = False
    noise_sd: float = 15.0

    @property
    def thorax_half_width(self) -> float:
        return 115.0 * self.scale

    @property
    def thorax_half_depth(self) -> float:
        return 80.0 * self.scale

    def dome_top(self, side: str) -> float:
        return self.dome_top_right_z if side == "right" else self.dome_top_left_z


def sample_anatomy(rng: np.random.Generator) -> ChestAnatomy:
    """A plausible adult habitus; the same patient keeps it across studies."""
    scale = float(rng.uniform(0.86, 1.0))
    right_dome = float(rng.uniform(-78.0, -66.0))
    return ChestAnatomy(
        scale=scale,
        fat_mm=float(rng.uniform(6.0, 20.0)),
        lung_apex_z=float(rng.uniform(120.0, 135.0)),
        dome_top_right_z=right_dome,
        dome_top_left_z=right_dome - float(rng.uniform(8.0, 18.0)),
        dome_depth_mm=float(rng.uniform(42.0, 56.0)),
        heart_center=(20.0 * scale, -28.0 * scale, float(rng.uniform(-52.0, -44.0))),
        heart_semi_axes=tuple(float(v) for v in np.array([47.0, 40.0, 46.0]) * rng.uniform(0.92, 1.04) * scale),
        contrast=bool(rng.random() < 0.4),
        noise_sd=float(rng.uniform(10.0, 20.0)),
    )


@dataclass
class ChestScene:
    """A noiseless HU volume being painted, with the anatomical masks findings are placed in."""

    grid: Grid
    anatomy: ChestAnatomy
    hu: np.ndarray
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    landmarks: dict[str, tuple] = field(default_factory=dict)  # named points / segments in mm (x, y, z)

    def lung(self, side: str) -> np.ndarray:
        if side == "bilateral" or not side:
            return self.masks["lung_right"] | self.masks["lung_left"]
        return self.masks[f"lung_{side}"]

    def lobe(self, side: str, lobe: str) -> np.ndarray:
        """Lobe masks from idealised fissures (oblique for both lungs, horizontal on the right)."""
        sides = ("right", "left") if side in ("bilateral", "") else (side,)
        mask = np.zeros(self.grid.shape, dtype=bool)
        for one_side in sides:
            mask |= self.lung(one_side) & self._lobe_region(one_side, lobe)
        return mask

    def _lobe_region(self, side: str, lobe: str) -> np.ndarray:
        a, g = self.anatomy, self.grid
        dome = a.dome_top(side)
        u = (g.z - dome) / (a.lung_apex_z - dome)  # 0 at the dome top, 1 at the apex
        v = (g.y + a.thorax_half_depth) / (2 * a.thorax_half_depth)  # 0 anterior, 1 posterior
        lower = u < 0.2 + 0.6 * v
        if lobe == "lower":
            return lower
        if side == "right":
            middle = ~lower & (u < 0.45) & (v < 0.6)
            return middle if lobe == "middle" else ~lower & ~middle
        return ~lower if lobe == "upper" else np.zeros(g.shape, dtype=bool)

    def lung_base(self, side: str, height_mm: float = 60.0) -> np.ndarray:
        """Lung below a height above the dome top: where effusion and basal atelectasis are read."""
        sides = ("right", "left") if side in ("bilateral", "") else (side,)
        mask = np.zeros(self.grid.shape, dtype=bool)
        for one_side in sides:
            mask |= self.lung(one_side) & (self.grid.z < self.anatomy.dome_top(one_side) + height_mm)
        return mask

    @cached_property
    def lung_depth_mm(self) -> np.ndarray:
        """Distance in mm from each lung voxel to the nearest non-lung voxel (0 outside the lungs)."""
        lungs = self.lung("bilateral")
        return ndimage.distance_transform_edt(lungs, sampling=self.grid.spacing).astype(np.float32)

    def paint(self, mask: np.ndarray, value) -> None:
        self.hu[mask] = value if np.isscalar(value) else np.asarray(value)[mask]

    def blend(self, weight: np.ndarray, value: float) -> None:
        """Mix `value` in by a per-voxel fraction (partial volume at the edge of small objects)."""
        self.hu += weight * (np.float32(value) - self.hu)


def dome_z(grid: Grid, anatomy: ChestAnatomy, side: str) -> np.ndarray:
    """Height of one hemidiaphragm (1, H, W): highest mid-hemithorax, lowest in the recesses."""
    centre_x, centre_y, semi_x, semi_y = _lung_ellipse(anatomy, side)
    r2 = np.minimum(ellipse_radius2(grid, (centre_x, centre_y), (semi_x, semi_y)), 1.3)
    return anatomy.dome_top(side) - anatomy.dome_depth_mm * r2


def _lung_ellipse(anatomy: ChestAnatomy, side: str) -> tuple[float, float, float, float]:
    sign = 1.0 if side == "left" else -1.0
    tx, ty = anatomy.thorax_half_width, anatomy.thorax_half_depth
    return sign * 0.55 * tx, 0.05 * ty, 0.47 * tx, 0.95 * ty


def build_chest(shape_dhw, spacing_dhw_mm, anatomy: ChestAnatomy, rng: np.random.Generator) -> ChestScene:
    """Paint the normal chest; `rng` only drives lung texture (masks do not depend on it)."""
    grid = Grid(tuple(int(n) for n in shape_dhw), tuple(float(s) for s in spacing_dhw_mm))
    scene = ChestScene(grid, anatomy, np.full(grid.shape, AIR_HU, dtype=np.float32))
    _paint_body_wall(scene)
    _paint_cavity_and_abdomen(scene)
    _paint_lungs(scene, rng)
    _paint_mediastinum(scene)
    _paint_spine_and_sternum(scene)
    lungs = (scene.hu < -500) & ~scene.masks["airways"]
    for side in ("right", "left"):
        scene.masks[f"lung_{side}"] &= lungs
    return scene


def _paint_body_wall(scene: ChestScene) -> None:
    g, a = scene.grid, scene.anatomy
    tx, ty = a.thorax_half_width, a.thorax_half_depth
    rib_mm, muscle_mm = 9.0 * a.scale, 9.0 * a.scale
    body_x, body_y = tx + rib_mm + muscle_mm + a.fat_mm, ty + rib_mm + muscle_mm + a.fat_mm * 0.8
    # a superellipse: backs are flatter than an ellipse
    body = (np.abs(g.x / body_x) ** 2.3 + np.abs(g.y / body_y) ** 2.3 <= 1.0) & np.ones(g.shape, bool)
    scene.paint(body, FAT_HU)
    wall_outer = (ellipse_radius2(g, (0, 0), (tx + rib_mm + muscle_mm, ty + rib_mm + muscle_mm)) <= 1) & body
    scene.paint(wall_outer, MUSCLE_HU)
    rib_ring = wall_outer & (ellipse_radius2(g, (0, 0), (tx + rib_mm, ty + rib_mm)) <= 1)
    rib_ring &= ellipse_radius2(g, (0, 0), (tx, ty)) > 1
    scene.paint(rib_ring & _rib_pattern(g, tx, ty), RIB_HU)
    scene.masks["body"] = body


def _rib_pattern(g: Grid, tx: float, ty: float) -> np.ndarray:
    """Ribs run obliquely: posterior ends higher than anterior ones, so a slice cuts them into arcs."""
    posteriorness = np.clip((g.y / ty + 1.0) / 2.0, 0.0, 1.0)
    pitch, width = 26.0, max(11.0, 1.05 * g.spacing[0])
    phase = np.mod(g.z + 45.0 * (1.0 - posteriorness), pitch)
    costal_cartilage_gap = (np.abs(g.x) < 0.22 * tx) & (g.y < 0)
    return (phase < width) & ~costal_cartilage_gap


def _paint_cavity_and_abdomen(scene: ChestScene) -> None:
    g, a = scene.grid, scene.anatomy
    tx, ty = a.thorax_half_width, a.thorax_half_depth
    cavity = (ellipse_radius2(g, (0, 0), (tx, ty)) <= 1) & np.ones(g.shape, bool)
    scene.masks["cavity"] = cavity
    scene.paint(cavity, MEDIASTINAL_FAT_HU)
    diaphragm = np.where(g.x < 0, dome_z(g, a, "right"), dome_z(g, a, "left"))
    abdomen = cavity & (g.z < diaphragm)
    scene.masks["abdomen"] = abdomen
    scene.paint(abdomen, 35.0)
    scene.paint(abdomen & (g.x < 0.15 * tx), LIVER_HU)
    stomach = abdomen & ellipsoid(g, (0.5 * tx, -0.1 * ty, a.dome_top_left_z - 35), (0.3 * tx, 0.35 * ty, 30))
    scene.paint(stomach, 20.0)
    scene.paint(stomach & (g.y < -0.2 * ty), AIR_HU + 50)  # the gastric air bubble rises anteriorly


def _paint_lungs(scene: ChestScene, rng: np.random.Generator) -> None:
    g, a = scene.grid, scene.anatomy
    texture = smooth_field(rng, g, 12.0)
    vessels = smooth_field(rng, g, 6.0) > 1.9  # sparse dense dots: vessels cut across
    gradient = 40.0 * (g.y / a.thorax_half_depth)  # dependent (posterior) lung is denser
    lung_hu = LUNG_HU - 6.0 + gradient + 18.0 * texture + 170.0 * vessels
    taper = np.sqrt(np.clip((a.lung_apex_z - g.z) / 60.0, 0.0, 1.0))
    for side in ("right", "left"):
        centre_x, centre_y, semi_x, semi_y = _lung_ellipse(a, side)
        shrink = np.maximum(taper, 1e-3)
        # the apex narrows towards its top and its medial side
        inside = ((g.x - centre_x) / (semi_x * shrink)) ** 2 + ((g.y - centre_y) / (semi_y * shrink)) ** 2 <= 1
        lung = inside & scene.masks["cavity"] & (g.z > dome_z(g, a, side)) & (taper > 0)
        scene.masks[f"lung_{side}"] = lung
        scene.paint(lung, lung_hu)


def _paint_mediastinum(scene: ChestScene) -> None:
    g, a = scene.grid, scene.anatomy
    ty, s = a.thorax_half_depth, a.scale
    blood = CONTRAST_BLOOD_HU if a.contrast else BLOOD_HU
    top = float(g.z.max()) + 10.0
    bottom = float(g.z.min()) - 10.0
    arch_z = 58.0
    # pericardium (fluid when present), then the heart: myocardium and, with contrast, the blood pool
    if a.pericardial_fluid_mm > 0:
        rim = tuple(v + a.pericardial_fluid_mm for v in a.heart_semi_axes)
        scene.paint(ellipsoid(g, a.heart_center, rim) & scene.masks["cavity"], FLUID_HU)
    heart = ellipsoid(g, a.heart_center, a.heart_semi_axes) & scene.masks["cavity"]
    scene.paint(heart, BLOOD_HU)
    if a.contrast:
        pool = tuple(v - 9.0 for v in a.heart_semi_axes)
        scene.paint(ellipsoid(g, a.heart_center, pool), blood)
    scene.masks["heart"] = heart
    # great vessels: ascending aorta, arch, descending aorta, SVC, pulmonary arteries to the hila
    ascending = ((-6 * s, -22 * s, a.heart_center[2] + 20), (-6 * s, -22 * s, arch_z))
    descending = ((26 * s, ty - 40 * s, arch_z), (26 * s, ty - 40 * s, bottom))
    arch = ((-6 * s, -22 * s, arch_z), (26 * s, ty - 40 * s, arch_z))
    aorta = np.zeros(g.shape, dtype=bool)
    for start, end, radius in ((*ascending, 15 * s), (*arch, 13 * s), (*descending, 12 * s)):
        aorta |= tube(g, start, end, radius)
    scene.paint(aorta, blood)
    scene.masks["aorta"] = aorta
    scene.landmarks["aorta_segments"] = (ascending, arch, descending)
    scene.paint(tube(g, (-34 * s, -14 * s, -10), (-34 * s, -14 * s, top), 9 * s), blood)  # superior vena cava
    for sign in (-1, 1):
        scene.paint(tube(g, (8 * sign * s, -10 * s, 32), (52 * sign * s, 6 * s, 18), 9 * s), blood)
    # airways: trachea to the carina, then the main bronchi; esophagus behind them
    esophagus = ((6 * s, ty - 50 * s, top), (10 * s, ty - 52 * s, a.dome_top_left_z - 10))
    scene.paint(tube(g, *esophagus, 7 * s), MUSCLE_HU)
    scene.landmarks["esophagus"] = esophagus
    carina = (0.0, 12 * s, 35.0)
    trachea = tube(g, (0.0, 10 * s, top), carina, 9 * s)
    bronchi = tube(g, carina, (-44 * s, 22 * s, 16), 6 * s) | tube(g, carina, (46 * s, 26 * s, 6), 5.5 * s)
    scene.paint(trachea | bronchi, AIR_HU + 10)
    scene.masks["airways"] = trachea | bronchi
    scene.landmarks["hila"] = ((-52 * s, 12 * s, 16.0), (52 * s, 14 * s, 8.0))


def _paint_spine_and_sternum(scene: ChestScene) -> None:
    g, a = scene.grid, scene.anatomy
    ty, s = a.thorax_half_depth, a.scale
    radius = 17 * s
    cortex = max(3.0, 0.75 * g.min_inplane)
    body_centre_y = ty - 22 * s
    r2 = ellipse_radius2(g, (0, body_centre_y), (radius, radius))
    column = np.ones(g.shape, dtype=bool)
    disc = np.mod(g.z + 7.0, 27.0) < max(5.0, 0.9 * g.spacing[0])
    vertebra = (r2 <= 1) & column
    scene.paint(vertebra, CORTEX_HU)
    scene.paint((ellipse_radius2(g, (0, body_centre_y), (radius - cortex,) * 2) <= 1) & column, CANCELLOUS_HU)
    scene.paint(vertebra & disc, 85.0)
    canal_y = ty + 6 * s
    arch = (ellipse_radius2(g, (0, canal_y), (13 * s, 12 * s)) <= 1) & column
    scene.paint(arch, 450.0)
    scene.paint((ellipse_radius2(g, (0, canal_y), (7 * s, 6.5 * s)) <= 1) & column, FLUID_HU)
    spinous = (np.abs(g.x) < 4.5 * s) & (g.y > canal_y + 8 * s) & (g.y < canal_y + 30 * s) & column
    transverse = (np.abs(g.x) < 30 * s) & (np.abs(g.y - canal_y) < 5 * s) & ~disc
    scene.paint(spinous | transverse, 450.0)
    scene.masks["spine"] = vertebra | arch | spinous
    sternum = (np.abs(g.x) < 15 * s) & (g.y > -ty - 13 * s) & (g.y < -ty - 1 * s) & (g.z > -95) & (g.z < 110)
    scene.paint(sternum, 380.0)
    scene.masks["sternum"] = sternum
    scene.landmarks["sternum"] = (15 * s, -ty - 7 * s)  # half width, centre y


def body_surface_y(anatomy: ChestAnatomy, x: float, anterior: bool = True) -> float:
    """The skin's y at a given x (for devices under the skin)."""
    tx, ty, s = anatomy.thorax_half_width, anatomy.thorax_half_depth, anatomy.scale
    body_x, body_y = tx + 18 * s + anatomy.fat_mm, ty + 18 * s + anatomy.fat_mm * 0.8
    frac = max(0.0, 1.0 - abs(x / body_x) ** 2.3) ** (1 / 2.3)
    return (-1 if anterior else 1) * body_y * frac


__all__ = [
    "ChestAnatomy",
    "ChestScene",
    "Grid",
    "LOBES",
    "body_surface_y",
    "build_chest",
    "dome_z",
    "sample_anatomy",
    "sphere",
]
