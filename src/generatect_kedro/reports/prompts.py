"""The text prompt of a volume: `"{age} years old {sex}: {impression}"`, one function for training and generation.

The released GenerateCT code builds the prompt as ``f"{age} years old {sex}: {impression}"`` with
``age = PatientAge[:-1].zfill(3)[1:]`` (so "104Y" becomes "04"), writes the literal "None" for missing
values, and strips the characters ``" ' ( )`` from the impression. We keep the format and the stripped
characters (prompts stay in the distribution the released checkpoints were trained on) and fix the rest:

* ages are parsed as DICOM Age Strings (``nnnY``/``nnnM``/``nnnW``/``nnnD``) or plain numbers, so 104 stays
  104, and infants' month/week/day ages become whole years (``6M`` → 0, ``30M`` → 2);
* a missing age or sex is **omitted** rather than written as "None":
  ``"58 years old male: …"``, ``"58 years old: …"`` (sex missing), ``"male: …"`` (age missing),
  ``"…"`` (both missing);
* whitespace (including newlines from report exports) is collapsed to single spaces.

Garbage ages ("ABC", "-5") raise `AgeParseError`; `age_status` turns that into the quarantine reason
``unparseable_age`` without raising.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

#: Characters the released code strips from impressions (`"`, `'`, `(`, `)`); kept for prompt compatibility.
RELEASED_STRIP_CHARS = "\"'()"

AGE_OK = "ok"
AGE_MISSING = "missing"
AGE_UNPARSEABLE = "unparseable_age"

_AGE_RE = re.compile(r"^(\d{1,3})(?:\.0+)?\s*([YMWD])?$")
_UNITS_PER_YEAR = {"Y": None, "M": 12, "W": 52, "D": 365}  # units per year, for floor division
_SEX = {
    "M": "male",
    "MALE": "male",
    "MAN": "male",
    "F": "female",
    "FEMALE": "female",
    "WOMAN": "female",
}
_SPACE_RE = re.compile(r"\s+")
_STRIP_TABLE = str.maketrans("", "", RELEASED_STRIP_CHARS)


class AgeParseError(ValueError):
    """An age value is present but cannot be read as an age (callers quarantine it as `unparseable_age`)."""


def _is_missing(raw: Any) -> bool:
    if raw is None:
        return True
    if isinstance(raw, float) and math.isnan(raw):
        return True
    try:  # pandas.NA, NaT, numpy NaN
        return bool(pd.isna(raw))
    except (TypeError, ValueError):
        return False


def parse_age(raw: Any) -> int | None:
    """Age in whole years from a DICOM Age String or a number; None when missing.

    Accepts "058Y", "58", "58Y", " 058Y ", 58, 58.0, "6M"/"10W"/"3D" (→ whole years, floor) and ages ≥ 100.
    Raises `AgeParseError` for anything else ("ABC", "-5", "58.5", "1000Y").
    """
    if _is_missing(raw):
        return None
    if isinstance(raw, bool):
        raise AgeParseError("a boolean is not an age")
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = float(raw)
        if value < 0 or not value.is_integer() or value > 999:
            raise AgeParseError("numeric age is not a whole number of years in [0, 999]")
        return int(value)
    text = str(raw).strip().upper()
    if not text:
        return None
    match = _AGE_RE.match(text)
    if match is None:
        raise AgeParseError("age is not of the form nnn[Y|M|W|D]")
    number, unit = int(match.group(1)), match.group(2) or "Y"
    per_year = _UNITS_PER_YEAR[unit]
    return number if per_year is None else number // per_year


def age_status(raw: Any) -> tuple[int | None, str]:
    """(age, status) without raising: status is `ok`, `missing` or `unparseable_age`."""
    try:
        age = parse_age(raw)
    except AgeParseError:
        return None, AGE_UNPARSEABLE
    return age, AGE_OK if age is not None else AGE_MISSING


def parse_sex(raw: Any) -> str | None:
    """"M"/"male"/… → "male", "F"/"female"/… → "female"; "O", empty, missing or unknown → None."""
    if _is_missing(raw):
        return None
    return _SEX.get(str(raw).strip().upper())


def clean_impression(text: Any) -> str:
    """The impression as the prompt uses it: released characters stripped, whitespace collapsed."""
    if _is_missing(text):
        return ""
    return _SPACE_RE.sub(" ", str(text).translate(_STRIP_TABLE)).strip()


def build_prompt(age: int | None, sex: str | None, impression: Any) -> str:
    """`"{age} years old {sex}: {impression}"`; missing age/sex are omitted (see module docstring).

    `sex` is "male"/"female" (or a raw code, normalised with `parse_sex`); an empty impression is an error
    because such rows are quarantined (`empty_impression`) and must never become training prompts.
    """
    body = clean_impression(impression)
    if not body:
        raise ValueError("cannot build a prompt from an empty impression")
    if age is not None and not _is_missing(age):
        age_value = int(age)
        if age_value < 0:
            raise ValueError("age must be non-negative")
    else:
        age_value = None
    sex_word = sex if sex in ("male", "female") else parse_sex(sex)
    head = " ".join(
        part
        for part in (f"{age_value} years old" if age_value is not None else None, sex_word)
        if part is not None
    )
    return f"{head}: {body}" if head else body
