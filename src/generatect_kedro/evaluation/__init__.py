"""Evaluation of generated CT (issue #7): the abnormality classifier's training and metrics, Fréchet
distances (slice FID, volume FVD) with a named feature network, and HU sanity of generated volumes.

Library code only; the Kedro `evaluation` pipeline wires it to the generated and real cohorts.
"""

from generatect_kedro.evaluation.classification_metrics import ClassificationReport, classification_report
from generatect_kedro.evaluation.classifier_training import (
    ClassifierTrainingConfig,
    ClassifierTrainingOutput,
    VolumeLabelDataset,
    evaluate_classifier,
    predict_probabilities,
    train_classifier,
)
from generatect_kedro.evaluation.frechet import (
    ClassifierFeatures,
    FrechetResult,
    SliceSelection,
    TorchScriptI3D,
    TorchScriptInception,
    fid_2d,
    frechet_distance,
    frechet_distance_from_features,
    fvd_3d,
)
from generatect_kedro.evaluation.hu_sanity import HUSanityConfig, HUSanityReport, hu_sanity

__all__ = [
    "ClassificationReport",
    "ClassifierFeatures",
    "ClassifierTrainingConfig",
    "ClassifierTrainingOutput",
    "FrechetResult",
    "HUSanityConfig",
    "HUSanityReport",
    "SliceSelection",
    "TorchScriptI3D",
    "TorchScriptInception",
    "VolumeLabelDataset",
    "classification_report",
    "evaluate_classifier",
    "fid_2d",
    "frechet_distance",
    "frechet_distance_from_features",
    "fvd_3d",
    "hu_sanity",
    "predict_probabilities",
    "train_classifier",
]
