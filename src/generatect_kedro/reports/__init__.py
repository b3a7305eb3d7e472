"""Report text → prompts and the 18 CT-RATE labels."""

from generatect_kedro.reports.labeler import LABEL_COLUMNS, label_reports, label_text
from generatect_kedro.reports.prompts import AgeParseError, age_status, build_prompt, parse_age, parse_sex

__all__ = [
    "LABEL_COLUMNS",
    "AgeParseError",
    "age_status",
    "build_prompt",
    "label_reports",
    "label_text",
    "parse_age",
    "parse_sex",
]
