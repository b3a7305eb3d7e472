"""Text alignment: does a generated volume show what its prompt asked for?

The paper's CLIP score needs a CT-CLIP nobody can load offline; the question behind it is answered here by
the abnormality classifier trained on real volumes. Each generated volume is scored by the classifier and
the scores are compared with the labels *of the prompt that produced it* (the report labeler run on the
prompt text): per-label AUROC/AP, as for a real test set. The same figure on real volumes, scored against
the labels of their own prompts, is the ceiling: a generator cannot be expected to be more recognisable than
the real data the classifier learnt from.

Means are compared over the labels evaluable in *both* sets (positives and negatives present, and learnt by
the classifier), so a label only the real set can score does not make the generator look worse or better.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from generatect_kedro.evaluation.classification_metrics import ClassificationReport, classification_report

__all__ = ["AlignmentReport", "text_alignment"]


@dataclass
class AlignmentReport:
    """Generated-vs-prompt and real-vs-prompt classification, and the means over their shared labels."""

    generated: ClassificationReport
    real: ClassificationReport
    common_labels: list[str]
    mean_auroc_generated: float  # over `common_labels`; NaN when there is none
    mean_auroc_real: float

    @property
    def auroc_ratio(self) -> float:
        """Generated / real mean AUROC above chance: 1 = as recognisable as real, 0 = chance."""
        above_real = self.mean_auroc_real - 0.5
        if not np.isfinite(above_real) or above_real <= 0:
            return float("nan")
        return float((self.mean_auroc_generated - 0.5) / above_real)

    def summary(self, prefix: str = "text_alignment/") -> dict[str, float]:
        out = {f"{prefix}mean_auroc_generated": self.mean_auroc_generated,
               f"{prefix}mean_auroc_real": self.mean_auroc_real,
               f"{prefix}auroc_ratio": self.auroc_ratio,
               f"{prefix}common_labels": float(len(self.common_labels))}
        generated = self.generated.table.set_index("label")
        for label in self.common_labels:
            out[f"{prefix}auroc/{label}"] = float(generated.at[label, "auroc"])
        return out


def text_alignment(generated_scores: np.ndarray, generated_prompt_labels: np.ndarray, real_scores: np.ndarray,
                   real_prompt_labels: np.ndarray, label_names: Sequence[str], *,
                   not_trained: Mapping[str, str] | None = None) -> AlignmentReport:
    """Per-label AUROC of the classifier's scores against prompt labels, generated and real (see module)."""
    generated = classification_report(generated_prompt_labels, generated_scores, label_names,
                                      not_trained=not_trained)
    real = classification_report(real_prompt_labels, real_scores, label_names, not_trained=not_trained)
    g, r = generated.table.set_index("label"), real.table.set_index("label")
    common = [label for label in label_names if g.at[label, "evaluable"] and r.at[label, "evaluable"]]
    return AlignmentReport(
        generated=generated, real=real, common_labels=common,
        mean_auroc_generated=float(g.loc[common, "auroc"].mean()) if common else float("nan"),
        mean_auroc_real=float(r.loc[common, "auroc"].mean()) if common else float("nan"))
