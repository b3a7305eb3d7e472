"""`generatect lineage FILE`: print (and re-verify) how a generated volume came to be."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("lineage")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the chain as JSON.")
@click.option("--project-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Kedro project whose conf/ names the MLflow tracking URI (default: found from the cwd).")
@click.option("--env", default=None, help="Kedro config env overlaid on conf/base (default: local).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (overrides conf and MLFLOW_TRACKING_URI).")
def lineage(file: Path, as_json: bool, project_dir: Path | None, env: str | None, tracking_uri: str | None) -> None:
    """FILE: a generated NIfTI, its <stem>.json sidecar, or any slice of a synthetic DICOM series.

    Exits 1 when a hash does not match (volume or model weights); unverifiable links (registry unreachable,
    version deleted) are reported but do not fail.
    """
    from generatect_kedro import lineage as chain_lib

    uri = tracking_uri
    if uri is None:
        project = project_dir
        if project is None:
            from generatect_kedro.cli import find_project_root

            try:
                project = find_project_root()
            except click.ClickException:
                project = None  # MLFLOW_TRACKING_URI may still be set; otherwise reported as unverified
        try:
            uri = chain_lib.tracking_uri(project, env)
        except Exception as error:  # noqa: BLE001 - a broken conf must not hide the recorded lineage
            uri = None
            click.echo(f"warning: cannot read the MLflow tracking URI from {project}/conf: {error}", err=True)
    try:
        chain = chain_lib.build_chain(file, uri)
    except chain_lib.LineageError as error:
        raise click.ClickException(str(error)) from error
    if as_json:
        click.echo(json.dumps(chain, indent=2, sort_keys=True, default=str))
    else:
        click.echo(chain_lib.format_chain(chain))
    if chain["status"] in (chain_lib.MISMATCH, chain_lib.MISSING):
        raise SystemExit(1)
