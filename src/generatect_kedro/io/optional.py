"""A catalog entry that may not exist yet: loads a default instead of failing.

Used where a pipeline reads another pipeline's output only for ordering and context, and must also run on
its own (e.g. generation reads the promotion report of the same `kedro run`, but `kedro run --pipelines
generation` with champions promoted earlier by `generatect promote` has no such report), and for optional
tables (the generation prompts CSV, the cohort's grid index), which load as an empty DataFrame.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pandas as pd
from kedro.io import AbstractDataset
from kedro_datasets.pandas import CSVDataset


class OptionalDataset(AbstractDataset):
    """Wraps any dataset; ``load`` returns a copy of ``default`` while the wrapped one does not exist."""

    def __init__(self, dataset: Mapping[str, Any] | AbstractDataset, default: Any = None,
                 metadata: dict[str, Any] | None = None) -> None:
        self._dataset = (dataset if isinstance(dataset, AbstractDataset)
                         else AbstractDataset.from_config("optional_wrapped", dict(dataset)))
        self._default = default
        self.metadata = metadata

    def load(self) -> Any:
        if not self._dataset.exists():
            return copy.deepcopy(self._default)
        return self._dataset.load()

    def save(self, data: Any) -> None:
        self._dataset.save(data)

    def _exists(self) -> bool:
        return self._dataset.exists()

    def _describe(self) -> dict[str, Any]:
        return {"dataset": self._dataset._describe(), "default": self._default}


class OptionalCSVDataset(CSVDataset):
    """`pandas.CSVDataset` whose load gives an empty DataFrame when the file does not exist."""

    def load(self) -> pd.DataFrame:
        if not self._exists():
            return pd.DataFrame()
        return super().load()

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "optional": True}
