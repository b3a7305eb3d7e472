"""Radiology reports for phantom studies that say exactly what was drawn, in CT-RATE-like wording.

Positive sentences name side, lobe and size as drawn; key findings that are absent are explicitly negated
("No pleural effusion."), as real reports do, so a labeler must handle negation rather than keyword
matching. `LABEL_PHRASES` lists, per label, the phrases every positive sentence of that label contains;
a labeler can be tested against it (negations contain some of them too, on purpose).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from generatect_kedro.labels import CT_RATE_LABELS
from generatect_kedro.phantom.abnormalities import Finding

# Findings-section sentences per label; fields come from `_fields`. Several per label: the rng picks one.
POSITIVE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "Medical material": (),  # depends on the device, see MEDICAL_MATERIAL_TEMPLATES
    "Arterial wall calcification": (
        "Atherosclerotic calcifications are observed in the wall of the thoracic aorta.",
        "{Grade} calcific atherosclerotic plaques in the thoracic aorta.",
        "{Grade} aortic wall calcifications.",
    ),
    "Cardiomegaly": ("Cardiomegaly.", "The heart is enlarged ({grade} cardiomegaly).",
                     "Heart size is increased; the cardiothoracic ratio is above 0.5."),
    "Pericardial effusion": ("{Grade} pericardial effusion.", "Pericardial effusion is seen, {grade} in amount."),
    "Coronary artery wall calcification": ("Coronary artery calcifications are present.",
                                           "{Grade} calcified plaques in the coronary arteries.",
                                           "{Grade} coronary artery calcification."),
    "Hiatal hernia": ("{Grade} hiatal hernia.", "A {grade} sliding hiatal hernia is observed.",
                      "Hiatal hernia of {grade} size containing air and fluid."),
    "Lymphadenopathy": (
        "Enlarged lymph nodes in the {stations} region, the largest measuring {size} mm in short axis.",
        "{Stations} lymphadenopathy, the largest node {size} mm in short axis.",
    ),
    "Emphysema": ("Centrilobular emphysematous changes in {where}.", "{Grade} emphysema in {where}.",
                  "Emphysematous areas are seen in {where}."),
    "Atelectasis": ("{Grade} atelectasis at {base}.", "{Grade} atelectatic changes at {base} with mild volume loss."),
    "Lung nodule": ("A {size} mm solid nodule in {where}.", "A solid pulmonary nodule measuring {size} mm in {where}.",
                    "{size} mm nodule in {where}."),
    "Lung opacity": ("Ground-glass opacities in {where}.", "Patchy ground-glass densities are seen in {where}."),
    "Pulmonary fibrotic sequela": ("Sequelae fibrotic changes in {where}.",
                                   "Linear fibrotic bands in {where}, consistent with sequelae."),
    "Pleural effusion": ("{Side} pleural effusion.", "{Grade} {side} pleural effusion.",
                         "Pleural effusion in {hemithorax}, {grade} in amount."),
    "Mosaic attenuation pattern": ("Mosaic attenuation pattern in both lungs.",
                                   "Mosaic attenuation is observed in both lungs, suggesting small airway disease."),
    "Peribronchial thickening": ("Peribronchial thickening is observed in both lungs.",
                                 "Bronchial wall thickening in both perihilar regions."),
    "Consolidation": ("Consolidation in {where}.", "An area of consolidation is observed in {where}.",
                      "Consolidated area in {where}."),
    "Bronchiectasis": ("Cylindrical bronchiectasis in {where}.", "Bronchiectatic changes in {where}."),
    "Interlobular septal thickening": ("Interlobular septal thickening in {where}.",
                                       "Thickening of the interlobular septa in {where}."),
}
MEDICAL_MATERIAL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "pacemaker": ("A pacemaker device is seen in the left anterior chest wall, with its lead extending into the "
                  "right heart chambers.", "Cardiac pacemaker with its lead terminating in the right ventricle."),
    "sternotomy wires": ("Median sternotomy wires are noted.", "Sternotomy wires from previous cardiac surgery."),
}
IMPRESSION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "Pleural effusion": ("{Side} pleural effusion.",),
    "Consolidation": ("Consolidation in {where}.",),
    "Lung nodule": ("{size} mm nodule in {where}.", "Pulmonary nodule in {where} ({size} mm)."),
    "Cardiomegaly": ("Cardiomegaly.",),
    "Pericardial effusion": ("{Grade} pericardial effusion.",),
    "Lung opacity": ("Ground-glass opacities in {where}.",),
    "Atelectasis": ("{Grade} atelectasis at {base}.",),
    "Emphysema": ("Emphysema in {where}.", "Centrilobular emphysematous changes in {where}."),
    "Lymphadenopathy": ("{Stations} lymphadenopathy.",),
    "Hiatal hernia": ("{Grade} hiatal hernia.",),
    "Bronchiectasis": ("Bronchiectasis in {where}.",),
    "Interlobular septal thickening": ("Interlobular septal thickening.",),
    "Peribronchial thickening": ("Peribronchial thickening.",),
    "Mosaic attenuation pattern": ("Mosaic attenuation pattern.",),
    "Pulmonary fibrotic sequela": ("Sequelae fibrotic changes in {where}.",),
    "Arterial wall calcification": ("Atherosclerotic calcification of the thoracic aorta.",),
    "Coronary artery wall calcification": ("Coronary artery calcification.",),
    "Medical material": ("{device} in place.",),
}
# Every positive sentence (findings and impression) of a label contains at least one of these.
LABEL_PHRASES: dict[str, tuple[str, ...]] = {
    "Medical material": ("pacemaker", "sternotomy wires"),
    "Arterial wall calcification": ("atherosclerotic calcification", "calcific atherosclerotic plaque",
                                    "aortic wall calcification"),
    "Cardiomegaly": ("cardiomegaly", "heart size is increased"),
    "Pericardial effusion": ("pericardial effusion",),
    "Coronary artery wall calcification": ("coronary artery calcification", "calcified plaques in the coronary"),
    "Hiatal hernia": ("hiatal hernia",),
    "Lymphadenopathy": ("lymphadenopathy", "enlarged lymph nodes"),
    "Emphysema": ("emphysema",),
    "Atelectasis": ("atelectasis", "atelectatic"),
    "Lung nodule": ("nodule",),
    "Lung opacity": ("ground-glass",),
    "Pulmonary fibrotic sequela": ("fibrotic",),
    "Pleural effusion": ("pleural effusion",),
    "Mosaic attenuation pattern": ("mosaic attenuation",),
    "Peribronchial thickening": ("peribronchial thickening", "bronchial wall thickening"),
    "Consolidation": ("consolidation", "consolidated"),
    "Bronchiectasis": ("bronchiectasis", "bronchiectatic"),
    "Interlobular septal thickening": ("interlobular septal thickening", "interlobular septa"),
}
# Absent key findings are negated explicitly, one sentence each, as in CT-RATE findings sections.
NEGATION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": ("Heart size is normal.", "Heart contour and size are normal.", "No cardiomegaly."),
    "Pericardial effusion": ("No pericardial effusion.", "No pericardial effusion or thickening was detected."),
    "Lymphadenopathy": ("No lymph node was detected in mediastinal and bilateral hilar pathological size.",
                        "No mediastinal or hilar lymphadenopathy."),
    "Hiatal hernia": ("Thoracic esophagus calibration was normal and no hiatal hernia was detected.",
                      "No hiatal hernia."),
    "Pleural effusion": ("No pleural effusion.", "No pleural effusion was detected."),
    "Consolidation": ("No consolidation was detected.", "No infiltration or consolidation in the lung parenchyma."),
    "Lung nodule": ("No pulmonary nodule was detected.", "No mass or nodule was detected in both lungs."),
}
NORMAL_IMPRESSION = "No acute cardiopulmonary abnormality."

# Sections of the findings text, in reading order, and the labels each one reports.
_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Trachea and both main bronchi are in normal position and their lumens are open.", ()),
    ("", ("Cardiomegaly", "Pericardial effusion", "Coronary artery wall calcification", "Arterial wall calcification",
          "Lymphadenopathy", "Hiatal hernia", "Pleural effusion")),
    ("When examined in the lung parenchyma window;", (
        "Emphysema", "Mosaic attenuation pattern", "Lung opacity", "Consolidation", "Atelectasis",
        "Pulmonary fibrotic sequela", "Peribronchial thickening", "Bronchiectasis", "Interlobular septal thickening",
        "Lung nodule")),
    ("", ("Medical material",)),
)
_IMPRESSION_ORDER = tuple(IMPRESSION_TEMPLATES)
_BONES = ("Bone structures in the study area are natural.", "No lytic or destructive lesion in the bone structures.")


@dataclass(frozen=True)
class Report:
    findings: str
    impression: str


def _fields(finding: Finding) -> dict[str, str]:
    side, lobe = finding.side, finding.lobe
    both = side in ("bilateral", "")
    if lobe:
        where = f"both {lobe} lobes" if both else f"the {side} {lobe} lobe"
    else:
        where = "both lungs" if both else f"the {side} lung"
    stations = "mediastinal and bilateral hilar" if side == "bilateral" else "mediastinal"
    grade = finding.grade or "mild"
    return {
        "side": side, "Side": side.capitalize(), "where": where,
        "base": "both lung bases" if both else f"the {side} lung base",
        "hemithorax": "both hemithoraces" if both else f"the {side} hemithorax",
        "stations": stations, "Stations": stations.capitalize(),
        "size": f"{finding.size_mm:.0f}", "grade": grade, "Grade": grade.capitalize(),
        "device": "Pacemaker" if finding.variant == "pacemaker" else "Median sternotomy wires",
    }


def positive_sentence(finding: Finding, rng: np.random.Generator) -> str:
    """One findings-section sentence for a drawn finding."""
    templates = (MEDICAL_MATERIAL_TEMPLATES[finding.variant or "pacemaker"]
                 if finding.label == "Medical material" else POSITIVE_TEMPLATES[finding.label])
    return str(rng.choice(templates)).format(**_fields(finding))


def impression_phrase(finding: Finding, rng: np.random.Generator) -> str:
    return str(rng.choice(IMPRESSION_TEMPLATES[finding.label])).format(**_fields(finding))


def write_report(findings: Iterable[Finding], rng: np.random.Generator) -> Report:
    """A findings section (positives and explicit negations) and an impression for what was drawn."""
    by_label = {finding.label: finding for finding in findings}
    unknown = set(by_label) - set(CT_RATE_LABELS)
    if unknown:
        raise ValueError(f"unknown labels {sorted(unknown)}")
    sentences: list[str] = []
    for opener, labels in _SECTIONS:
        if opener:
            sentences.append(opener)
        for label in labels:
            if label in by_label:
                sentences.append(positive_sentence(by_label[label], rng))
            elif label in NEGATION_TEMPLATES:
                sentences.append(str(rng.choice(NEGATION_TEMPLATES[label])))
    sentences.append(str(rng.choice(_BONES)))
    positives = [by_label[label] for label in _IMPRESSION_ORDER if label in by_label]
    impression = " ".join(impression_phrase(finding, rng) for finding in positives) or NORMAL_IMPRESSION
    return Report(findings=" ".join(sentences), impression=impression)
