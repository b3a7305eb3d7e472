"""`generatect register-generator`: pin the component versions and register ``generatect-generator``.

Reads the project's configuration like `generatect generate` (conf/base + --env): MLflow URIs from mlflow.yml,
``generation.models`` / ``sampler`` / ``geometry`` / ``slice_count`` / ``text_encoder`` / ``device`` from the
parameters, the cohort's ``grid_index.csv`` for the median spacing. The new version gets @challenger; promote
it like the other models. See `generatect_kedro.serving` for what a version pins and how it is served.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import click


@click.command("register-generator")
@click.option("--transformer", default=None, help="Transformer alias or version (default: generation.models, champion).")
@click.option("--superres", default=None, help="Super-resolution cascade alias or version (default: generation.models).")
@click.option("--ctvit", default=None, help="CT-ViT version/alias (default: the one the transformer was trained on).")
@click.option("--alias", default="challenger", show_default=True, help="Alias the new generator version gets.")
@click.option("--env", default=None, help="Kedro configuration environment (default: local).")
@click.option("--project-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None)
def register_generator(transformer: str | None, superres: str | None, ctvit: str | None, alias: str,
                       env: str | None, project_dir: Path | None) -> None:
    """Register the generation path (CT-ViT + transformer + cascade, pinned by version) as generatect-generator."""
    import pandas as pd

    from generatect_kedro.cli import find_project_root
    from generatect_kedro.commands.generate import _load_config, _use_tracking
    from generatect_kedro.generation.models import GenerationError
    from generatect_kedro.registry import RegistryError
    from generatect_kedro.serving import ServingError
    from generatect_kedro.serving import register_generator as register

    project = find_project_root(project_dir)
    parameters, mlflow_conf, catalog = _load_config(project, env)
    params = copy.deepcopy(dict(parameters.get("generation") or {}))
    models = dict(params.get("models") or {})
    models.update({k: v for k, v in (("ctvit", ctvit), ("transformer", transformer), ("superres", superres)) if v})
    geometry_path = project / str((catalog.get("generation_cohort_geometry") or {}).get(
        "filepath", "data/04_feature/grid_index.csv"))
    grid_index = pd.read_csv(geometry_path) if geometry_path.is_file() else None
    text_encoder = {**dict((parameters.get("transformer") or {}).get("text_encoder") or {}),
                    **{k: v for k, v in dict(params.get("text_encoder") or {}).items() if v is not None}}
    _use_tracking(mlflow_conf)
    previous = Path.cwd()
    os.chdir(project)
    try:
        info = register(transformer=models.get("transformer") or "champion",
                        superres=models.get("superres") or "champion", ctvit=models.get("ctvit"),
                        sampler=params.get("sampler"), geometry=params.get("geometry"), grid_index=grid_index,
                        slice_count=params.get("slice_count"), text_encoder=text_encoder,
                        device=str(params.get("device") or "auto"), alias=alias or None)
    except (RegistryError, GenerationError, ServingError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    finally:
        os.chdir(previous)
    verb = "already registered as" if info.get("reused") else "registered"
    click.echo(f"{info['name']} version {info['version']} {verb} @{info['alias']}" if info.get("alias")
               else f"{info['name']} version {info['version']} registered")
    for role, pin in info["components"].items():
        click.echo(f"  {role:<12} {pin['name']}/{pin['version']}  sha256 {pin['weights_sha256'][:12]}…")
    click.echo(f"serve it once promoted: MLFLOW_TRACKING_URI=… mlflow models serve -m models:/{info['name']}@champion "
               "--env-manager local")
