"""An optional CSV input: a `pandas.CSVDataset` that loads an empty table when its file is absent.

The generation pipeline reads the prompts table and the cohort's grid geometry this way: a fresh checkout
(or a site that only has the registered models) falls back to the prompts/spacing in the parameters instead
of failing to load a file it does not need.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from kedro_datasets.pandas import CSVDataset


class OptionalCSVDataset(CSVDataset):
    """`pandas.CSVDataset` whose load gives an empty DataFrame when the file does not exist."""

    def load(self) -> pd.DataFrame:
        if not self._exists():
            return pd.DataFrame()
        return super().load()

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "optional": True}
