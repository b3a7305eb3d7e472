"""Evaluation stage: real cases and prompts → classifier on real data → volumes from the just-trained models
(and the champion) → fidelity, alignment, HU sanity, utility → report, metrics and version tags.

It runs after the training pipelines and before promotion: the promotion node reads `evaluation_metrics`.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from generatect_kedro.pipelines.evaluation import nodes, reporting


def create_pipeline(**kwargs) -> Pipeline:  # noqa: ARG001 - kedro's signature
    return Pipeline(
        [
            Node(nodes.select_evaluation_cases, ["cohort", "splits", "params:evaluation"], "evaluation_cases",
                 name="select_evaluation_cases"),
            Node(nodes.build_evaluation_prompts, ["evaluation_cases", "params:evaluation"], "evaluation_prompts",
                 name="build_evaluation_prompts"),
            Node(nodes.train_evaluation_classifier, ["evaluation_cases", "grids_fullres", "params:evaluation"],
                 ["evaluation_classifier_weights", "evaluation_classifier_summary"],
                 name="train_evaluation_classifier"),
            Node(nodes.generate_evaluation_volumes,
                 ["evaluation_prompts", "transformer_model_version", "superres_model_version",
                  "generation_cohort_geometry", "params:evaluation", "params:generation", "params:transformer"],
                 "evaluation_generated", name="generate_evaluation_volumes"),
            Node(nodes.evaluate_generated,
                 ["evaluation_generated", "evaluation_prompts", "evaluation_cases", "grids_fullres",
                  "evaluation_classifier_weights", "evaluation_classifier_summary", "params:evaluation"],
                 "evaluation_results", name="evaluate_generated"),
            Node(nodes.run_utility_experiment_node,
                 ["evaluation_generated", "evaluation_prompts", "evaluation_cases", "grids_fullres",
                  "evaluation_classifier_weights", "evaluation_classifier_summary", "params:evaluation"],
                 "evaluation_utility", name="utility_experiment"),
            Node(reporting.evaluation_report,
                 ["evaluation_classifier_summary", "evaluation_results", "evaluation_utility",
                  "evaluation_generated", "evaluation_prompts", "evaluation_cases", "grids_fullres",
                  "transformer_conditioning", "superres_evaluation", "ctvit_model_version",
                  "transformer_model_version", "superres_model_version", "params:evaluation"],
                 ["evaluation_metrics", "evaluation_report_md", "evaluation_auroc_figure",
                  "evaluation_hu_figure", "evaluation_montage_figure"],
                 name="evaluation_report"),
        ],
        tags="evaluation",
    )
