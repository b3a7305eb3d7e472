"""Evaluation nodes: which volumes and prompts, the real-data classifier, generation, and the measurements.

Parameters: ``params:evaluation`` (conf/base/parameters_evaluation.yml). The report, the metrics file DVC
shows, and the `metric.*` tags the promotion gates read are made in `reporting.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import torch

from generatect_kedro.evaluation.classification_metrics import classification_report
from generatect_kedro.evaluation.classifier_training import train_classifier
from generatect_kedro.evaluation.prompt_sets import unseen_combination_prompts
from generatect_kedro.evaluation.volume_sets import VolumeSet, predict_scores
from generatect_kedro.io.safetensors_model import cpu_state_dict
from generatect_kedro.labels import CT_RATE_LABELS
from generatect_kedro.models.classifier import AbnormalityClassifier, ClassifierConfig
from generatect_kedro.pipelines.evaluation import measures
from generatect_kedro.pipelines.evaluation.generated import (
    CHALLENGER,
    generate_for_evaluation,
    generated_set,
    hu_window_of,
    real_set,
)
from generatect_kedro.reports.labeler import LABEL_COLUMNS
from generatect_kedro.utils.plain import plain

LOG = logging.getLogger(__name__)

__all__ = ["build_evaluation_prompts", "evaluate_generated", "generate_evaluation_volumes",
           "run_utility_experiment_node", "select_evaluation_cases", "train_evaluation_classifier"]

CASE_COLUMNS = ["volume_id", "split", "role", "age", "sex", "prompt", *LABEL_COLUMNS]
PROMPT_COLUMNS = ["prompt_row", "set", "case", "prompt", "seed", "count"]


def _labels(params: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(columns, names) of the evaluated labels: `evaluation.labels` (snake_case columns), or all 18."""
    chosen = params.get("labels")
    if not chosen:
        return list(LABEL_COLUMNS), list(CT_RATE_LABELS)
    unknown = sorted(set(chosen) - set(LABEL_COLUMNS))
    if unknown:
        raise ValueError(f"evaluation.labels: unknown label(s) {unknown}; labels are {list(LABEL_COLUMNS)}")
    columns = [c for c in LABEL_COLUMNS if c in set(chosen)]
    return columns, [CT_RATE_LABELS[LABEL_COLUMNS.index(c)] for c in columns]


def _sets(params: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments shared by every volume set: evaluated label columns, classifier input shape, caching."""
    return {"columns": _labels(params)[0], "shape": _shape(params), "cache": bool(params.get("cache_volumes", False))}


def _shape(params: Mapping[str, Any]) -> tuple[int, int, int] | None:
    shape = (params.get("classifier") or {}).get("input_shape")
    return tuple(int(s) for s in shape) if shape else None


def _cap(frame: pd.DataFrame, limit: Any, seed: int) -> pd.DataFrame:
    """At most `limit` rows, drawn reproducibly (null = all)."""
    if limit is None or len(frame) <= int(limit):
        return frame
    return frame.sample(n=int(limit), random_state=seed).sort_values("volume_id")


def select_evaluation_cases(cohort: pd.DataFrame, splits: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """Real volumes of the evaluation: `train_splits` train the classifier, `test_splits` test everything."""
    train_splits, test_splits = list(params.get("train_splits", ["train"])), list(params.get("test_splits", ["test"]))
    overlap = sorted(set(train_splits) & set(test_splits))
    if overlap:
        raise ValueError(f"evaluation: split(s) {overlap} are both train_splits and test_splits")
    joined = cohort.merge(splits[["volume_id", "split"]], on="volume_id", how="inner")
    seed = int(params.get("seed", 0))
    train = _cap(joined[joined["split"].isin(train_splits)].sort_values("volume_id"), params.get("max_train_volumes"),
                 seed).assign(role="train")
    test = _cap(joined[joined["split"].isin(test_splits)].sort_values("volume_id"), params.get("max_test_volumes"),
                seed).assign(role="test")
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"evaluation needs real volumes in train_splits {train_splits} ({len(train)} found) and "
                         f"test_splits {test_splits} ({len(test)} found)")
    cases = pd.concat([train, test], ignore_index=True)
    for column in LABEL_COLUMNS:
        cases[column] = cases[column].fillna(0).astype(int) if column in cases else 0
    LOG.info("evaluation: %d real training volumes (%s), %d real test volumes (%s)", len(train),
             "+".join(train_splits), len(test), "+".join(test_splits))
    return cases[CASE_COLUMNS].reset_index(drop=True)


def utility_training_cases(cases: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """The real training volumes of the utility experiment: all, or `utility.max_real_volumes` of them (every
    arm, synthetic ones included, is sized from this set, so the cap bounds the generation the experiment needs)."""
    train = cases[cases.role == "train"].sort_values("volume_id")
    return _cap(train, (params.get("utility") or {}).get("max_real_volumes"), int(params.get("seed", 0)))


def build_evaluation_prompts(cases: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """Test prompts, the training reports' prompts (utility) and unseen label combinations (see prompt_sets)."""
    seed = int(params.get("seed", 0))
    per_test = int(params.get("generated_per_test_prompt", 1))
    frames = [pd.DataFrame({"set": "test", "case": cases.loc[cases.role == "test", "volume_id"],
                            "prompt": cases.loc[cases.role == "test", "prompt"], "count": per_test})]
    utility = dict(params.get("utility") or {})
    train = cases[cases.role == "train"]
    if utility.get("enabled", True):
        multiple = int(utility.get("synthetic_multiple", 1))
        chosen = utility_training_cases(cases, params)
        frames.append(pd.DataFrame({"set": "utility", "case": chosen["volume_id"], "prompt": chosen["prompt"],
                                    "count": multiple}))
    unseen = dict(utility.get("unseen") or {})
    if utility.get("enabled", True) and unseen.get("enabled", False):
        columns = _labels(params)[0]
        phrases = {k: v for k, v in dict(unseen.get("phrases") or {}).items() if k in columns}
        combos = unseen_combination_prompts(train[list(LABEL_COLUMNS)], train[["age", "sex"]],
                                            phrases, size=int(unseen.get("size", 2)),
                                            max_prompts=int(unseen.get("max_prompts", 16)), seed=seed)
        frames.append(pd.DataFrame({"set": "unseen", "case": combos["combination"], "prompt": combos["prompt"],
                                    "count": int(unseen.get("per_combination", 1))}))
    table = pd.concat(frames, ignore_index=True)
    table.insert(0, "prompt_row", range(len(table)))
    table["seed"] = seed + 1000 * table["prompt_row"]  # each row's volumes use seed, seed + 1, …
    return table[PROMPT_COLUMNS]


def _trainer_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return dict((params.get("classifier") or {}).get("trainer") or {})


def _classifier_config(params: Mapping[str, Any]) -> ClassifierConfig:
    model = dict((params.get("classifier") or {}).get("model") or {})
    return ClassifierConfig.from_params({**model, "num_labels": len(_labels(params)[1])})


def _train(dataset: VolumeSet, params: Mapping[str, Any], name: str):
    training = {**dict((params.get("classifier") or {}).get("training") or {}), "label_names": _labels(params)[1]}
    return train_classifier(dataset, _classifier_config(params), training, _trainer_params(params), name=name)


def train_evaluation_classifier(cases: pd.DataFrame, grids_fullres: Mapping[str, Callable[[], Any]],
                                params: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The real-data classifier: trained on the real training cases, scored on the real test cases."""
    sets = _sets(params)
    train = real_set(cases[cases.role == "train"], grids_fullres, **sets)
    test = real_set(cases[cases.role == "test"], grids_fullres, **sets)
    out = _train(train, params, "evaluation_classifier")
    scores = predict_scores(out.model, test)
    report = classification_report(test.labels, scores, _labels(params)[1], not_trained=out.not_trained)
    LOG.info("evaluation classifier on %d real test volumes: mean AUROC %.3f over %d labels", len(test),
             report.mean_auroc, report.evaluable_labels)
    history = [m.get("train/classifier/loss") for _, m in out.result.history]
    summary = {"model": plain(dict((params.get("classifier") or {}).get("model") or {})), "labels": _labels(params)[1],
               "train_volumes": len(train), "test_volumes": len(test), "input_shape": list(train.grid(0).shape),
               "not_trained": out.not_trained, "pos_weight": out.pos_weight,
               "loss_first": next((h for h in history if h is not None), None),
               "loss_last": next((h for h in reversed(history) if h is not None), None),
               "mean_auroc": report.mean_auroc, "mean_average_precision": report.mean_average_precision,
               "evaluable_labels": report.evaluable_labels, "table": report.table.to_dict("records")}
    weights = cpu_state_dict(out.model)
    return weights, plain(summary)


def _load_classifier(weights: Mapping[str, torch.Tensor], params: Mapping[str, Any]) -> AbnormalityClassifier:
    model = AbnormalityClassifier(_classifier_config(params))
    model.load_state_dict(dict(weights))
    return model.eval()


def generate_evaluation_volumes(prompts: pd.DataFrame, transformer_model_version: Mapping[str, Any],
                                superres_model_version: Mapping[str, Any], geometry_table: pd.DataFrame,
                                params: Mapping[str, Any], generation_params: Mapping[str, Any],
                                transformer_params: Mapping[str, Any]) -> pd.DataFrame:
    """Volumes for every prompt row with the challenger, and for the test rows with the champion (if any)."""
    from generatect_kedro.pipelines.generation.nodes import _text_encoder_settings

    table, skipped = generate_for_evaluation(prompts, transformer_model_version, superres_model_version,
                                             geometry_table, params, generation_params,
                                             _text_encoder_settings(generation_params, transformer_params),
                                             project_path=Path.cwd())
    for role, why in skipped.items():
        LOG.info("evaluation: %s not generated: %s", role, why)
    return table


def evaluate_generated(generated: pd.DataFrame, prompts: pd.DataFrame, cases: pd.DataFrame,
                       grids_fullres: Mapping[str, Callable[[], Any]], classifier_weights: Mapping[str, torch.Tensor],
                       classifier_summary: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Per role (challenger, champion): Fréchet distances, text alignment and HU sanity on the test prompts."""
    model = _load_classifier(classifier_weights, params)
    sets = _sets(params)
    window = hu_window_of(grids_fullres)
    test_cases = cases[cases.role == "test"]
    real = real_set(test_cases, grids_fullres, labels="prompt", **sets)
    real_scores = predict_scores(model, real)
    not_trained = dict(classifier_summary.get("not_trained") or {})
    out: dict[str, Any] = {"hu_window": list(window), "real_test_volumes": len(real), "roles": {}}
    for role, part in generated[generated["set"] == "test"].groupby("role", sort=False):
        volumes = generated_set(part, prompts, window, **sets)
        out["roles"][role] = measures.measure_role(model, real, real_scores, volumes, window, not_trained,
                                                   _labels(params)[1], params)
        out["roles"][role]["versions"] = {"transformer": str(part["transformer_version"].iloc[0]),
                                          "superres": str(part["superres_version"].iloc[0])}
    return plain(out)


def run_utility_experiment_node(generated: pd.DataFrame, prompts: pd.DataFrame, cases: pd.DataFrame,
                                grids_fullres: Mapping[str, Callable[[], Any]],
                                classifier_weights: Mapping[str, torch.Tensor], classifier_summary: Mapping[str, Any],
                                params: Mapping[str, Any]) -> pd.DataFrame:
    """Supplementary Tables 1–2: classifiers trained on real / real_plus_synthetic / synthetic (/ real_plus_unseen)."""
    from generatect_kedro.evaluation.utility import ARM_COLUMNS, run_utility_experiment

    utility = dict(params.get("utility") or {})
    if not utility.get("enabled", True):
        return pd.DataFrame(columns=list(ARM_COLUMNS))
    sets = _sets(params)
    window = hu_window_of(grids_fullres)
    chosen = utility_training_cases(cases, params)
    real_train = real_set(chosen, grids_fullres, **sets)
    test = real_set(cases[cases.role == "test"], grids_fullres, **sets)
    mine = generated[generated["role"] == CHALLENGER]
    synthetic = generated_set(mine[mine["set"] == "utility"], prompts, window, **sets)
    unseen = generated_set(mine[mine["set"] == "unseen"], prompts, window, **sets)
    # real + synthetic: an equal number of synthetic volumes, one per training prompt where possible
    first = mine[mine["set"] == "utility"].groupby("prompt_row", sort=False).head(1).index
    equal = generated_set(mine.loc[first].head(len(real_train)), prompts, window, **sets)
    arms: dict[str, tuple[VolumeSet, int]] = {"real": (real_train, len(real_train)),
                                              "real_plus_synthetic": (real_train + equal, len(real_train)),
                                              "synthetic": (synthetic, 0)}
    if len(unseen):
        arms["real_plus_unseen"] = (real_train + unseen, len(real_train))
    reference = SimpleNamespace(model=_load_classifier(classifier_weights, params),
                                not_trained=dict(classifier_summary.get("not_trained") or {}))

    every_real = len(chosen) == int((cases.role == "train").sum())

    def train(dataset: VolumeSet, name: str):
        # on all real training volumes the real arm is the evaluation classifier itself (same data, configs and
        # seed): not trained twice
        if name == "real" and every_real:
            return reference
        return _train(dataset, params, f"utility_{_slug(name)}")

    return run_utility_experiment(arms, test, _labels(params)[1], train)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)

