"""The evaluation pipeline end to end on tiny registered models and phantom grids (SequentialRunner).

A champion (v1) and a challenger transformer (v2, other weights) exist, so both generators are evaluated on
the same real test prompts; the report files are written and name their numbers; the challenger's versions
carry the `metric.evaluation/...` tags and a promotion gate reads them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from kedro.io import AbstractDataset, DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.json import JSONDataset
from kedro_datasets.matplotlib import MatplotlibDataset
from kedro_datasets.text import TextDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "generation"))
from generation_fixtures import HU_WINDOW, grid_index, register_tiny_models, use_registry  # noqa: E402

from generatect_kedro import registry  # noqa: E402
from generatect_kedro.cohort.grids import GridVolume, scale_hu  # noqa: E402
from generatect_kedro.io.safetensors_model import state_dict_bytes  # noqa: E402
from generatect_kedro.phantom.abnormalities import render_chest, sample_finding  # noqa: E402
from generatect_kedro.pipelines.evaluation import create_pipeline  # noqa: E402
from generatect_kedro.promotion import promote  # noqa: E402
from generatect_kedro.reports.labeler import LABEL_COLUMNS  # noqa: E402
from generatect_kedro.reports.prompts import build_prompt  # noqa: E402

CONF = Path(__file__).resolve().parents[3] / "conf"
SHAPE, SPACING = (5, 32, 32), (60.0, 11.0, 11.0)
FINDINGS = {"cardiomegaly": ("Cardiomegaly", "Cardiomegaly."),
            "pleural_effusion": ("Pleural effusion", "Bilateral pleural effusion.")}


def phantom_cohort(n: int, test: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    rng = np.random.default_rng(0)
    rows, grids = [], {}
    for i in range(n):
        present = [key for key in FINDINGS if rng.random() < 0.5] if i > 1 else (list(FINDINGS) if i == 0 else [])
        case_rng = np.random.default_rng([5, i])
        volume = scale_hu(render_chest(SHAPE, SPACING, [sample_finding(FINDINGS[k][0], case_rng) for k in present],
                                       case_rng), HU_WINDOW)
        vid = f"ser-{i:04d}"
        grids[vid] = lambda v=volume: GridVolume(v, np.eye(4), {"hu_window": f"{HU_WINDOW[0]},{HU_WINDOW[1]}"})
        impression = " ".join(FINDINGS[k][1] for k in present) or "No acute cardiopulmonary abnormality."
        rows.append({"volume_id": vid, "patient_key": f"pat-{i}", "age": 50 + i, "sex": "male" if i % 2 else "female",
                     "prompt": build_prompt(50 + i, "male" if i % 2 else "female", impression),
                     **{c: int(c in present) for c in LABEL_COLUMNS}})
    cohort = pd.DataFrame(rows)
    splits = pd.DataFrame({"volume_id": cohort["volume_id"],
                           "split": ["test" if i % (n // test) == 0 else "train" for i in range(n)]})
    return cohort, splits, grids


def register_challenger_transformer(root: Path, champion: dict) -> dict:
    """The champion's transformer with perturbed weights, registered as a new version (@challenger)."""
    ref = registry.resolve("generatect-transformer", champion["version"])
    weights, config = registry.load_weights(ref)
    torch.manual_seed(1)
    weights = {k: (v + 0.05 * torch.randn_like(v)) if v.is_floating_point() else v for k, v in weights.items()}
    path = root / "transformer-v2.safetensors"
    path.write_bytes(state_dict_bytes(weights))
    tags = {k: v for k, v in ref.tags.items() if not k.startswith("metric.")}
    return registry.register_model("generatect-transformer", path, config, tags, alias="challenger")


def evaluation_params(tmp_path: Path) -> dict:
    base = yaml.safe_load((CONF / "base" / "parameters_evaluation.yml").read_text())["evaluation"]
    demo = yaml.safe_load((CONF / "demo" / "parameters_evaluation.yml").read_text())["evaluation"]
    params = {**base, **demo, "classifier": {**base["classifier"], **demo["classifier"]},
              "utility": {**base["utility"], "unseen": {**base["utility"]["unseen"], "max_prompts": 2}}}
    params["classifier"]["trainer"] = {**demo["classifier"]["trainer"], "max_steps": 6, "batch_size": 4,
                                       "show_progress": False}
    params.update(test_splits=["test"], max_train_volumes=None, output_dir=str(tmp_path / "evaluation"),
                  progress=False, sampler={}, fid_slices={"every": 1, "skip_ends": 0.0})
    return params


def test_evaluation_pipeline_measures_both_generators_reports_and_tags(tmp_path):
    import mlflow

    torch.set_num_threads(1)
    previous = mlflow.get_tracking_uri()
    use_registry(tmp_path)
    try:
        infos = register_tiny_models(tmp_path, alias="champion")
        challenger = register_challenger_transformer(tmp_path, infos["transformer"])
        cohort, splits, grids = phantom_cohort(12, test=4)
        out = tmp_path / "reporting"
        catalog = DataCatalog({
            "cohort": MemoryDataset(cohort), "splits": MemoryDataset(splits), "grids_fullres": MemoryDataset(grids),
            "generation_cohort_geometry": MemoryDataset(grid_index()),
            "params:evaluation": MemoryDataset(evaluation_params(tmp_path)),
            "params:generation": MemoryDataset({"device": "cpu", "sampler": {"batch_size": 4}}),
            "params:transformer": MemoryDataset({"text_encoder": {"path": "demo:minilm", "device": "cpu"}}),
            "ctvit_model_version": MemoryDataset(infos["ctvit"]),
            "transformer_model_version": MemoryDataset(challenger),
            "superres_model_version": MemoryDataset(infos["superres"]),
            "transformer_conditioning": MemoryDataset({"probes": {"cardiomegaly": {"stats": {"cohens_d": 2.5,
                                                                                             "p_value": 0.004}}}}),
            "superres_evaluation": MemoryDataset({"methods": {"diffusion": {"psnr_hu": 19.0}}}),
            "evaluation_metrics": JSONDataset(filepath=str(out / "metrics.json")),
            "evaluation_report_md": TextDataset(filepath=str(out / "report.md")),
            **{f"evaluation_{name}_figure": MatplotlibDataset(filepath=str(out / f"{name}.png"))
               for name in ("auroc", "hu", "montage")},
        })
        # the stage's tables and JSONs as the catalog stores them (CSV/JSON round trips included)
        catalog_yml = yaml.safe_load((CONF / "base" / "catalog_evaluation.yml").read_text())
        for name in ("evaluation_results", "evaluation_utility", "evaluation_generated", "evaluation_prompts",
                     "evaluation_cases", "evaluation_classifier_summary"):
            spec = dict(catalog_yml[name].get("dataset", catalog_yml[name]))
            spec["filepath"] = str(tmp_path / "data" / Path(spec["filepath"]).name)
            catalog[name] = AbstractDataset.from_config(name, spec)
        with mlflow.start_run() as run:
            SequentialRunner().run(create_pipeline(), catalog)
        results, utility = catalog.load("evaluation_results"), catalog.load("evaluation_utility")
        generated, prompts = catalog.load("evaluation_generated"), catalog.load("evaluation_prompts")
        classifier = catalog.load("evaluation_classifier_summary")
        logged = mlflow.get_run(run.info.run_id).data.metrics
        version_tags = registry.resolve("generatect-transformer", challenger["version"]).tags
        superres_tags = registry.resolve("generatect-superres", infos["superres"]["version"]).tags
        gate = {"metric": "evaluation/text_alignment/mean_auroc_real", "op": ">=", "threshold": 0.0,
                "description": "the evaluation ran"}
        verdict = promote("generatect-transformer", challenger["version"], gates=[gate], reason="test", dry_run=True)
    finally:
        mlflow.set_tracking_uri(previous)

    # what was generated: every prompt row by the challenger, the test rows also by the champion, same seeds
    assert set(prompts["set"]) == {"test", "utility", "unseen"}
    assert (prompts["set"] == "test").sum() == 4 and (prompts["set"] == "unseen").sum() == 2
    mine, theirs = generated[generated.role == "challenger"], generated[generated.role == "champion"]
    assert len(mine) == len(prompts) and len(theirs) == 4
    assert set(mine["transformer_version"]) == {challenger["version"]} and set(theirs["transformer_version"]) == {
        infos["transformer"]["version"]}
    assert sorted(mine[mine.set == "test"]["seed"]) == sorted(theirs["seed"])
    assert all(Path(p).is_file() and Path(p).with_suffix("").with_suffix(".json").is_file() for p in generated.nifti)

    # measured for both generators, on the same real test volumes
    assert set(results["roles"]) == {"challenger", "champion"} and results["real_test_volumes"] == 4
    for role in results["roles"].values():
        assert role["generated_volumes"] == 4
        assert role["frechet"]["fvd_3d/classifier"]["value"] >= 0
        depth = evaluation_params(tmp_path)["classifier"]["input_shape"][0]  # every axial slice of the classifier input
        assert role["frechet"]["fid_2d/classifier"]["real_samples"] == 4 * depth
        assert np.isclose(sum(role["hu_histogram"]["real"]), 1.0)
        assert "flagged_fraction" in role["hu_sanity"]
    assert classifier["train_volumes"] == 8 and classifier["test_volumes"] == 4
    assert set(utility["arm"]) == {"real", "real_plus_synthetic", "synthetic", "real_plus_unseen"}
    means = utility[utility.label == "mean"].set_index("arm")
    assert means.loc["real_plus_synthetic", "synthetic_volumes"] == 8 and means.loc["synthetic", "real_volumes"] == 0
    assert means.loc["real_plus_unseen", "synthetic_volumes"] == 2
    assert means.loc["real", "auroc"] == pytest.approx(classifier["mean_auroc"], nan_ok=True)

    # the files exist and name their numbers
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(isinstance(v, float) for v in metrics.values())  # flat numbers: what `dvc metrics show` lists
    for key in ("evaluation/fvd_3d/classifier", "evaluation/text_alignment/mean_auroc_real",
                "evaluation/hu_sanity/flagged_fraction", "evaluation/utility/synthetic/mean_auroc",
                "evaluation/champion/fvd_3d/classifier"):
        assert key in metrics, sorted(metrics)
    report = (out / "report.md").read_text()
    assert f"| `evaluation/fvd_3d/classifier` | {metrics['evaluation/fvd_3d/classifier']:.4f} |" in report
    assert f"transformer v{challenger['version']}" in report and f"transformer v{infos['transformer']['version']}" \
        in report  # challenger beside champion
    assert "ct-classifier" in report  # which network produced the Fréchet numbers
    assert "`transformer/conditioning/cardiomegaly/cohens_d`: 2.5000" in report
    for name in ("auroc", "hu", "montage"):
        assert (out / f"{name}.png").stat().st_size > 1000
    assert "utility_auroc.png" in report and "hu_histograms.png" in report and "montage.png" in report

    # logged to the run, tagged on the evaluated versions (challenger only), read by a gate
    assert logged["evaluation/fvd_3d/classifier"] == pytest.approx(metrics["evaluation/fvd_3d/classifier"])
    assert float(version_tags["metric.evaluation/fvd_3d/classifier"]) == pytest.approx(
        metrics["evaluation/fvd_3d/classifier"])
    assert "metric.evaluation/fvd_3d/classifier" in superres_tags
    assert not any(k.startswith("metric.evaluation/champion/") for k in version_tags)
    assert verdict.gates[0].source.startswith("version tag") and verdict.gates[0].passed
