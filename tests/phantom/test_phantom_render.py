"""The rendered phantom: normal anatomy where it belongs, and every abnormality visible where it should be."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import ndimage

from generatect_kedro.labels import CT_RATE_LABELS
from generatect_kedro.phantom.abnormalities import Finding, render_chest, sample_finding
from generatect_kedro.phantom.anatomy import ChestAnatomy, ChestScene, build_chest, sample_anatomy
from generatect_kedro.phantom.measure import cardiothoracic_ratio

SHAPE, SPACING = (50, 64, 64), (6.0, 5.5, 5.5)  # the demo's typical grid
COARSE = ((36, 48, 48), (8.0, 8.3, 8.3))  # 48 matrix, 400 mm field of view, 8 mm slices
ANATOMY = ChestAnatomy()


def _render(findings, shape=SHAPE, spacing=SPACING, anatomy=ANATOMY, seed=7) -> np.ndarray:
    return render_chest(shape, spacing, findings, np.random.default_rng(seed), anatomy=anatomy)


@pytest.fixture(scope="module")
def normal():
    return _render([])


@pytest.fixture(scope="module")
def coarse_normal():
    return _render([], *COARSE)


@pytest.fixture(scope="module")
def scene() -> ChestScene:
    return build_chest(SHAPE, SPACING, ANATOMY, np.random.default_rng(0))


def test_render_is_float32_hu_in_scanner_range_and_fast():
    start = time.perf_counter()
    hu = render_chest((80, 96, 96), (4.0, 3.8, 3.8), [], np.random.default_rng(0))
    elapsed = time.perf_counter() - start
    assert hu.shape == (80, 96, 96) and hu.dtype == np.float32
    assert hu.min() >= -1024 and hu.max() <= 3071
    assert elapsed < 2.0  # about 0.1 s on one core; generous for a shared machine


def test_same_rng_same_volume_other_rng_other_noise():
    assert np.array_equal(_render([], seed=3), _render([], seed=3))
    assert not np.array_equal(_render([], seed=3), _render([], seed=4))


@pytest.mark.parametrize("shape,spacing", [(SHAPE, SPACING), ((80, 96, 96), (4.0, 3.8, 3.8)), COARSE])
def test_tissue_values(shape, spacing):
    hu = _render([], shape, spacing)
    masks = build_chest(shape, spacing, ANATOMY, np.random.default_rng(0)).masks
    lungs = masks["lung_right"] | masks["lung_left"]
    assert abs(hu[lungs].mean() + 850) < 25
    assert 10 < hu[lungs].std() < 80  # noise plus mild texture, not a flat fill
    assert abs(hu[~masks["body"]].mean() + 1000) < 10
    assert abs(np.median(hu[masks["heart"]]) - 40) < 15
    assert np.median(hu[masks["spine"]]) > 200 and hu[masks["spine"]].max() > 700


def test_anatomy_is_in_display_order(normal, scene):
    """D inferior→superior, H anterior→posterior (row 0 = front), W patient's right→left."""
    masks = scene.masks
    heart_d, heart_h, heart_w = ndimage.center_of_mass(masks["heart"])
    spine_h = ndimage.center_of_mass(masks["spine"])[1]
    sternum_h = ndimage.center_of_mass(masks["sternum"])[1]
    assert heart_w > SHAPE[2] / 2  # the heart lies to the patient's left = image right
    assert sternum_h < heart_h < spine_h  # sternum in front, spine at the back
    lung_slices = np.nonzero((masks["lung_right"] | masks["lung_left"]).any(axis=(1, 2)))[0]
    assert masks["abdomen"][: lung_slices.min() + 1].any() and not masks["abdomen"][-5:].any()
    liver_side = normal[masks["abdomen"]].reshape(-1)  # the liver (right) is denser than the left upper abdomen
    abdomen_w = np.nonzero(masks["abdomen"])[2]
    assert liver_side[abdomen_w < SHAPE[2] / 2].mean() > liver_side[abdomen_w >= SHAPE[2] / 2].mean()


def test_anatomy_has_the_same_size_in_mm_at_any_spacing():
    volumes = []
    for shape, spacing in [(SHAPE, SPACING), ((80, 96, 96), (4.0, 3.8, 3.8))]:
        masks = build_chest(shape, spacing, ANATOMY, np.random.default_rng(0)).masks
        voxel_ml = np.prod(spacing) / 1000
        lungs = masks["lung_right"] | masks["lung_left"]
        volumes.append((lungs.sum() * voxel_ml, masks["heart"].sum() * voxel_ml))
    (lungs_a, heart_a), (lungs_b, heart_b) = volumes
    assert abs(lungs_a / lungs_b - 1) < 0.1 and abs(heart_a / heart_b - 1) < 0.15
    assert 2500 < lungs_a < 7000  # adult lungs, millilitres


@pytest.mark.parametrize("seed,shape,spacing", [(0, SHAPE, SPACING), (1, SHAPE, SPACING),
                                               (2, (80, 96, 96), (4.0, 3.8, 3.8)), (3, *COARSE)])
def test_cardiothoracic_ratio_separates_cardiomegaly(seed, shape, spacing):
    anatomy = sample_anatomy(np.random.default_rng(seed))
    normal_ctr = cardiothoracic_ratio(_render([], shape, spacing, anatomy, seed), spacing)
    enlarged_ctr = cardiothoracic_ratio(_render([Finding("Cardiomegaly", grade="mild")], shape, spacing, anatomy,
                                                seed), spacing)
    assert normal_ctr < 0.48 and enlarged_ctr > 0.52


# --- every abnormality changes its own region -------------------------------------------------------------

@dataclass
class Pair:
    without: np.ndarray
    with_: np.ndarray
    scene: ChestScene

    def mean_change(self, region: np.ndarray) -> float:
        return float(self.with_[region].mean() - self.without[region].mean())

    def count_change(self, region: np.ndarray, low=-np.inf, high=np.inf) -> int:
        def inside(hu):
            return int(((hu[region] > low) & (hu[region] < high)).sum())
        return inside(self.with_) - inside(self.without)


def _dilate(mask: np.ndarray, mm: float) -> np.ndarray:
    return ndimage.distance_transform_edt(~mask, sampling=SPACING) <= mm


def _posterior(scene: ChestScene) -> np.ndarray:
    return np.broadcast_to(scene.grid.y > 0, scene.grid.shape)


def _check_effusion(p: Pair) -> None:
    right_base = p.scene.lung_base("right") & _posterior(p.scene)
    assert p.mean_change(right_base) > 300
    assert p.mean_change(p.scene.lung_base("left")) == 0  # right-sided: the left base is untouched


def _check_cardiomegaly(p: Pair) -> None:
    assert cardiothoracic_ratio(p.without, SPACING) < 0.5 < cardiothoracic_ratio(p.with_, SPACING)
    assert p.count_change(p.scene.masks["cavity"], 0, 120) > 0.3 * p.scene.masks["heart"].sum()


def _check_pericardial_effusion(p: Pair) -> None:
    heart = p.scene.masks["heart"]
    assert p.mean_change(_dilate(heart, 8.0) & ~heart) > 150


def _check_nodule(p: Pair) -> None:
    lobe = p.scene.lobe("right", "lower")
    assert p.count_change(lobe, low=-300) >= 1 and p.with_[lobe].max() > 0
    assert p.mean_change(p.scene.lung("left")) == 0


def _check_emphysema(p: Pair) -> None:
    upper, lower = p.scene.lobe("bilateral", "upper"), p.scene.lobe("bilateral", "lower")
    assert p.count_change(upper, high=-950) > 0.1 * upper.sum()
    assert p.mean_change(upper) < -30 and p.mean_change(lower) == 0


def _check_consolidation(p: Pair) -> None:
    assert p.mean_change(p.scene.lobe("left", "lower")) > 300
    assert p.mean_change(p.scene.lung("right")) == 0


def _check_hiatal_hernia(p: Pair) -> None:
    changed = np.abs(p.with_ - p.without) > 100
    d, h, w = ndimage.center_of_mass(changed)
    heart_d, heart_h, _ = ndimage.center_of_mass(p.scene.masks["heart"])
    spine_h = ndimage.center_of_mass(p.scene.masks["spine"])[1]
    assert changed.sum() > 20 and d < heart_d and heart_h < h < spine_h  # low, behind the heart, before the spine
    outside_lungs = ~p.scene.lung("bilateral") & p.scene.masks["cavity"]
    assert p.count_change(outside_lungs, high=-800) > 0  # gas in the mediastinum


def _check_atelectasis(p: Pair) -> None:
    assert p.mean_change(p.scene.lung_base("right")) > 150
    assert p.count_change(p.scene.lung("right"), high=-500) < 0  # volume loss
    assert p.mean_change(p.scene.lung("left")) == 0


def _check_arterial_calcification(p: Pair) -> None:
    assert p.count_change(_dilate(p.scene.masks["aorta"], 4.0), low=500) >= 3


def _check_coronary_calcification(p: Pair) -> None:
    assert p.count_change(p.scene.masks["heart"], low=400) >= 3


def _check_medical_material(p: Pair) -> None:
    assert p.count_change(p.scene.masks["body"], low=1500) >= 3


def _check_lymphadenopathy(p: Pair) -> None:
    s = p.scene
    mediastinum = s.masks["cavity"] & ~s.lung("bilateral") & ~s.masks["heart"] & ~s.masks["aorta"]
    assert p.count_change(mediastinum, 0, 100) >= 3
    assert p.count_change(s.lung("bilateral"), low=0) >= 1  # hilar nodes push into the lungs


def _check_lung_opacity(p: Pair) -> None:
    lobe = p.scene.lobe("right", "upper")
    assert p.mean_change(lobe) > 100 and p.with_[lobe].mean() < -300  # hazy, not consolidated


def _check_fibrotic_sequela(p: Pair) -> None:
    assert p.count_change(p.scene.lobe("left", "upper"), low=-250) >= 3


def _check_mosaic(p: Pair) -> None:
    lungs = p.scene.lung("bilateral")
    assert p.with_[lungs].std() - p.without[lungs].std() > 30 and abs(p.mean_change(lungs)) < 40


def _check_peribronchial_thickening(p: Pair) -> None:
    s = p.scene
    hila = np.zeros(s.grid.shape, bool)
    for x, y, z in s.landmarks["hila"]:
        hila |= (s.grid.x - x) ** 2 + (s.grid.y - y) ** 2 + (s.grid.z - z) ** 2 <= 70.0**2
    assert p.mean_change(hila & s.lung("bilateral")) > 15


def _check_bronchiectasis(p: Pair) -> None:
    lobe = p.scene.lobe("right", "lower")
    assert p.count_change(lobe, high=-950) > 0 and p.count_change(lobe, low=-300) > 0
    assert p.mean_change(p.scene.lung("left")) == 0


def _check_septal_thickening(p: Pair) -> None:
    lower = p.scene.lobe("bilateral", "lower")
    periphery = lower & (p.scene.lung_depth_mm < 20)
    assert p.mean_change(periphery) > 100 and p.mean_change(p.scene.lobe("bilateral", "upper")) == 0


CASES = {
    "Pleural effusion": (Finding("Pleural effusion", side="right", grade="moderate"), _check_effusion),
    "Cardiomegaly": (Finding("Cardiomegaly", grade="moderate"), _check_cardiomegaly),
    "Pericardial effusion": (Finding("Pericardial effusion", grade="minimal", size_mm=7), _check_pericardial_effusion),
    "Lung nodule": (Finding("Lung nodule", side="right", lobe="lower", size_mm=8), _check_nodule),
    "Emphysema": (Finding("Emphysema", side="bilateral", lobe="upper", grade="moderate"), _check_emphysema),
    "Consolidation": (Finding("Consolidation", side="left", lobe="lower"), _check_consolidation),
    "Hiatal hernia": (Finding("Hiatal hernia", grade="moderate", size_mm=50), _check_hiatal_hernia),
    "Atelectasis": (Finding("Atelectasis", side="right", lobe="lower", grade="plate-like"), _check_atelectasis),
    "Arterial wall calcification": (Finding("Arterial wall calcification", grade="moderate"),
                                    _check_arterial_calcification),
    "Coronary artery wall calcification": (Finding("Coronary artery wall calcification", grade="moderate"),
                                           _check_coronary_calcification),
    "Medical material": (Finding("Medical material", variant="pacemaker"), _check_medical_material),
    "Lymphadenopathy": (Finding("Lymphadenopathy", side="bilateral", size_mm=16), _check_lymphadenopathy),
    "Lung opacity": (Finding("Lung opacity", side="right", lobe="upper"), _check_lung_opacity),
    "Pulmonary fibrotic sequela": (Finding("Pulmonary fibrotic sequela", side="left", lobe="upper"),
                                   _check_fibrotic_sequela),
    "Mosaic attenuation pattern": (Finding("Mosaic attenuation pattern", side="bilateral"), _check_mosaic),
    "Peribronchial thickening": (Finding("Peribronchial thickening", side="bilateral"),
                                 _check_peribronchial_thickening),
    "Bronchiectasis": (Finding("Bronchiectasis", side="right", lobe="lower"), _check_bronchiectasis),
    "Interlobular septal thickening": (Finding("Interlobular septal thickening", side="bilateral", lobe="lower"),
                                       _check_septal_thickening),
}


def test_every_label_has_a_case():
    assert set(CASES) == set(CT_RATE_LABELS)


@pytest.mark.parametrize("label", CT_RATE_LABELS)
def test_abnormality_changes_its_region(label, normal, scene):
    finding, check = CASES[label]
    with_finding = _render([finding])
    changed = np.abs(with_finding - normal) > 50
    assert changed.any() and not changed[~scene.masks["body"]].any()  # something changed, all inside the body
    check(Pair(normal, with_finding, scene))


def test_sternotomy_wires_are_metal_at_the_sternum(normal, scene):
    wires = _render([Finding("Medical material", variant="sternotomy wires")])
    metal = (wires > 1500) & ~(normal > 1500)
    assert metal.sum() >= 3 and metal[~_dilate(scene.masks["sternum"], 12.0)].sum() == 0


def test_findings_do_not_move_each_other():
    """A finding is placed by its own random stream: adding another leaves it where it was."""
    nodule = Finding("Lung nodule", side="left", lobe="upper", size_mm=12)
    other = Finding("Pleural effusion", side="right", grade="small")
    alone, together, normal = _render([nodule]), _render([nodule, other]), _render([])
    left = build_chest(SHAPE, SPACING, ANATOMY, np.random.default_rng(0)).lung("left")
    assert np.array_equal(alone[left], together[left]) and not np.array_equal(alone[left], normal[left])


@pytest.mark.parametrize("label", CT_RATE_LABELS)
def test_sampled_findings_render_at_coarse_spacing(label, coarse_normal):
    """Whatever details are sampled, the finding still shows on the coarsest demo grid."""
    finding = sample_finding(label, np.random.default_rng(CT_RATE_LABELS.index(label)))
    assert finding.label == label
    assert (np.abs(_render([finding], *COARSE) - coarse_normal) > 50).any()


def test_unknown_label_is_rejected():
    with pytest.raises(ValueError):
        Finding("Pneumothorax")
