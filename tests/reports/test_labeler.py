import pandas as pd
import pytest

from generatect_kedro.labels import CT_RATE_LABELS
from generatect_kedro.reports.labeler import LABEL_COLUMNS, label_reports, label_text

# sentence → the labels it must set (all other 17 must be 0)
CASES = [
    # plain positives, one per label
    ("Pacemaker in place.", {"medical_material"}),
    ("Central venous catheter tip in the superior vena cava.", {"medical_material"}),
    ("Coronary stent is noted.", {"medical_material"}),
    ("Chest tube in the right hemithorax.", {"medical_material"}),
    ("Sternotomy wires are present.", {"medical_material"}),
    ("Calcification in the aorta.", {"arterial_wall_calcification"}),
    ("Calcification of the aortic wall.", {"arterial_wall_calcification"}),
    ("Atherosclerotic calcification.", {"arterial_wall_calcification"}),
    ("Aortic atherosclerotic plaques.", {"arterial_wall_calcification"}),
    ("Cardiomegaly.", {"cardiomegaly"}),
    ("Heart size increased.", {"cardiomegaly"}),
    ("The heart is enlarged.", {"cardiomegaly"}),
    ("Pericardial effusion.", {"pericardial_effusion"}),
    ("Minimal pericardial fluid.", {"pericardial_effusion"}),
    ("Coronary artery calcification.", {"coronary_artery_wall_calcification"}),
    ("Calcified plaques in the coronary arteries.", {"coronary_artery_wall_calcification"}),
    ("Coronary atherosclerotic calcifications.", {"coronary_artery_wall_calcification"}),
    ("Hiatal hernia.", {"hiatal_hernia"}),
    ("Mediastinal lymphadenopathy.", {"lymphadenopathy"}),
    ("Enlarged lymph nodes in the mediastinum.", {"lymphadenopathy"}),
    ("Lymph nodes of pathological size in the hilum.", {"lymphadenopathy"}),
    ("Emphysematous changes in both lungs.", {"emphysema"}),
    ("Centrilobular emphysema.", {"emphysema"}),
    ("Subsegmental atelectasis in the right lower lobe.", {"atelectasis"}),
    ("Atelectatic changes at the lung bases.", {"atelectasis"}),
    ("Nodules in the right upper lobe.", {"lung_nodule"}),
    ("A 4 mm nodule in the left lower lobe.", {"lung_nodule"}),
    ("Nodule measuring 3.5 mm in the right lower lobe.", {"lung_nodule"}),
    ("Nodular opacity in the left lung.", {"lung_nodule", "lung_opacity"}),
    ("Ground glass areas in the right lung.", {"lung_opacity"}),
    ("Patchy opacities in both lungs.", {"lung_opacity"}),
    ("Fibrotic sequelae in the right lung.", {"pulmonary_fibrotic_sequela"}),
    ("Sequelae changes in the left upper lobe.", {"pulmonary_fibrotic_sequela"}),
    ("Bilateral pleural effusion.", {"pleural_effusion"}),
    ("Pleural effusion on the right.", {"pleural_effusion"}),
    ("Mosaic attenuation pattern.", {"mosaic_attenuation_pattern"}),
    ("Peribronchial thickening.", {"peribronchial_thickening"}),
    ("Bronchial wall thickening in the lower lobes.", {"peribronchial_thickening"}),
    ("Bronchiectasis.", {"bronchiectasis"}),
    ("Cylindrical bronchiectatic changes.", {"bronchiectasis"}),
    ("Interlobular septal thickening.", {"interlobular_septal_thickening"}),
    ("Consolidation in the left lower lobe.", {"consolidation"}),
    # several findings in one sentence
    ("Calcified atheromatous plaques are observed in the aorta and coronary arteries.",
     {"arterial_wall_calcification", "coronary_artery_wall_calcification"}),
    ("Fibroatelectatic changes in the lingula.", {"atelectasis", "pulmonary_fibrotic_sequela"}),
    ("Bilateral pleural effusion and cardiomegaly.", {"pleural_effusion", "cardiomegaly"}),
    # negations: pre-cues
    ("No pleural effusion.", set()),
    ("No evidence of pleural or pericardial effusion.", set()),
    ("No pleural or pericardial effusion was detected.", set()),
    ("Without consolidation.", set()),
    ("Ground glass opacities without consolidation.", {"lung_opacity"}),
    ("There is no cardiomegaly.", set()),
    ("Absence of lymphadenopathy.", set()),
    ("Lungs are free of nodules.", set()),
    ("Pleural spaces are free of effusion.", set()),
    ("Negative for pulmonary nodules.", set()),
    ("The lungs are clear, no nodule, mass or consolidation.", set()),
    ("No mass or lymphadenopathy was observed in the mediastinum.", set()),
    ("No lymph node in pathological size and appearance was detected in the mediastinum.", set()),
    ("Neither pleural nor pericardial effusion.", set()),
    ("Resolved consolidation in the right lower lobe.", set()),
    # negations: post-cues
    ("Pleural effusion is not seen.", set()),
    ("Pleural effusion was not observed.", set()),
    ("Pleural effusion is not detected.", set()),
    ("Pericardial effusion-thickening was not observed.", set()),
    ("Hiatal hernia is absent.", set()),
    ("Consolidation has resolved.", set()),
    ("The previously described consolidation has completely disappeared.", set()),
    ("Aortic calcification is not present.", set()),
    # findings that are not the label
    ("Heart size is normal.", set()),
    ("Heart size is not enlarged.", set()),
    ("Heart contour and size are normal.", set()),
    ("Lymph nodes with a short axis of less than 1 cm were observed in the mediastinum.", set()),
    ("Subcutaneous emphysema in the chest wall.", set()),
    ("Thyroid nodule of 1 cm.", set()),
    ("Aortic valve calcification.", set()),
    ("Interatrial septal thickening.", set()),
    ("Mediastinal structures are normal.", set()),
    ("Trachea and main bronchi are open.", set()),
    # scope: negation does not cross terminators or reach backwards
    ("No pleural effusion but there is a pericardial effusion.", {"pericardial_effusion"}),
    ("No pleural effusion; cardiomegaly.", {"cardiomegaly"}),
    ("No pleural effusion. Cardiomegaly.", {"cardiomegaly"}),
    ("There is consolidation in the left lower lobe and no pleural effusion.", {"consolidation"}),
    ("Bilateral pleural effusion is present, pericardial effusion was not observed.", {"pleural_effusion"}),
    ("Pericardial effusion was not observed, however bilateral pleural effusion is present.", {"pleural_effusion"}),
    # pseudo-negations that do not negate
    ("No significant change in the pleural effusion.", {"pleural_effusion"}),
    ("No interval change in the size of the nodule in the right lung.", {"lung_nodule"}),
    ("Partially resolved consolidation.", {"consolidation"}),
    ("Malignancy cannot be excluded in the nodule.", {"lung_nodule"}),
    ("Nodule is not calcified.", {"lung_nodule"}),
    ("Non-calcified nodule in the right upper lobe.", {"lung_nodule"}),
]


@pytest.mark.parametrize("text, expected", CASES, ids=[c[0][:60] for c in CASES])
def test_label_text(text, expected):
    labels = label_text(text)
    assert set(labels) == set(LABEL_COLUMNS)
    assert {k for k, v in labels.items() if v} == expected


def test_label_columns_follow_ct_rate_order():
    assert len(LABEL_COLUMNS) == len(CT_RATE_LABELS) == 18
    assert LABEL_COLUMNS[0] == "medical_material"
    assert LABEL_COLUMNS[13] == "mosaic_attenuation_pattern"


def test_label_reports_joins_columns_and_keeps_index():
    df = pd.DataFrame(
        {
            "findings": ["Bilateral pleural effusion.", None, "No nodule.", "Cardiomegaly."],
            "impression": ["Cardiomegaly.", "Consolidation.", "Normal.", "Cardiomegaly."],
        },
        index=[10, 11, 12, 13],
    )
    out = label_reports(df, ["findings", "impression"])
    assert list(out.columns) == list(LABEL_COLUMNS)
    assert list(out.index) == [10, 11, 12, 13]
    assert out.loc[10, "pleural_effusion"] == 1 and out.loc[10, "cardiomegaly"] == 1
    assert out.loc[11, "consolidation"] == 1 and out.loc[11].sum() == 1
    assert out.loc[12].sum() == 0
    assert out.loc[13, "cardiomegaly"] == 1
    assert set(out.dtypes.astype(str)) == {"int64"}
    # only the impression: the findings' effusion must disappear
    impression_only = label_reports(df, ["impression"])
    assert impression_only.loc[10, "pleural_effusion"] == 0


def test_sentence_boundary_between_columns():
    # a negation at the end of the findings must not reach into the impression
    df = pd.DataFrame({"findings": ["Lungs without"], "impression": ["Consolidation"]})
    assert label_reports(df).loc[0, "consolidation"] == 1


def test_label_reports_empty_and_missing_columns():
    empty = label_reports(pd.DataFrame({"findings": [], "impression": []}))
    assert list(empty.columns) == list(LABEL_COLUMNS) and len(empty) == 0
    with pytest.raises(KeyError):
        label_reports(pd.DataFrame({"impression": ["x"]}), ["findings", "impression"])


def test_label_reports_is_fast_on_repeated_texts():
    import time

    df = pd.DataFrame({"findings": [c[0] for c in CASES] * 200, "impression": ["No pleural effusion."] * len(CASES) * 200})
    start = time.perf_counter()
    out = label_reports(df)
    assert time.perf_counter() - start < 5
    assert len(out) == len(df)
