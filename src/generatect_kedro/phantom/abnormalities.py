"""The 18 CT-RATE abnormalities drawn into the phantom, and `render_chest`, which puts everything together.

A `Finding` says what a report will say (label, side, lobe, size, grade); painting it changes the image
where a radiologist would look: fluid in the posterior lung base for a pleural effusion, a wider heart for
cardiomegaly, a dense sphere for a nodule. Each finding gets its own random stream, so adding one finding
never moves another, and the same patient rendered with and without it differs only there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np

from generatect_kedro.labels import CT_RATE_LABELS
from generatect_kedro.phantom import anatomy as anat
from generatect_kedro.phantom.shapes import (
    ellipse_radius2,
    ellipsoid,
    patch_mask,
    polyline,
    smooth_field,
    soft_sphere,
    sphere,
    tube,
)

HU_FLOOR, HU_CEILING = -1024.0, 3071.0  # what a 12-bit scanner reconstruction can hold


@dataclass(frozen=True)
class Finding:
    """One drawn abnormality, described the way its report sentence will describe it."""

    label: str  # one of CT_RATE_LABELS
    side: str = ""  # "right", "left", "bilateral", or "" where laterality does not apply
    lobe: str = ""  # "upper", "middle", "lower", or "" for the whole lung
    size_mm: float = 0.0  # nodule diameter, node short axis, fluid thickness, hernia size
    grade: str = ""  # "mild", "small", "moderate", …
    variant: str = ""  # kind of medical material

    def __post_init__(self) -> None:
        if self.label not in CT_RATE_LABELS:
            raise ValueError(f"unknown CT-RATE label {self.label!r}")


def _side(rng, choices=("right", "left", "bilateral"), p=None) -> str:
    return str(rng.choice(choices, p=p))


def _lobe_for(rng, side: str, choices=None) -> str:
    return str(rng.choice(choices or anat.LOBES.get(side, ("upper", "lower"))))


def sample_finding(label: str, rng: np.random.Generator) -> Finding:
    """Random but plausible details (side, lobe, size, grade) for one label."""
    grade3 = ("mild", "moderate", "extensive")
    if label == "Medical material":
        return Finding(label, variant=str(rng.choice(["pacemaker", "sternotomy wires"])))
    if label in ("Arterial wall calcification", "Coronary artery wall calcification"):
        return Finding(label, grade=str(rng.choice(grade3)))
    if label == "Cardiomegaly":
        return Finding(label, grade=str(rng.choice(["mild", "moderate", "marked"])))
    if label == "Pericardial effusion":
        grade = str(rng.choice(["minimal", "small", "moderate"]))
        return Finding(label, grade=grade, size_mm={"minimal": 7.0, "small": 11.0, "moderate": 16.0}[grade])
    if label == "Hiatal hernia":
        grade = str(rng.choice(["small", "moderate", "large"]))
        return Finding(label, grade=grade, size_mm={"small": 36.0, "moderate": 50.0, "large": 64.0}[grade])
    if label == "Lymphadenopathy":
        return Finding(label, side=_side(rng, ("", "bilateral")), size_mm=float(rng.integers(12, 23)))
    if label == "Emphysema":
        side = _side(rng, p=(0.15, 0.15, 0.7))
        return Finding(label, side=side, lobe="upper", grade=str(rng.choice(["mild", "moderate", "severe"])))
    if label == "Atelectasis":
        return Finding(label, side=_side(rng), lobe="lower", grade=str(rng.choice(["subsegmental", "plate-like"])))
    if label == "Lung nodule":
        side = _side(rng, ("right", "left"))
        return Finding(label, side=side, lobe=_lobe_for(rng, side), size_mm=float(rng.integers(6, 16)))
    if label in ("Consolidation", "Pulmonary fibrotic sequela"):
        side = _side(rng, ("right", "left"))
        return Finding(label, side=side, lobe=_lobe_for(rng, side))
    if label == "Lung opacity":
        side = _side(rng)
        return Finding(label, side=side, lobe="" if side == "bilateral" else _lobe_for(rng, side))
    if label == "Pleural effusion":
        return Finding(label, side=_side(rng), grade=str(rng.choice(["small", "moderate", "large"])))
    if label in ("Mosaic attenuation pattern", "Peribronchial thickening"):
        return Finding(label, side="bilateral")
    if label == "Bronchiectasis":
        side = _side(rng)
        return Finding(label, side=side, lobe="lower")
    if label == "Interlobular septal thickening":
        return Finding(label, side="bilateral", lobe=str(rng.choice(["lower", ""])))
    raise ValueError(f"unknown CT-RATE label {label!r}")


def sample_findings(labels: Iterable[str], rng: np.random.Generator) -> tuple[Finding, ...]:
    return tuple(sample_finding(label, rng) for label in labels)


def _sides(side: str) -> tuple[str, ...]:
    return ("right", "left") if side in ("bilateral", "") else (side,)


def apply_shape_findings(anatomy: anat.ChestAnatomy, findings: Iterable[Finding],
                         spacing_dhw_mm) -> anat.ChestAnatomy:
    """Findings that change the anatomy itself: a bigger heart, pericardial fluid, a raised hemidiaphragm."""
    largest_voxel = float(max(spacing_dhw_mm))
    for finding in findings:
        if finding.label == "Cardiomegaly":
            # widening is what the cardiothoracic ratio sees: CTR goes from ~0.42 to ~0.55-0.65
            factor = {"mild": 1.45, "moderate": 1.55, "marked": 1.65}[finding.grade or "moderate"]
            ax, ay, az = anatomy.heart_semi_axes
            cx, cy, cz = anatomy.heart_center
            anatomy = replace(anatomy, heart_semi_axes=(ax * factor, ay * (1 + 0.7 * (factor - 1)),
                                                        az * (1 + 0.5 * (factor - 1))),
                              heart_center=(cx + (factor - 1) * 25.0, cy, cz))
        elif finding.label == "Pericardial effusion":
            thickness = max(finding.size_mm or 10.0, 1.1 * largest_voxel)
            anatomy = replace(anatomy, pericardial_fluid_mm=thickness)
        elif finding.label == "Atelectasis":
            raise_mm = 16.0 if finding.grade == "plate-like" else 11.0
            for side in _sides(finding.side):
                field = "dome_top_right_z" if side == "right" else "dome_top_left_z"
                anatomy = replace(anatomy, **{field: getattr(anatomy, field) + raise_mm})
    return anatomy


# --- painters: each draws one finding into a scene -------------------------------------------------------

def _region(scene: anat.ChestScene, finding: Finding) -> np.ndarray:
    return scene.lobe(finding.side, finding.lobe) if finding.lobe else scene.lung(finding.side)


def _paint_pleural_effusion(scene, finding, rng) -> None:
    g, a = scene.grid, scene.anatomy
    depth = {"small": 24.0, "moderate": 40.0, "large": 60.0}[finding.grade or "moderate"]
    height = {"small": 50.0, "moderate": 75.0, "large": 105.0}[finding.grade or "moderate"]
    posterior_wall = a.thorax_half_depth * np.sqrt(np.clip(1 - (g.x / a.thorax_half_width) ** 2, 0, 1))
    for side in _sides(finding.side):
        top = a.dome_top(side) + height
        layer = depth * np.sqrt(np.clip((top - g.z) / height, 0.0, 1.0))  # thickest at the base: a meniscus
        fluid = scene.lung(side) & ((posterior_wall - g.y) <= layer)
        recess = {"small": 0.5, "moderate": 0.3, "large": 0.1}[finding.grade or "moderate"]
        fluid |= scene.lung(side) & (g.z < a.dome_top(side) - recess * a.dome_depth_mm)  # recesses fill first
        scene.paint(fluid, anat.FLUID_HU + float(rng.uniform(0, 8)))


def _paint_atelectasis(scene, finding, rng) -> None:
    g = scene.grid
    band = max(12.0, 1.6 * g.spacing[0])
    for side in _sides(finding.side):
        centre_y = 0.05 * scene.anatomy.thorax_half_depth
        basal = scene.lung(side) & (g.z - anat.dome_z(g, scene.anatomy, side) < band) & (g.y > centre_y - 15)
        scene.paint(basal, float(rng.uniform(15, 35)))


def _paint_lung_nodule(scene, finding, rng) -> None:
    radius = max(finding.size_mm, 4.0) / 2
    region = _region(scene, finding)
    candidates = np.argwhere(region & (scene.lung_depth_mm >= radius + 3.0))
    if not len(candidates):
        candidates = np.argwhere(region if region.any() else scene.lung(finding.side))
    d, h, w = candidates[rng.integers(len(candidates))]
    g = scene.grid
    centre = (float(g.x[0, 0, w]), float(g.y[0, h, 0]), float(g.z[d, 0, 0]))  # a voxel centre: never vanishes
    scene.blend(soft_sphere(g, centre, radius), float(rng.uniform(30, 60)))


def _paint_emphysema(scene, finding, rng) -> None:
    fraction = {"mild": 0.2, "moderate": 0.35, "severe": 0.55}[finding.grade or "moderate"]
    holes = patch_mask(rng, scene.grid, scene.lobe(finding.side, "upper"), fraction, feature_mm=14.0)
    scene.paint(holes, float(rng.uniform(-985, -965)))


def _paint_consolidation(scene, finding, rng) -> None:
    dense = patch_mask(rng, scene.grid, _region(scene, finding), float(rng.uniform(0.6, 0.85)), feature_mm=40.0)
    scene.paint(dense, float(rng.uniform(20, 45)))


def _paint_lung_opacity(scene, finding, rng) -> None:
    ground_glass = patch_mask(rng, scene.grid, _region(scene, finding), float(rng.uniform(0.35, 0.55)), 22.0)
    scene.paint(ground_glass, float(rng.uniform(-560, -480)))


def _paint_mosaic(scene, finding, rng) -> None:
    lungs = scene.lung(finding.side)
    lobular = np.sign(smooth_field(rng, scene.grid, 28.0))
    scene.hu[lungs] += (90.0 * lobular)[lungs]


def _paint_fibrotic_sequela(scene, finding, rng) -> None:
    g, region = scene.grid, _region(scene, finding)
    subpleural = np.argwhere(region & (scene.lung_depth_mm < 20.0))
    if not len(subpleural):
        return
    half_thickness = max(1.5, 0.5 * max(g.spacing))
    for _ in range(3):
        d, h, w = subpleural[rng.integers(len(subpleural))]
        centre = np.array([g.x[0, 0, w], g.y[0, h, 0], g.z[d, 0, 0]], dtype=np.float32)
        normal = rng.normal(size=3)
        normal /= np.linalg.norm(normal)
        dx, dy, dz = g.x - centre[0], g.y - centre[1], g.z - centre[2]
        plate = (np.abs(dx * normal[0] + dy * normal[1] + dz * normal[2]) <= half_thickness)
        plate &= (dx**2 + dy**2 + dz**2 <= 30.0**2) & region
        scene.paint(plate, float(rng.uniform(-150, -40)))


def _airway_segments(scene, side: str, lower_only: bool = False):
    """Idealised segmental bronchi radiating from a hilum (mm, scaled with the patient)."""
    s = scene.anatomy.scale
    sign = -1.0 if side == "right" else 1.0
    hilum = scene.landmarks["hila"][0 if side == "right" else 1]
    targets = [(20, 30, -75), (45, 10, -62), (15, 45, -40)] if lower_only else \
        [(20, -10, 62), (28, -45, -22), (20, 30, -75), (45, 10, -62)]
    return [(hilum, (hilum[0] + sign * tx * s, hilum[1] + ty * s, hilum[2] + tz)) for tx, ty, tz in targets]


def _paint_peribronchial_thickening(scene, finding, rng) -> None:
    g = scene.grid
    cuff = max(4.0, 0.6 * g.min_inplane)
    for side in _sides(finding.side):
        lung = scene.lung(side)
        for start, end in _airway_segments(scene, side):
            scene.paint(tube(g, start, end, 3.0 + cuff) & lung, float(rng.uniform(-90, -40)))
            scene.paint(tube(g, start, end, 2.5) & lung, anat.AIR_HU + 40)


def _paint_bronchiectasis(scene, finding, rng) -> None:
    g = scene.grid
    wall = max(3.0, 0.5 * g.min_inplane)
    for side in _sides(finding.side):
        region = scene.lobe(side, "lower")  # the report names the lower lobe(s) only
        for start, end in _airway_segments(scene, side, lower_only=True):
            lumen = float(rng.uniform(5.0, 7.0))
            start = tuple(np.asarray(start) + (np.asarray(end) - np.asarray(start)) * 0.3)
            scene.paint(tube(g, start, end, lumen + wall) & region, float(rng.uniform(-60, -20)))
            scene.paint(tube(g, start, end, lumen) & region, anat.AIR_HU + 20)


def _paint_septal_thickening(scene, finding, rng) -> None:
    g = scene.grid
    region = _region(scene, finding) & (scene.lung_depth_mm < 25.0)
    period = max(14.0, 3.2 * g.min_inplane)
    half_width = max(1.0, 0.5 * g.min_inplane)
    offset_x, offset_y = rng.uniform(0, period, size=2)
    lines = (np.abs(np.mod(g.x - offset_x, period) - period / 2) >= period / 2 - half_width) | \
            (np.abs(np.mod(g.y - offset_y, period) - period / 2) >= period / 2 - half_width)
    scene.paint(region & lines, float(rng.uniform(-400, -330)))


def _paint_lymphadenopathy(scene, finding, rng) -> None:
    s = scene.anatomy.scale
    stations = {"right paratracheal": (-18 * s, 14 * s, 70.0), "subcarinal": (0.0, 30 * s, 20.0),
                "prevascular": (14 * s, -8 * s, 46.0), "aortopulmonary": (18 * s, 4 * s, 40.0)}
    chosen = list(rng.choice(list(stations), size=int(rng.integers(2, 4)), replace=False))
    centres = [stations[name] for name in chosen]
    if finding.side == "bilateral":
        centres += [(-58 * s, 4 * s, 6.0), (58 * s, 6 * s, -2.0)]  # hilar nodes abut the lung
    largest = max(finding.size_mm, 10.0) / 2
    for index, centre in enumerate(centres):
        short = largest if index == 0 else largest * float(rng.uniform(0.7, 1.0))
        scene.paint(ellipsoid(scene.grid, centre, (short, short, short * 1.4)), float(rng.uniform(35, 50)))


def _paint_hiatal_hernia(scene, finding, rng) -> None:
    g, a, s = scene.grid, scene.anatomy, scene.anatomy.scale
    radius = max(finding.size_mm, 30.0) / 2
    centre = (10 * s, a.thorax_half_depth - 52 * s - 0.3 * radius, a.dome_top_left_z + 0.5 * radius)
    semi = (radius, radius * 0.85, radius * 1.2)
    sac = ellipsoid(g, centre, semi) & ~scene.masks["spine"]
    inner = ellipsoid(g, centre, tuple(max(v - 4.0, 2.0) for v in semi)) & sac
    scene.paint(sac, anat.MUSCLE_HU)
    fluid_level = centre[1] - 0.1 * radius  # supine: gas rises anteriorly above the fluid
    scene.paint(inner & (g.y < fluid_level), anat.AIR_HU + 60)
    scene.paint(inner & (g.y >= fluid_level), anat.FLUID_HU + 10)


def _wall_point(rng, start, end, radius: float) -> tuple[float, float, float]:
    p0, p1 = np.asarray(start, float), np.asarray(end, float)
    axis = (p1 - p0) / np.linalg.norm(p1 - p0)
    helper = np.array([0.0, 0.0, 1.0]) if abs(axis[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = np.cross(axis, helper)
    u /= np.linalg.norm(u)
    v = np.cross(axis, u)
    angle = rng.uniform(0, 2 * np.pi)
    point = p0 + rng.uniform(0.1, 0.9) * (p1 - p0) + radius * (np.cos(angle) * u + np.sin(angle) * v)
    return tuple(float(c) for c in point)


def _paint_arterial_calcification(scene, finding, rng) -> None:
    g, s = scene.grid, scene.anatomy.scale
    segments = scene.landmarks["aorta_segments"]
    radii = (14 * s, 12 * s, 11 * s)  # just inside the wall of the ascending aorta, arch, descending aorta
    z_visible = (float(g.z.min()) + 5, float(g.z.max()) - 5)
    for _ in range({"mild": 3, "moderate": 6, "extensive": 10}[finding.grade or "moderate"]):
        index = int(rng.choice(3, p=(0.2, 0.35, 0.45)))
        start, end = segments[index]
        end = (*end[:2], max(end[2], z_visible[0])) if index == 2 else end
        point = g.snap(_wall_point(rng, start, end, radii[index]))
        scene.paint(sphere(g, point, g.visible_radius(2.5)), float(rng.uniform(650, 1000)))


def _paint_coronary_calcification(scene, finding, rng) -> None:
    g, a = scene.grid, scene.anatomy
    grooves = [(0.35, -0.9, 0.15), (-0.8, -0.55, 0.05), (0.75, 0.1, 0.3)]  # LAD, RCA, circumflex
    for index in range({"mild": 2, "moderate": 4, "extensive": 7}[finding.grade or "moderate"]):
        direction = np.asarray(grooves[index % 3]) + rng.normal(0, 0.12, 3)
        direction /= np.linalg.norm(direction)
        point = np.asarray(a.heart_center) + 0.9 * np.asarray(a.heart_semi_axes) * direction
        scene.paint(sphere(g, g.snap(tuple(point)), g.visible_radius(2.5)), float(rng.uniform(500, 900)))


def _paint_medical_material(scene, finding, rng) -> None:
    g, a, s = scene.grid, scene.anatomy, scene.anatomy.scale
    metal = float(rng.uniform(2200, 2900))
    if finding.variant == "sternotomy wires":
        half_width, centre_y = scene.landmarks["sternum"]
        thickness = max(2.0, 0.6 * g.min_inplane)
        outer = ellipse_radius2(g, (0, centre_y), (half_width + 4, 10 * s)) <= 1
        inner = ellipse_radius2(g, (0, centre_y), (half_width + 4 - thickness, 10 * s - thickness)) <= 1
        for level in np.linspace(-55, 65, 5):
            z = g.snap((0.0, 0.0, float(level)))[2]
            scene.paint(outer & ~inner & (np.abs(g.z - z) <= max(1.0, 0.45 * g.spacing[0])), metal)
        return
    x = 65 * s
    y = anat.body_surface_y(a, x) + 10.0
    device = (np.abs(g.x - x) < 22) & (np.abs(g.y - y) < max(5.0, 0.55 * g.min_inplane)) & (np.abs(g.z - 95) < 25)
    scene.paint(device, metal)
    hx, hy, hz = a.heart_center
    lead = [(x, y, 95.0), (30 * s, -24 * s, 112.0), (-34 * s, -14 * s, 80.0), (-34 * s, -14 * s, hz + 40),
            (-10 * s, hy - 20 * s, hz), (hx - 5 * s, hy - 0.7 * a.heart_semi_axes[1], hz - 25)]
    scene.paint(polyline(g, lead, g.visible_radius(1.0)), metal - 400)


PAINTERS: dict[str, Callable[[anat.ChestScene, Finding, np.random.Generator], None]] = {
    # parenchymal background changes first, focal lesions over them, fluid and devices last
    "Mosaic attenuation pattern": _paint_mosaic,
    "Emphysema": _paint_emphysema,
    "Lung opacity": _paint_lung_opacity,
    "Interlobular septal thickening": _paint_septal_thickening,
    "Pulmonary fibrotic sequela": _paint_fibrotic_sequela,
    "Peribronchial thickening": _paint_peribronchial_thickening,
    "Bronchiectasis": _paint_bronchiectasis,
    "Consolidation": _paint_consolidation,
    "Atelectasis": _paint_atelectasis,
    "Lung nodule": _paint_lung_nodule,
    "Pleural effusion": _paint_pleural_effusion,
    "Lymphadenopathy": _paint_lymphadenopathy,
    "Hiatal hernia": _paint_hiatal_hernia,
    "Arterial wall calcification": _paint_arterial_calcification,
    "Coronary artery wall calcification": _paint_coronary_calcification,
    "Medical material": _paint_medical_material,
    "Cardiomegaly": lambda scene, finding, rng: None,  # drawn by apply_shape_findings
    "Pericardial effusion": lambda scene, finding, rng: None,
}
if set(PAINTERS) != set(CT_RATE_LABELS):
    raise RuntimeError("every CT-RATE label needs exactly one painter")


def render_chest(shape_dhw, spacing_dhw_mm, findings: Iterable[Finding], rng: np.random.Generator, *,
                 anatomy: anat.ChestAnatomy | None = None) -> np.ndarray:
    """A (D, H, W) float32 HU chest CT in display order with the given findings drawn in.

    `anatomy` fixes the patient (same habitus across studies); otherwise it is drawn from `rng`.
    """
    findings = tuple(findings)
    anatomy_rng, texture_rng, finding_rng, noise_rng = rng.spawn(4)
    anatomy = anatomy or anat.sample_anatomy(anatomy_rng)
    anatomy = apply_shape_findings(anatomy, findings, spacing_dhw_mm)
    scene = anat.build_chest(shape_dhw, spacing_dhw_mm, anatomy, texture_rng)
    base_seed = int(finding_rng.integers(2**63))
    order = list(PAINTERS)
    for finding in sorted(findings, key=lambda f: order.index(f.label)):
        label_index = CT_RATE_LABELS.index(finding.label)
        PAINTERS[finding.label](scene, finding, np.random.default_rng([base_seed, label_index]))
    hu = scene.hu + noise_rng.normal(0.0, anatomy.noise_sd, scene.grid.shape).astype(np.float32)
    return np.clip(hu, HU_FLOOR, HU_CEILING).astype(np.float32)
