"""Phantom reports say what was drawn (with side, lobe, size), negate absent key findings, and vary wording."""

from __future__ import annotations

import re

import numpy as np
import pytest

from generatect_kedro.labels import CT_RATE_LABELS
from generatect_kedro.phantom.abnormalities import Finding, sample_finding
from generatect_kedro.phantom.reports import (
    IMPRESSION_TEMPLATES,
    LABEL_PHRASES,
    MEDICAL_MATERIAL_TEMPLATES,
    NEGATION_TEMPLATES,
    NORMAL_IMPRESSION,
    POSITIVE_TEMPLATES,
    impression_phrase,
    positive_sentence,
    write_report,
)


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.;])\s+", text) if s.strip()]


def _sampled(label: str, n: int = 12) -> list[Finding]:
    return [sample_finding(label, np.random.default_rng([7, CT_RATE_LABELS.index(label), i])) for i in range(n)]


def _all_positive_texts(finding: Finding) -> set[str]:
    """Every wording the report can use for this finding (all templates, findings and impression)."""
    texts = set()
    for seed in range(30):
        rng = np.random.default_rng(seed)
        texts.add(positive_sentence(finding, rng))
        texts.add(impression_phrase(finding, rng))
    return texts


def test_tables_cover_every_label():
    assert set(LABEL_PHRASES) == set(CT_RATE_LABELS) == set(IMPRESSION_TEMPLATES) == set(POSITIVE_TEMPLATES)
    assert all(POSITIVE_TEMPLATES[label] for label in CT_RATE_LABELS if label != "Medical material")
    assert all(MEDICAL_MATERIAL_TEMPLATES.values())


@pytest.mark.parametrize("label", CT_RATE_LABELS)
def test_positive_wording_names_its_label_and_no_other(label):
    """Each positive sentence carries one of its label's phrases and none of another label's."""
    others = {other: phrases for other, phrases in LABEL_PHRASES.items() if other != label}
    for finding in _sampled(label):
        for text in _all_positive_texts(finding):
            lowered = text.lower()
            assert any(phrase in lowered for phrase in LABEL_PHRASES[label]), text
            assert "{" not in text and "  " not in text, text
            leaking = [other for other, phrases in others.items() if any(p in lowered for p in phrases)]
            assert not leaking, (text, leaking)


def test_wording_is_not_only_label_names():
    label_names = {label.lower() for label in CT_RATE_LABELS}
    assert any(phrase not in label_names for phrases in LABEL_PHRASES.values() for phrase in phrases)
    for label in CT_RATE_LABELS:
        texts = set().union(*(_all_positive_texts(f) for f in _sampled(label, 4)))
        assert len(texts) >= 2, label  # more than one wording per label


@pytest.mark.parametrize("finding,expected", [
    (Finding("Pleural effusion", side="bilateral", grade="small"), ("bilateral", "both")),
    (Finding("Pleural effusion", side="left", grade="moderate"), ("left",)),
    (Finding("Lung nodule", side="right", lobe="upper", size_mm=9), ("9 mm",)),
    (Finding("Lung nodule", side="right", lobe="upper", size_mm=9), ("right upper lobe",)),
    (Finding("Consolidation", side="left", lobe="lower"), ("left lower lobe",)),
    (Finding("Emphysema", side="bilateral", lobe="upper", grade="mild"), ("both upper lobes",)),
    (Finding("Atelectasis", side="right", lobe="lower", grade="subsegmental"), ("right lung base",)),
    (Finding("Pericardial effusion", grade="minimal", size_mm=7), ("minimal",)),
    (Finding("Hiatal hernia", grade="small", size_mm=36), ("small",)),
    (Finding("Lymphadenopathy", side="bilateral", size_mm=18), ("hilar",)),
])
def test_report_states_side_lobe_and_size_as_drawn(finding, expected):
    for seed in range(6):
        report = write_report([finding], np.random.default_rng(seed))
        phrases = LABEL_PHRASES[finding.label]
        positive = next(s for s in _sentences(report.findings) if any(p in s.lower() for p in phrases))
        for section in (positive, report.impression):
            assert any(word in section.lower() for word in expected), (section, expected)


def test_every_drawn_finding_is_in_findings_and_impression():
    rng = np.random.default_rng(0)
    for _ in range(40):
        labels = rng.choice(CT_RATE_LABELS, size=int(rng.integers(1, 6)), replace=False)
        findings = [sample_finding(str(label), rng) for label in labels]
        report = write_report(findings, rng)
        for finding in findings:
            for section in (report.findings, report.impression):
                assert any(p in section.lower() for p in LABEL_PHRASES[finding.label]), (finding, section)
        assert report.impression != NORMAL_IMPRESSION


def test_absent_key_findings_are_negated():
    rng = np.random.default_rng(1)
    for _ in range(40):
        labels = set(rng.choice(CT_RATE_LABELS, size=int(rng.integers(0, 5)), replace=False).tolist())
        report = write_report([sample_finding(label, rng) for label in labels], rng)
        sentences = _sentences(report.findings)
        for label, negations in NEGATION_TEMPLATES.items():
            negated = any(sentence in negations for sentence in sentences)
            assert negated == (label not in labels), (label, labels, report.findings)


def test_normal_study():
    report = write_report([], np.random.default_rng(2))
    assert report.impression == NORMAL_IMPRESSION
    text = report.findings
    assert re.search(r"No pleural effusion", text)
    assert re.search(r"Heart (contour and )?size (is|are) normal|No cardiomegaly", text)
    assert "pericardial effusion" in text and re.search(r"No (pulmonary nodule|mass or nodule)", text)


def test_wording_varies_with_the_rng_and_repeats_with_the_same_seed():
    findings = [Finding("Pleural effusion", side="right", grade="small"), Finding("Cardiomegaly", grade="mild")]
    reports = {write_report(findings, np.random.default_rng(seed)).findings for seed in range(10)}
    assert len(reports) > 3
    assert write_report(findings, np.random.default_rng(5)) == write_report(findings, np.random.default_rng(5))


def test_impression_order_puts_key_findings_first():
    findings = [Finding("Arterial wall calcification", grade="mild"), Finding("Pleural effusion", side="left")]
    impression = write_report(findings, np.random.default_rng(0)).impression
    assert impression.lower().index("pleural effusion") < impression.lower().index("calcification")
