"""`generatect promote MODEL VERSION` / `generatect promote MODEL --rollback`: move @champion through gates."""

from __future__ import annotations

from pathlib import Path

import click


def _connect(project_dir: Path | None, env: str | None):  # noqa: ANN202 - a ProjectPromotionConfig
    """Gates and MLflow URIs of the project (conf/base + --env); refuses to create a missing SQLite DB."""
    from generatect_kedro.cli import find_project_root
    from generatect_kedro.promotion.config import load_project_config

    project = find_project_root(project_dir)
    try:
        config = load_project_config(project, env)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    for uri in (config.tracking_uri, config.registry_uri):
        if uri.startswith("sqlite:///"):
            database = Path(uri[len("sqlite:///"):].split("?", 1)[0])
            if not database.is_file():
                raise click.ClickException(f"no MLflow database at {database} (from {uri}); train a model first, "
                                           "e.g. `kedro run --pipelines ctvit`")
    import mlflow

    mlflow.set_tracking_uri(config.tracking_uri)
    mlflow.set_registry_uri(config.registry_uri)
    return config


@click.command("promote")
@click.argument("model")
@click.argument("version", required=False)
@click.option("--reason", default=None, help="Why (required, except with --dry-run); recorded on the version.")
@click.option("--actor", default=None, help="Who (default: the OS user).")
@click.option("--dry-run", is_flag=True, help="Evaluate the gates only; move nothing.")
@click.option("--rollback", is_flag=True, help="Give @champion back to the previous champion.")
@click.option("--env", default=None, help="Kedro config env overlaid on conf/base for the gates (default: local).")
@click.option("--project-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None)
def promote(model: str, version: str | None, reason: str | None, actor: str | None, dry_run: bool,
            rollback: bool, env: str | None, project_dir: Path | None) -> None:
    """MODEL: ctvit, transformer, superres or a registered name; VERSION: a version number or alias.

    Exits 1 with the gate table when a gate fails or a metric is missing (nothing is moved).
    """
    from generatect_kedro import promotion
    from generatect_kedro.registry import RegistryError

    name = promotion.model_name(model)
    if rollback and version is not None:
        raise click.UsageError("--rollback takes no VERSION: it restores the previous champion")
    if not rollback and version is None:
        raise click.UsageError("missing VERSION (or pass --rollback)")
    if not dry_run and not (reason or "").strip():
        raise click.UsageError("--reason TEXT is required: it is recorded on the version")
    config = _connect(project_dir, env)
    try:
        if rollback:
            if dry_run:
                raise click.UsageError("--dry-run does not apply to --rollback")
            result = promotion.rollback(name, reason=reason, actor=actor)
        else:
            if not version.isdigit():  # an alias such as "challenger"
                from generatect_kedro.registry import resolve

                version = resolve(name, version).version
            result = promotion.promote(name, version, gates=config.gates_for(name), reason=reason, actor=actor,
                                       dry_run=dry_run)
    except (RegistryError, promotion.PromotionError, promotion.PromotionLockTimeout) as error:
        raise click.ClickException(str(error)) from error
    if result.gates:
        click.echo(f"gates of {name} v{result.version} (env {env or 'local'}):")
        click.echo(result.table())
    if result.status == "refused":
        raise click.ClickException(result.message)
    click.echo(result.message)
