"""`generatect generate`: prompts → HU volumes with the registered models (the generation pipeline's nodes).

It reads the project's configuration the way `kedro run` would (OmegaConfigLoader, conf/base + --env), points
MLflow at the project's tracking/registry URI from conf/*/mlflow.yml, and runs the same node functions
in-process, so `kedro run --pipelines generation` and this command produce the same files.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import click


def _load_config(project: Path, env: str | None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(parameters, mlflow, catalog) of the project, resolved in the project root (``${project_dir:}``)."""
    from kedro.config import OmegaConfigLoader

    from generatect_kedro.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(conf_source=str(project / "conf"), env=env, **CONFIG_LOADER_ARGS)
    previous = Path.cwd()
    os.chdir(project)
    try:
        parameters = dict(loader["parameters"])
        try:
            mlflow_conf = dict(loader["mlflow"])
        except Exception:  # noqa: BLE001 - no mlflow.yml: MLflow's own default
            mlflow_conf = {}
        try:
            catalog = dict(loader["catalog"])
        except Exception:  # noqa: BLE001
            catalog = {}
    finally:
        os.chdir(previous)
    return parameters, mlflow_conf, catalog


def _use_tracking(mlflow_conf: dict[str, Any]) -> None:
    """What kedro-mlflow does at session start: the tracking and registry URIs of conf/*/mlflow.yml."""
    import mlflow

    server = dict(mlflow_conf.get("server") or {})
    if server.get("mlflow_tracking_uri"):
        mlflow.set_tracking_uri(str(server["mlflow_tracking_uri"]))
    if server.get("mlflow_registry_uri"):
        mlflow.set_registry_uri(str(server["mlflow_registry_uri"]))


@click.command("generate")
@click.argument("prompt", required=False)
@click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CSV with a `prompt` column (optional seed, count, slice_count per row).")
@click.option("--seed", type=int, default=None, help="Seed of PROMPT (or base seed of rows without one).")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Volumes per prompt (seeds seed … seed+N-1).")
@click.option("--slices", type=click.IntRange(min=1), default=None, help="Axial slices, 1 + 2k (default: training depth).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: generation.output_dir).")
@click.option("--dicom", is_flag=True, default=False, help="Also write a synthetic DICOM series per volume.")
@click.option("--no-preview", is_flag=True, default=False, help="Skip the preview PNGs.")
@click.option("--ctvit", default=None, help="CT-ViT alias or version (default: the one the transformer was trained on).")
@click.option("--transformer", default=None, help="Transformer alias or version (default: generation.models).")
@click.option("--superres", default=None, help="Super-resolution cascade alias or version.")
@click.option("--env", default=None, help="Kedro configuration environment (default: local).")
@click.option("--project-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
def generate(prompt: str | None, prompts_file: Path | None, seed: int | None, count: int | None, slices: int | None,
             out_dir: Path | None, dicom: bool, no_preview: bool, ctvit: str | None, transformer: str | None,
             superres: str | None, env: str | None, project_dir: Path | None, device: str | None) -> None:
    """Generate CT volumes for PROMPT (or every row of --prompts) with the registered models."""
    import pandas as pd

    from generatect_kedro.cli import find_project_root
    from generatect_kedro.generation.models import GenerationError
    from generatect_kedro.models.text_encoder import TextEncoderError
    from generatect_kedro.registry import RegistryError

    if (prompt is None) == (prompts_file is None):
        raise click.UsageError('give either a PROMPT or --prompts FILE.csv')
    project = find_project_root(project_dir)
    parameters, mlflow_conf, catalog = _load_config(project, env)
    params = copy.deepcopy(dict(parameters.get("generation") or {}))
    models = dict(params.get("models") or {})
    models.update({k: v for k, v in (("ctvit", ctvit), ("transformer", transformer), ("superres", superres)) if v})
    params["models"] = models
    if out_dir is not None:
        params["output_dir"] = str(out_dir.resolve())
    else:
        params["output_dir"] = str((project / str(params.get("output_dir", "data/07_model_output/generated"))).resolve())
    params["dicom"] = bool(dicom or params.get("dicom", False))
    params["preview"] = bool(params.get("preview", True) and not no_preview)
    if device is not None:
        params["device"] = device
    if count is not None:
        params["count"] = count
    if seed is not None:
        params["seed"] = seed
    if slices is not None:
        params["slice_count"] = slices
    if prompt is not None:
        params["prompts"] = [{"prompt": prompt, **({"seed": seed} if seed is not None else {})}]
        table = pd.DataFrame()
    else:
        params["prompts"] = None
        table = pd.read_csv(prompts_file, keep_default_na=True)
    geometry_path = project / str((catalog.get("generation_cohort_geometry") or {}).get(
        "filepath", "data/04_feature/grid_index.csv"))
    grid_index = pd.read_csv(geometry_path) if geometry_path.is_file() else pd.DataFrame()

    from generatect_kedro.pipelines.generation.nodes import generate_volumes, resolve_prompts

    _use_tracking(mlflow_conf)
    previous = Path.cwd()
    os.chdir(project)
    try:
        summary, items = generate_volumes(resolve_prompts(table, params), grid_index, params,
                                          parameters.get("transformer"), project_path=project)
    except (RegistryError, GenerationError, TextEncoderError) as error:
        raise click.ClickException(str(error)) from error
    finally:
        os.chdir(previous)
    click.echo(f"{summary['generated']} volume(s) generated, {summary['skipped']} already there, "
               f"{summary['items']} item(s) -> {summary['output_dir']}")
    if summary.get("generation_run_id"):
        click.echo(f"MLflow run {summary['generation_run_id']}")
    for name in items["nifti"].head(10):
        click.echo(f"  {Path(summary['output_dir']) / name}")
