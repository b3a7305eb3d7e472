"""Evaluation of generated CT (issue #7): the abnormality classifier's training and metrics, Fréchet
distances (slice FID, volume FVD) with a named feature network, text alignment, HU sanity, the downstream
utility experiment and the report.

Library code; the Kedro `evaluation` pipeline (pipelines/evaluation) wires it to the real and generated cohorts.
"""

from generatect_kedro.evaluation.alignment import AlignmentReport, text_alignment
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
from generatect_kedro.evaluation.utility import run_utility_experiment
from generatect_kedro.evaluation.volume_sets import VolumeSet, predict_scores

__all__ = [
    "AlignmentReport",
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
    "VolumeSet",
    "classification_report",
    "evaluate_classifier",
    "fid_2d",
    "frechet_distance",
    "frechet_distance_from_features",
    "fvd_3d",
    "hu_sanity",
    "predict_probabilities",
    "predict_scores",
    "run_utility_experiment",
    "text_alignment",
    "train_classifier",
]
