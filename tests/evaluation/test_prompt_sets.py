"""Evaluation prompts: labels read from the prompt text, unseen combinations, the shipped phrases."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from generatect_kedro.evaluation.prompt_sets import check_phrases, prompt_labels, unseen_combination_prompts
from generatect_kedro.reports.labeler import LABEL_COLUMNS

CONF = Path(__file__).resolve().parents[2] / "conf"
PHRASES = yaml.safe_load((CONF / "base" / "parameters_evaluation.yml").read_text())["evaluation"]["utility"][
    "unseen"]["phrases"]


def test_prompt_labels_are_what_the_prompt_says():
    y = prompt_labels(["65 years old male: Cardiomegaly. No pleural effusion.",
                       "58 years old female: Bilateral pleural effusion.", "49 years old female: Normal study."])
    col = {c: i for i, c in enumerate(LABEL_COLUMNS)}
    assert y.shape == (3, 18)
    assert y[0, col["cardiomegaly"]] == 1 and y[0, col["pleural_effusion"]] == 0  # negation respected
    assert y[1].sum() == 1 and y[1, col["pleural_effusion"]] == 1
    assert y[2].sum() == 0


def test_every_shipped_phrase_reads_as_its_own_label_and_a_bad_one_is_named():
    assert set(check_phrases(PHRASES)) == set(LABEL_COLUMNS)
    with pytest.raises(ValueError, match=r"phrases\[cardiomegaly\].*pleural_effusion"):
        check_phrases({"cardiomegaly": "Bilateral pleural effusion."})
    with pytest.raises(ValueError, match="unknown label"):
        check_phrases({"heart_big": "Cardiomegaly."})


def test_unseen_combinations_never_co_occur_in_training_and_are_reproducible():
    rng = np.random.default_rng(0)
    train = pd.DataFrame(0, index=range(30), columns=list(LABEL_COLUMNS))
    train.loc[:9, ["cardiomegaly", "pleural_effusion"]] = 1  # seen together
    train.loc[10:19, "emphysema"] = 1
    train.loc[20:, "lung_nodule"] = rng.integers(0, 2, 10)
    people = pd.DataFrame({"age": [60, 70, 55] * 10, "sex": ["male", "female", "male"] * 10})
    phrases = {k: PHRASES[k] for k in ("cardiomegaly", "pleural_effusion", "emphysema", "lung_nodule")}
    table = unseen_combination_prompts(train, people, phrases, size=2, max_prompts=10, seed=3)
    assert len(table) == 5  # 6 pairs minus the one seen in training
    assert "cardiomegaly+pleural_effusion" not in set(table["combination"])
    labels = prompt_labels(table["prompt"].tolist())
    for combo, row in zip(table["combination"], labels):
        wanted = combo.split("+")
        assert {LABEL_COLUMNS[j] for j in np.flatnonzero(row)} == set(wanted)
        assert not train[wanted].astype(bool).all(axis=1).any()
    assert table["prompt"].str.match(r"^\d+ years old (male|female): ").all()
    again = unseen_combination_prompts(train, people, phrases, size=2, max_prompts=10, seed=3)
    pd.testing.assert_frame_equal(table, again)
    assert len(unseen_combination_prompts(train, people, phrases, size=2, max_prompts=2, seed=3)) == 2
