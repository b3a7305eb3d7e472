import math

import numpy as np
import pandas as pd
import pytest

from generatect_kedro.reports.prompts import (
    AGE_MISSING,
    AGE_OK,
    AGE_UNPARSEABLE,
    AgeParseError,
    age_status,
    build_prompt,
    clean_impression,
    parse_age,
    parse_sex,
)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("058Y", 58),
        ("58", 58),
        ("58Y", 58),
        (" 058Y ", 58),
        ("058y", 58),
        ("104Y", 104),  # the released code turns this into "04"
        ("100", 100),
        ("000Y", 0),
        ("6M", 0),
        ("10W", 0),
        ("3D", 0),
        ("030M", 2),  # months floor to whole years
        ("104W", 2),
        (58, 58),
        (58.0, 58),
        (np.int64(71), 71),
        (None, None),
        (float("nan"), None),
        (pd.NA, None),
        ("", None),
        ("   ", None),
    ],
)
def test_parse_age(raw, expected):
    assert parse_age(raw) == expected


@pytest.mark.parametrize("raw", ["ABC", "-5", "58.5", "58 years", "Y", "1000Y", "58X", -3, 58.5, True])
def test_parse_age_rejects_garbage(raw):
    with pytest.raises(AgeParseError):
        parse_age(raw)
    assert age_status(raw) == (None, AGE_UNPARSEABLE)


def test_age_status():
    assert age_status("058Y") == (58, AGE_OK)
    assert age_status("") == (None, AGE_MISSING)
    assert age_status(math.nan) == (None, AGE_MISSING)


@pytest.mark.parametrize(
    "raw, expected",
    [("M", "male"), ("F", "female"), (" m ", "male"), ("male", "male"), ("FEMALE", "female"),
     ("O", None), ("", None), (None, None), (float("nan"), None), ("X", None)],
)
def test_parse_sex(raw, expected):
    assert parse_sex(raw) == expected


def test_build_prompt_exact_format():
    assert build_prompt(58, "male", "Bilateral pleural effusion.") == "58 years old male: Bilateral pleural effusion."
    assert build_prompt(104, "F", "Normal study.") == "104 years old female: Normal study."


@pytest.mark.parametrize(
    "age, sex, expected",
    [
        (None, "male", "male: Cardiomegaly."),
        (58, None, "58 years old: Cardiomegaly."),
        (None, None, "Cardiomegaly."),
        (0, "female", "0 years old female: Cardiomegaly."),
        (pd.NA, "O", "Cardiomegaly."),
    ],
)
def test_build_prompt_omits_missing_parts(age, sex, expected):
    prompt = build_prompt(age, sex, "Cardiomegaly.")
    assert prompt == expected
    assert "None" not in prompt


def test_build_prompt_strips_released_characters_and_collapses_space():
    impression = 'Findings "compatible" with (COVID-19)\n pneumonia\'s   sequelae.'
    assert clean_impression(impression) == "Findings compatible with COVID-19 pneumonias sequelae."
    assert build_prompt(26, "M", impression) == "26 years old male: Findings compatible with COVID-19 pneumonias sequelae."


@pytest.mark.parametrize("impression", ["", "   ", None, float("nan"), "()"])
def test_build_prompt_rejects_empty_impression(impression):
    with pytest.raises(ValueError):
        build_prompt(58, "male", impression)
