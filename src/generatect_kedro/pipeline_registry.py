"""Project pipelines.

`__default__` is the DICOM path end to end. The CT-RATE layout has its own ingestion pipeline producing
the same datasets, so `kedro run --pipelines ctrate` runs that path instead (the two ingestions cannot
share one run: they write the same outputs).
"""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

from generatect_kedro.pipelines.ingestion import create_ctrate_pipeline

# Downstream of ingestion, in dependency order (later issues append their stages here).
DOWNSTREAM = ("data_quality", "split", "preprocessing", "ctvit", "transformer", "superres", "evaluation", "promotion",
              "generation")


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    pipelines["ctrate_ingestion"] = create_ctrate_pipeline()
    downstream = sum((pipelines[name] for name in DOWNSTREAM if name in pipelines), Pipeline([]))
    pipelines["__default__"] = pipelines.get("ingestion", Pipeline([])) + downstream
    pipelines["ctrate"] = pipelines["ctrate_ingestion"] + downstream
    return pipelines
