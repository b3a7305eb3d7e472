"""The prompts evaluation generates from, and the labels each prompt asks for.

* **test** prompts: those of the real evaluation volumes (fidelity and alignment compare like with like);
* **utility** prompts: those of the training reports, `multiple` volumes each (supplementary Table 1);
* **unseen** prompts: label combinations that no training report has, written from one sentence per label
  (supplementary Table 2), each with an age and sex drawn from the training cohort.

A prompt's labels are the report labeler's reading of the prompt text itself (`reports.labeler.label_text`),
never the labels of the report it came from: the impression in a prompt may not mention what only the
findings section says, and a generated volume can only be asked to show what its prompt says.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from generatect_kedro.reports.labeler import LABEL_COLUMNS, label_text
from generatect_kedro.reports.prompts import build_prompt

__all__ = ["check_phrases", "prompt_labels", "unseen_combination_prompts"]


def prompt_labels(prompts: Sequence[str]) -> np.ndarray:
    """(n, 18) 0/1 labels the labeler reads in each prompt (`LABEL_COLUMNS` order)."""
    cache: dict[str, list[int]] = {}
    rows = []
    for prompt in prompts:
        if prompt not in cache:
            found = label_text(prompt)
            cache[prompt] = [found[c] for c in LABEL_COLUMNS]
        rows.append(cache[prompt])
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(LABEL_COLUMNS))


def check_phrases(phrases: Mapping[str, str]) -> dict[str, str]:
    """Each phrase must make the labeler read exactly its own label; otherwise an error naming it."""
    unknown = sorted(set(phrases) - set(LABEL_COLUMNS))
    if unknown:
        raise ValueError(f"evaluation.unseen.phrases: unknown label(s) {unknown}; labels are {list(LABEL_COLUMNS)}")
    for label, phrase in phrases.items():
        read = sorted(c for c, v in label_text(phrase).items() if v)
        if read != [label]:
            raise ValueError(f"evaluation.unseen.phrases[{label}] = {phrase!r} is read by the report labeler as "
                             f"{read or 'no finding'}, not [{label!r}]; reword it")
    return dict(phrases)


def unseen_combination_prompts(train_labels: pd.DataFrame, train_demographics: pd.DataFrame,
                               phrases: Mapping[str, str], *, size: int = 2, max_prompts: int = 16,
                               seed: int = 0) -> pd.DataFrame:
    """Prompts for `size`-label combinations that never co-occur in `train_labels` (columns `LABEL_COLUMNS`).

    Only labels with a phrase take part. Combinations are shuffled with `seed` and the first `max_prompts`
    kept; each gets the age and sex of a training row drawn with the same seed. Columns: prompt, combination.
    """
    phrases = check_phrases(phrases)
    if size < 2:
        raise ValueError("unseen combinations need size >= 2")
    present = train_labels[[c for c in phrases if c in train_labels.columns]].astype(bool)
    combos = [combo for combo in itertools.combinations(sorted(present.columns), size)
              if not present[list(combo)].all(axis=1).any()]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(combos))[:max_prompts]
    rows = []
    for index in order:
        combo = combos[int(index)]
        person = train_demographics.iloc[int(rng.integers(len(train_demographics)))] if len(train_demographics) \
            else pd.Series(dtype=object)
        age = person.get("age")
        rows.append({"prompt": build_prompt(None if pd.isna(age) else int(age), person.get("sex"),
                                            " ".join(phrases[label] for label in combo)),
                     "combination": "+".join(combo)})
    return pd.DataFrame(rows, columns=["prompt", "combination"])
