"""Training and scoring the abnormality classifier with the project's shared trainer.

    data = VolumeLabelDataset(volumes, labels)            # (n, D, H, W) grids in [-1, 1], (n, 18) in {0, 1}
    out = train_classifier(data, ClassifierConfig(), ClassifierTrainingConfig(), trainer_params)
    report = evaluate_classifier(out.model, test_volumes, test_labels, not_trained=out.not_trained)

The loss is BCE with a per-label `pos_weight` = negatives / positives of the *training* set, capped at
`max_pos_weight`: CT-RATE labels are rare (prevalence 2–30 %) and an unweighted loss learns "always
negative" first. A label with no positive (or no negative) training case gets weight 1 and is reported in
`not_trained`, so that the metrics mark it not evaluable instead of averaging in a label the model never
saw. The supplementary experiments train the same classifier on real, real + synthetic and synthetic sets;
those are three calls of `train_classifier` with different datasets and the same configs and seed.

Determinism: the weights are initialised from `trainer.seed` under a forked RNG, and the trainer seeds the
data order and dropout from the same seed, so a seed fixes the result on a given device and torch build.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from generatect_kedro.evaluation.classification_metrics import ClassificationReport, classification_report
from generatect_kedro.labels import CT_RATE_LABELS
from generatect_kedro.models.classifier import AbnormalityClassifier, ClassifierConfig
from generatect_kedro.training import Part, Trainer, TrainerConfig, TrainingResult, TrainingTask

__all__ = ["ClassifierTask", "ClassifierTrainingConfig", "ClassifierTrainingOutput", "VolumeLabelDataset",
           "evaluate_classifier", "label_weights", "predict_probabilities", "train_classifier"]

PART = "classifier"


@dataclass(frozen=True)
class ClassifierTrainingConfig:
    """Optimisation of the classifier (the trainer block sets steps, batch size, seed, device).

    The paper trained CT-Net with SGD (lr 1e-3, weight decay 1e-7, 15 epochs, batch 12); AdamW is the
    default here because it converges in far fewer steps on small cohorts.
    """

    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1.0e-3
    weight_decay: float = 1.0e-4
    momentum: float = 0.9  # sgd only
    max_pos_weight: float = 20.0  # cap on negatives/positives, so a 1-in-500 label cannot dominate the loss
    label_names: tuple[str, ...] = CT_RATE_LABELS

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_names", tuple(self.label_names))
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be adamw or sgd, got {self.optimizer!r}")
        if self.lr <= 0 or self.weight_decay < 0 or self.max_pos_weight < 1:
            raise ValueError("need lr > 0, weight_decay >= 0 and max_pos_weight >= 1")

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> ClassifierTrainingConfig:
        params = dict(params or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"classifier training: unknown key(s) {', '.join(unknown)}; known: {sorted(known)}")
        return cls(**params)

    def make_optimizer(self, module: torch.nn.Module) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(module.parameters(), lr=self.lr, momentum=self.momentum,
                                   weight_decay=self.weight_decay)
        return torch.optim.AdamW(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class VolumeLabelDataset:
    """In-memory map-style dataset: item i → (volume (1, D, H, W) float32, labels (L,) float32).

    `volumes`: (n, D, H, W) or (n, 1, D, H, W) grids in [-1, 1]; `labels`: (n, L) in {0, 1}. `labels` stays
    readable as a whole (`train_classifier` computes the training prevalence from it).
    """

    def __init__(self, volumes: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> None:
        volumes = torch.as_tensor(np.asarray(volumes) if not isinstance(volumes, Tensor) else volumes).float()
        if volumes.ndim == 4:
            volumes = volumes.unsqueeze(1)  # (n, D, H, W) → (n, 1, D, H, W)
        labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).float()
        if volumes.ndim != 5 or labels.ndim != 2 or len(volumes) != len(labels):
            raise ValueError(f"expected volumes (n, [1,] D, H, W) and labels (n, L), got {tuple(volumes.shape)} "
                             f"and {tuple(labels.shape)}")
        self.volumes, self.labels = volumes.contiguous(), labels.contiguous()

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.volumes[index], self.labels[index]


def label_weights(labels: np.ndarray | Tensor, label_names: Sequence[str], max_pos_weight: float
                  ) -> tuple[Tensor, dict[str, str]]:
    """Per-label BCE `pos_weight` (negatives/positives, capped) and the labels that cannot be learnt."""
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float64)
    if y.ndim != 2 or y.shape[1] != len(label_names):
        raise ValueError(f"labels must be (n, {len(label_names)}), got {tuple(y.shape)}")
    positives = y.sum(0)
    negatives = len(y) - positives
    weights = torch.ones(len(label_names), dtype=torch.float64)
    not_trained: dict[str, str] = {}
    for j, label in enumerate(label_names):
        if positives[j] == 0:
            not_trained[label] = "no positive case in the training set"
        elif negatives[j] == 0:
            not_trained[label] = "no negative case in the training set"
        else:
            weights[j] = min(float(negatives[j] / positives[j]), max_pos_weight)
    return weights.float(), not_trained


class ClassifierTask(TrainingTask):
    """One part, `classifier`; batches are (volumes (b, 1, D, H, W), labels (b, L)).

    With a validation set, `validate` reports the mean AUROC/AP over its evaluable labels.
    """

    def __init__(self, model: AbnormalityClassifier, pos_weight: Tensor, training: ClassifierTrainingConfig,
                 validation: VolumeLabelDataset | None = None, not_trained: Mapping[str, str] | None = None,
                 batch_size: int = 8) -> None:
        super().__init__()
        self.model = model
        self.pos_weight = pos_weight
        self.training = training
        self.validation = validation
        self.not_trained = dict(not_trained or {})
        self.batch_size = batch_size

    def parts(self) -> list[Part]:
        return [Part(PART, self.model, self.training.make_optimizer)]

    def loss(self, part_name: str, batch: Any, step: int, cache: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        volumes, labels = batch
        logits = self.forward_module(PART)(volumes)
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float(),
                                                  pos_weight=self.pos_weight.to(logits.device))
        return loss, {}

    def validate(self, step: int) -> dict[str, float]:
        if self.validation is None:
            return {}
        report = evaluate_classifier(self.model, self.validation.volumes, self.validation.labels,
                                     self.training.label_names, not_trained=self.not_trained,
                                     batch_size=self.batch_size)
        return {key: value for key, value in report.summary().items() if "/" not in key and np.isfinite(value)}


@dataclass
class ClassifierTrainingOutput:
    """The trained model (eval mode), the trainer's result and what the weighting decided per label."""

    model: AbnormalityClassifier
    result: TrainingResult
    pos_weight: dict[str, float]
    not_trained: dict[str, str]  # label → why it could not be learnt; pass to `evaluate_classifier`


def train_classifier(dataset: VolumeLabelDataset, model_config: ClassifierConfig | Mapping[str, Any],
                     training: ClassifierTrainingConfig | Mapping[str, Any] | None,
                     trainer: TrainerConfig | Mapping[str, Any], *, validation: VolumeLabelDataset | None = None,
                     name: str = "classifier") -> ClassifierTrainingOutput:
    """Train a fresh `AbnormalityClassifier` on `dataset` with the shared trainer; see the module docstring."""
    model_config = (model_config if isinstance(model_config, ClassifierConfig)
                    else ClassifierConfig.from_params(model_config))
    training = (training if isinstance(training, ClassifierTrainingConfig)
                else ClassifierTrainingConfig.from_params(training))
    trainer = trainer if isinstance(trainer, TrainerConfig) else TrainerConfig.from_params(trainer)
    if model_config.num_labels != len(training.label_names):
        raise ValueError(f"model has {model_config.num_labels} outputs but {len(training.label_names)} label names")
    labels = getattr(dataset, "labels", None)
    if labels is None:  # any map-style dataset of (volume, labels) works; the labels are read once here
        labels = torch.stack([torch.as_tensor(dataset[i][1]) for i in range(len(dataset))])
    pos_weight, not_trained = label_weights(labels, training.label_names, training.max_pos_weight)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(trainer.seed)
        model = AbnormalityClassifier(model_config)
    task = ClassifierTask(model, pos_weight, training, validation, not_trained, batch_size=trainer.batch_size)
    result = Trainer(trainer, name=name).fit(task, dataset)
    model.eval()
    return ClassifierTrainingOutput(model=model, result=result, not_trained=not_trained,
                                    pos_weight=dict(zip(training.label_names, pos_weight.tolist())))


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, volumes: np.ndarray | Tensor | Iterable[np.ndarray | Tensor],
                          batch_size: int = 8) -> np.ndarray:
    """Sigmoid probabilities (n, L) for stacked (n, [1,] D, H, W) grids or an iterable of (D, H, W) grids,
    batch by batch (an iterable is never stacked whole), in eval mode on the model's device."""
    from generatect_kedro.evaluation.frechet import iter_batches

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = [torch.sigmoid(model(batch.unsqueeze(1).to(device)).float()).cpu()
               for batch in iter_batches(volumes, batch_size)]  # (b, D, H, W) → (b, 1, D, H, W)
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def evaluate_classifier(model: torch.nn.Module, volumes: np.ndarray | Tensor, labels: np.ndarray | Tensor,
                        label_names: Sequence[str] = CT_RATE_LABELS, *, not_trained: Mapping[str, str] | None = None,
                        batch_size: int = 8) -> ClassificationReport:
    """Per-label AUROC/AP of the model on a labelled set (`classification_report` on its probabilities)."""
    scores = predict_probabilities(model, volumes, batch_size)
    return classification_report(np.asarray(labels), scores, label_names, not_trained=not_trained)
